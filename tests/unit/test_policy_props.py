"""Property test: whatever YAML the loader is given, it returns a Policy or a PolicyError."""

from __future__ import annotations

import string

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from guardrail.errors import PolicyError
from guardrail.policy import Policy, load_policy_text

FIELDS = [
    "name", "description", "model", "system_prompt", "strategy", "sampling", "refusal",
    "on_refusal", "on_match", "rules", "logging", "extends", "kind", "alpha", "lambda", "lam",
    "beta", "steps", "safety_prompt", "temperature", "max_new_tokens", "backend", "path",
    "action", "message", "pattern", "detector", "judge", "prefixes", "decisions", "level",
]
TAGS = ["plain", "adacd", "experts", "llamacpp", "judge", "replace", "raise", "allow", "balanced"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**20), max_value=10**20),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(TAGS),
    st.text(max_size=20),
    st.just("${HOME}"),
    st.just("${GUARDRAIL_SURELY_UNSET_VAR}"),
    st.just("${X:-0.5}"),
)
keys = st.one_of(st.sampled_from(FIELDS), st.text(string.ascii_letters + "_", max_size=8))
documents = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(keys, inner, max_size=6)
    ),
    max_leaves=30,
)


def outcome(text: str) -> None:
    try:
        policy = load_policy_text(text, source="<hypothesis>")
    except PolicyError as e:
        assert str(e)  # every error says something
        return
    assert isinstance(policy, Policy)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(documents)
def test_random_nested_documents_give_a_policy_or_a_policy_error(doc: object) -> None:
    outcome(yaml.safe_dump(doc, allow_unicode=True))


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=string.printable + "&*!|>%@`{}[]:-#λ", max_size=120))
def test_random_yaml_text_gives_a_policy_or_a_policy_error(text: str) -> None:
    outcome(text)


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            ["strategy:", "  kind: adacd", "  alpha: 9", "  lambda: x", "rules:", "  - name: a",
             "    pattern: '['", "extends: strict", "extends: nowhere", "- x", "!!python/name:os",
             "&a [*a]", "model: {backend: vllm}", "on_match: {action: replace}", "  - *b",
             "sampling: {stop: 3}", "logging: ~", "  steps: -1", "<<: {name: a}", "'k': v"]
        ),
        max_size=8,
    )
)
def test_random_policy_like_lines(lines: list[str]) -> None:
    outcome("\n".join(lines) + "\n")
