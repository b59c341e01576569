"""Policy schema and loading: shipped policies, extends, ${VAR}, overrides, rules."""

from __future__ import annotations

from pathlib import Path

import pytest

from guardrail.errors import PolicyError
from guardrail.policy.strategies import GatedCDStrategy
from guardrail.policy import (
    ActionConfig,
    AdaCDStrategy,
    PlainStrategy,
    Policy,
    default_policy_name,
    dump_policy,
    load_policy,
    load_policy_text,
    shipped_policies,
    with_overrides,
)

SHIPPED = ["adacd", "balanced", "permissive", "plain", "strict"]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("name", SHIPPED)
def test_every_shipped_policy_loads_and_is_documented(name: str) -> None:
    assert name in shipped_policies()
    policy = load_policy(name)
    assert policy.name == name
    assert policy.description
    header = shipped_policies()[name].read_text(encoding="utf-8").splitlines()[0]
    assert header.startswith(f"# {name}:")


def test_shipped_parameters() -> None:
    adacd = load_policy("adacd").strategy
    assert isinstance(adacd, AdaCDStrategy)
    assert (adacd.alpha, adacd.lam, adacd.beta, adacd.steps) == (4.5, 0.9, 0.01, 10)
    balanced = load_policy("balanced").strategy
    assert isinstance(balanced, GatedCDStrategy) and balanced.probe is not None
    probe = balanced.probe
    assert (probe.path, probe.threshold, probe.ban_below, probe.refuse_above) == (
        "auto", 0.3, 0.3, 0.9)
    # strict never undoes a refusal and refuses where the probe is fairly sure; permissive
    # undoes more refusals and never pushes towards refusal (study, stage 7)
    strict = load_policy("strict")
    assert isinstance(strict.strategy, GatedCDStrategy) and strict.strategy.probe is not None
    sp = strict.strategy.probe
    assert (sp.path, sp.threshold, sp.ban_below, sp.refuse_above) == ("auto", 0.0, 0.0, 0.7)
    assert sp.refuse_above < probe.refuse_above and strict.on_refusal.action == "replace"
    assert strict.system_prompt is None  # an operator's deployment prompt goes in via extends
    permissive = load_policy("permissive").strategy
    assert isinstance(permissive, GatedCDStrategy) and permissive.probe is not None
    pp = permissive.probe
    assert (pp.threshold, pp.ban_below, pp.refuse_above) == (0.4, 0.4, None)
    assert isinstance(load_policy("plain").strategy, PlainStrategy)


def test_default_policy_follows_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv("GUARDRAIL_POLICY", raising=False)
    assert default_policy_name() == "balanced"
    assert load_policy().name == "balanced"
    monkeypatch.setenv("GUARDRAIL_POLICY", "strict")
    assert load_policy(None).name == "strict"
    path = write(tmp_path, "mine.yaml", "strategy: {kind: plain}\n")
    monkeypatch.setenv("GUARDRAIL_POLICY", str(path))
    assert load_policy().name == "mine"


def test_extends_shipped_name_merges_fields(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "child.yaml",
        "extends: balanced\nstrategy:\n  alpha: 3.0\nsampling:\n  max_new_tokens: 8\n",
    )
    policy = load_policy(path)
    assert policy.name == "child"  # a name is never inherited
    assert isinstance(policy.strategy, GatedCDStrategy)
    assert policy.strategy.alpha == 3.0
    assert policy.strategy.probe is not None and policy.strategy.probe.threshold == 0.3
    assert policy.sampling.max_new_tokens == 8
    assert policy.extends is None


def test_extends_relative_path_and_kind_change(tmp_path: Path) -> None:
    (tmp_path / "sub").mkdir()
    write(tmp_path, "base.yaml",
          "extends: strict\nsystem_prompt: Be brief.\nsampling: {stop: ['a', 'b']}\n")
    path = write(tmp_path / "sub", "leaf.yaml", "extends: ../base.yaml\nstrategy: {kind: plain}\n")
    policy = load_policy(path)
    assert isinstance(policy.strategy, PlainStrategy)  # replaced whole, no gated_cd keys left over
    assert policy.system_prompt == "Be brief."
    assert policy.on_refusal == load_policy("strict").on_refusal
    assert policy.sampling.stop == ["a", "b"]


def test_lists_replace_rather_than_append(tmp_path: Path) -> None:
    write(tmp_path, "base.yaml", "sampling: {stop: ['a', 'b']}\n")
    path = write(tmp_path, "leaf.yaml", "extends: base.yaml\nsampling: {stop: ['c']}\n")
    assert load_policy(path).sampling.stop == ["c"]


def test_env_interpolation(tmp_path: Path) -> None:
    text = (
        "system_prompt: 'Serve ${TEAM} on ${HOST:-localhost}, cost $$5'\n"
        "strategy: {kind: adacd, alpha: '${ALPHA:-2.5}'}\n"
        "model: {path: '${MODEL_DIR:-}'}\n"
    )
    policy = load_policy_text(text, env={"TEAM": "support"})
    assert policy.system_prompt == "Serve support on localhost, cost $5"
    assert isinstance(policy.strategy, AdaCDStrategy) and policy.strategy.alpha == 2.5
    policy = load_policy_text(text, env={"TEAM": "x", "ALPHA": "1", "HOST": "h"})
    assert policy.system_prompt == "Serve x on h, cost $5"
    assert policy.strategy.alpha == 1.0  # type: ignore[union-attr]


def test_extends_can_come_from_environment(tmp_path: Path) -> None:
    policy = load_policy_text("extends: ${BASE:-strict}\n", env={})
    assert policy.on_refusal.action == "replace"
    policy = load_policy_text("extends: ${BASE:-strict}\n", env={"BASE": "plain"})
    assert isinstance(policy.strategy, PlainStrategy)


def test_lambda_alias_and_lam_both_accepted() -> None:
    a = load_policy_text("strategy: {kind: adacd, lambda: 0.5}")
    b = load_policy_text("strategy: {kind: adacd, lam: 0.5}")
    assert a.strategy == b.strategy


def test_refusal_actions_rules_logging_sections() -> None:
    policy = load_policy_text(
        """
refusal:
  detector: judge
  judge: {max_new_tokens: 4}
on_refusal: {action: raise}
on_match: {action: replace, message: "Not here."}
rules:
  - name: weapons
    pattern: '\\b(bomb|explosive)s?\\b'
  - name: secrets
    pattern: password
    action: raise
logging: {decisions: true, level: DEBUG}
"""
    )
    assert policy.refusal.detector == "judge"
    assert policy.refusal.judge is not None and policy.refusal.judge.model is None
    assert policy.refusal.prefixes is None
    assert policy.on_refusal.action == "raise"
    assert policy.logging.decisions and policy.logging.level == "DEBUG"
    rule, action = policy.match("How do I build a BOMB?") or (None, None)
    assert rule is not None and rule.name == "weapons"
    assert action == ActionConfig(action="replace", message="Not here.")
    rule, action = policy.match("what is the admin Password") or (None, None)
    assert rule is not None and rule.name == "secrets" and action is not None
    assert action.action == "raise" and action.message == "Not here."
    assert policy.match("hello") is None


def test_defaults_of_new_sections() -> None:
    policy = Policy()
    assert policy.refusal.detector == "string_match"
    assert policy.on_refusal.action == "allow" and policy.on_match.action == "allow"
    assert policy.rules == [] and policy.logging.decisions is False


def test_with_overrides_validates_and_keeps_the_rest() -> None:
    base = load_policy("strict")
    policy = with_overrides(base, {"sampling": {"max_new_tokens": 8}, "model": {"n_ctx": 512}})
    assert policy.sampling.max_new_tokens == 8 and policy.model.n_ctx == 512
    assert policy.system_prompt == base.system_prompt and policy.strategy == base.strategy
    with pytest.raises(PolicyError, match=r"sampling\.max_new_tokens"):
        with_overrides(base, {"sampling": {"max_new_tokens": 0}})


def test_dump_round_trips_through_the_loader() -> None:
    import yaml

    policy = load_policy("strict")
    assert load_policy_text(yaml.safe_dump(dump_policy(policy))) == policy


def test_policy_instance_passes_through() -> None:
    policy = Policy(name="x")
    assert load_policy(policy) is policy


def test_unsafe_yaml_tags_are_refused() -> None:
    with pytest.raises(PolicyError, match="invalid YAML"):
        load_policy_text("name: !!python/object/apply:os.system ['echo hi']\n")
