"""Refusal-gated contrastive decoding on hand-made logits: each branch, the mask, K, errors."""

from __future__ import annotations

import numpy as np
import pytest

from guardrail.decoding.gated_cd import GatedCDRule, gated_cd_logits, refusal_start_ids
from guardrail.errors import ConfigError

V = 6
REFUSE = frozenset({0})  # token 0 starts a refusal ("I'm sorry"); 1 and 2 start answers


def logits(*pairs: tuple[int, float], base: float = 0.0) -> np.ndarray:
    z = np.full(V, base, dtype=np.float32)
    for i, v in pairs:
        z[i] = v
    return z


def run(z_o: np.ndarray, z_s: np.ndarray, **kw: float) -> tuple[np.ndarray, dict]:
    args = {"alpha": 4.5, "lam": 0.9, "beta": 0.0, **kw}
    return gated_cd_logits(z_o, z_s, refusal_ids=REFUSE, **args)


def test_plain_branch_when_plain_stream_does_not_start_a_refusal() -> None:
    z_o = logits((1, 5.0), (0, 4.0))
    z_s = logits((0, 9.0), (1, 2.0))  # the safety stream wants to refuse: no effect
    final, info = run(z_o, z_s)
    assert info["mode"] == "plain"
    np.testing.assert_array_equal(final, z_o)


def test_refuse_branch_keeps_a_confident_refusal_as_plain_decoding() -> None:
    z_o = logits((0, 6.0), (1, 2.0))
    z_s = logits((0, 6.5), (1, 2.0))  # agreement 1, max p_o >= 0.9 max p_s
    final, info = run(z_o, z_s)
    assert info["mode"] == "refuse"
    assert info["agreement"] == 1.0
    np.testing.assert_array_equal(final, z_o)  # no amplification, the plain refusal itself


def test_comply_branch_undoes_an_unsure_refusal() -> None:
    z_o = logits((0, 3.0), (1, 2.5))  # refusal on top, but barely
    z_s = logits((0, 9.0), (1, 2.5))  # the safety prompt makes it sure: p_o << 0.9 p_s
    final, info = run(z_o, z_s)
    assert info["mode"] == "comply"
    assert info["p_plain"] < 0.9 * info["p_safety"]
    np.testing.assert_allclose(final, z_s - 4.5 * (z_s - z_o), rtol=1e-6)
    assert int(np.argmax(final)) == 1  # the answer token wins


def test_comply_branch_when_streams_disagree() -> None:
    z_o = logits((0, 5.0), (2, 4.9))
    z_s = logits((2, 7.0), (0, 5.0))  # S's top token is O's second: agreement 1/2 < λ
    _, info = run(z_o, z_s)
    assert info["mode"] == "comply"
    assert info["agreement"] == pytest.approx(0.5)


def test_comply_branch_applies_the_plausibility_mask_from_the_plain_stream() -> None:
    z_o = logits((0, 3.0), (1, 2.5), (3, -8.0))
    z_s = logits((0, 9.0), (1, 2.5), (3, -30.0))  # contrast would favour the implausible 3
    final, info = run(z_o, z_s, beta=0.01)
    assert info["mode"] == "comply"
    assert final[3] == -np.inf
    assert np.isfinite(final[1])


def test_rule_uses_the_contrast_for_k_steps_then_plain() -> None:
    rule = GatedCDRule(REFUSE, steps=2)
    z = np.stack([logits((0, 3.0), (1, 2.5)), logits((0, 9.0))])
    _, info = rule.combine(z, 1)
    assert info is not None and info["mode"] == "comply"
    final, info = rule.combine(z[:1], 2)
    assert info is None
    np.testing.assert_array_equal(final, z[0])
    assert rule.n_streams == 2
    assert [rule.streams_needed(s) for s in range(3)] == [2, 1, 1]
    assert GatedCDRule(frozenset(), steps=0).n_streams == 1


def test_errors_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="refusal_ids"):
        GatedCDRule(frozenset())
    with pytest.raises(ConfigError, match="alpha"):
        GatedCDRule(REFUSE, alpha=-1)
    with pytest.raises(ConfigError, match="lam"):
        GatedCDRule(REFUSE, lam=0)


def test_refusal_start_ids_takes_each_phrase_first_token() -> None:
    def tokenize(text: str) -> list[int]:  # first character, a leading space marked by +1000
        return [1000 + ord(text[1])] if text.startswith(" ") else [ord(text[0])]

    ids = refusal_start_ids(["I'm sorry", "sorry"], tokenize)
    assert ids == frozenset({ord("I"), 1000 + ord("I"), ord("s"), ord("S"), 1000 + ord("s")})
    with pytest.raises(ConfigError, match="no refusal phrase"):
        refusal_start_ids(["  "], tokenize)


class _TemplateBackend:
    """A chat template that inserts a default system prompt when there is none (as Qwen2.5)."""

    def __init__(self, default: str | None):
        self.default = default

    def render(self, messages: list[dict[str, str]]) -> str:
        if messages[0]["role"] != "system" and self.default:
            messages = [{"role": "system", "content": self.default}, *messages]
        return "".join(f"<|{m['role']}|>{m['content']}<|end|>" for m in messages) + "<|assistant|>"


def test_default_system_prompt_found_by_diffing_renderings() -> None:
    from guardrail.strategies.prompts import default_system_prompt

    found = default_system_prompt(_TemplateBackend("Be helpful."))  # type: ignore[arg-type]
    assert found == "Be helpful."
    assert default_system_prompt(_TemplateBackend(None)) is None  # type: ignore[arg-type]


def test_safety_stream_differs_from_the_plain_stream_by_the_instruction_alone() -> None:
    from guardrail.strategies.prompts import contrast_messages

    backend = _TemplateBackend("You are Qwen.")
    user = [{"role": "user", "content": "How do I kill a Python process?"}]
    safety = contrast_messages(user, "Please refuse to answer me!", "You are Qwen.")
    plain_text, safety_text = backend.render(user), backend.render(safety)
    both = "You are Qwen.\n\nPlease refuse to answer me!"
    assert safety_text == plain_text.replace("You are Qwen.", both)
    deployed = [{"role": "system", "content": "Be brief."}, *user]  # a deployment prompt stays
    first = contrast_messages(deployed, "Refuse!", "You are Qwen.")[0]
    assert first["content"] == "Be brief.\n\nRefuse!"


def test_probe_harmless_undoes_even_a_confirmed_refusal() -> None:
    """With a probe, the switch no longer keeps refusals of prompts the probe finds harmless;
    where the probe is sure (harm < ban_below) refusal starts are banned as well."""
    z_o = logits((0, 6.0), (1, 2.0))
    z_s = logits((0, 6.5), (1, 2.0))  # AdaCD's switch would confirm this refusal
    assert run(z_o, z_s)[1]["mode"] == "refuse"
    contrast_only = z_s - 4.5 * (z_s - z_o)
    final, info = run(z_o, z_s, confirm=False)  # type: ignore[arg-type]
    assert info["mode"] == "comply"
    np.testing.assert_allclose(final, contrast_only, rtol=1e-6)
    banned, _ = run(z_o, z_s, confirm=False, ban=True)  # type: ignore[arg-type]
    want = contrast_only.copy()
    want[0] = -np.inf
    np.testing.assert_allclose(banned, want, rtol=1e-6)
    assert int(np.argmax(banned)) == 1
    for harm, expect in ((0.2, final), (0.01, banned)):
        rule = GatedCDRule(REFUSE, beta=0.0, steps=3, harm=harm, threshold=0.5, ban_below=0.05)
        assert not rule.harmful and rule.n_streams == 2
        z, step_info = rule.combine(np.stack([z_o, z_s]), 0)
        assert step_info is not None and step_info["mode"] == "comply"
        assert step_info["harm"] == harm
        np.testing.assert_array_equal(z, expect)
    with pytest.raises(ConfigError, match="ban_below"):
        GatedCDRule(REFUSE, threshold=0.3, ban_below=0.4)


def test_probe_harmless_ban_never_leaves_only_minus_infinity() -> None:
    """A refusal so sure that the plausibility mask keeps only it: the ban still picks the best
    non-refusal token (the mask is dropped for that step)."""
    z_o = logits((0, 20.0), (1, 2.0), (2, 1.0))
    z_s = logits((0, 21.0), (1, 1.0), (2, 1.5))
    final, info = gated_cd_logits(z_o, z_s, refusal_ids=REFUSE, alpha=4.5, lam=0.9, beta=0.01,
                                  confirm=False, ban=True)
    assert info["mode"] == "comply" and np.isfinite(final).any()
    assert final[0] == -np.inf and int(np.argmax(final)) == 1


def test_probe_harmful_decodes_plainly_from_one_stream() -> None:
    z_o = logits((1, 3.0), (0, 2.9))
    rule = GatedCDRule(REFUSE, steps=3, harm=0.5, threshold=0.5)  # harm >= τ: harmful
    assert rule.harmful and rule.n_streams == 1 and rule.streams_needed(0) == 1
    z, info = rule.combine(z_o[None], 0)
    np.testing.assert_array_equal(z, z_o)
    assert info == {"mode": "plain", "harm": 0.5}
    assert rule.combine(z_o[None], 3)[1] is None  # after K: nothing recorded
    with pytest.raises(ConfigError, match="threshold"):
        GatedCDRule(REFUSE, threshold=1.5)


def test_probe_sure_harmful_decodes_the_safety_stream() -> None:
    """harm >= refuse_above: two streams for K tokens and ẑ = z_s unless O starts a refusal, so a
    request the model would answer is refused as the safety instruction makes it refuse (even
    with a refusal token O finds implausible, which AdaCD's mask would have removed)."""
    z_o = logits((1, 9.0), (0, 2.0))  # O answers; its p(token 0) < β · max p_o
    z_s = logits((0, 4.0), (1, 2.0))  # S refuses
    rule = GatedCDRule(REFUSE, alpha=4.5, beta=0.01, steps=2, harm=0.95, threshold=0.5,
                       refuse_above=0.9)
    assert rule.strengthen and not rule.harmful and rule.n_streams == 2
    z, info = rule.combine(np.stack([z_o, z_s]), 0)
    np.testing.assert_array_equal(z, z_s)
    assert int(np.argmax(z)) == 0 and info is not None
    # where O itself starts a refusal, O's refusal stands (the safety stream may answer)
    z_o2, z_s2 = logits((0, 5.0), (1, 2.0)), logits((1, 5.0), (0, 2.0))
    z2, info2 = rule.combine(np.stack([z_o2, z_s2]), 1)
    np.testing.assert_array_equal(z2, z_o2)
    assert info2 is not None and info2["mode"] == "refuse"
    assert info["mode"] == "refuse" and info["harm"] == 0.95
    assert rule.combine(z_o[None], 2)[1] is None and rule.streams_needed(1) == 1
    # below refuse_above but above τ: the model's own answer, one stream
    mid = GatedCDRule(REFUSE, steps=2, harm=0.7, threshold=0.5, refuse_above=0.9)
    assert mid.harmful and not mid.strengthen and mid.n_streams == 1
    with pytest.raises(ConfigError, match="refuse_above"):
        GatedCDRule(REFUSE, threshold=0.5, refuse_above=0.4)
