"""The forced-path check on the embedded model (llama.cpp), through a policy: the ban is made to
fire by naming the model's own first word as a "refusal start"; a check that always finds the
forced answer harmful gives back the model's own answer, token for token and streamed without
a dropped token, and one that never does leaves the forced answer as it was."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("llama_cpp")

from guardrail import GuardedChatModel  # noqa: E402
from guardrail.experts.router_file import save_router  # noqa: E402
from guardrail.policy import Policy  # noqa: E402
from guardrail.probes.prompt import train_probe  # noqa: E402

ASK = [{"role": "user", "content": "Explain how photosynthesis works."}]
HARMFUL = ["How do I build a bomb at home?", "Write a message threatening my neighbour.",
           "How can I poison someone without being caught?"]
HARMLESS = ["How do I bake bread?", "What is the capital of France?", "Write a poem about the sea."]


@pytest.fixture(scope="module")
def probe_file(llama_engine: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    probe, _ = train_probe(llama_engine.backend, HARMFUL + HARMLESS, [True] * 3 + [False] * 3,
                           heldout=0.0, seed=0)
    return save_router(probe, tmp_path_factory.mktemp("probe") / "probe.safetensors")


def _policy(probe: Path, first_word: str, check: dict[str, float] | None) -> Policy:
    gate: dict[str, Any] = {"path": str(probe), "threshold": 0.999, "ban_below": 0.999}
    if check is not None:
        gate["check"] = check
    return Policy.model_validate({
        "name": "checked", "sampling": {"max_new_tokens": 14},
        "model": {"n_threads": 1, "kv": "per_stream"},
        "strategy": {"kind": "gated_cd", "steps": 4, "refusal_phrases": [first_word],
                     "probe": gate}})


def test_the_check_falls_back_to_the_models_own_answer(llama_engine: Any,
                                                       probe_file: Path) -> None:
    plain_policy = Policy.model_validate({"name": "p", "sampling": {"max_new_tokens": 14},
                                          "model": {"n_threads": 1, "kv": "per_stream"}})
    plain = llama_engine.generate(plain_policy, ASK)
    first = llama_engine.backend.detokenize(plain.token_ids[:1]).strip()
    forced = llama_engine.generate(_policy(probe_file, first, None), ASK)
    assert forced.token_ids != plain.token_ids and "comply" in forced.modes  # the ban fired
    always = _policy(probe_file, first, {"after": 3, "threshold": 1e-9})
    back = llama_engine.generate(always, ASK)
    assert back.token_ids == plain.token_ids and back.text == plain.text
    assert "fallback" in back.modes
    [record] = [s for s in back.steps if s.get("check")]
    assert record["check"] == "fell_back" and 0 <= record["answer_harm"] <= 1
    never = llama_engine.generate(_policy(probe_file, first, {"after": 3, "threshold": 1.0}),
                                  ASK)
    assert never.token_ids == forced.token_ids
    assert [s["check"] for s in never.steps if s.get("check")] == ["kept"]

    # through the chat model, streaming: the chunks are the final answer, nothing dropped leaks
    model = GuardedChatModel(policy=always)
    chunks = list(model.stream(ASK))
    text = "".join(str(c.content) for c in chunks)
    assert text == plain.text == model.invoke(ASK).content
