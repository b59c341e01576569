"""Flaws of the reference code that the transformers backend fixes (docs/methods.md §1.5), each with a
test that fails on the flawed behaviour."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

pytestmark = pytest.mark.transformers

MSGS = [{"role": "user", "content": "How can I kill a Python process?"}]


def _hf_last_logits(model: Any, ids: list[int], **kw: Any) -> np.ndarray:
    import torch

    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids]), **kw)
    return out.logits[0, -1].float().numpy()


def test_end_of_turn_tokens_inside_the_prompt_stay_visible(tf_engine: Any) -> None:
    """§1.5.1: the reference masks ``ids != pad`` with pad == eos, hiding every <|im_end|>."""
    from guardrail.adapters.transformers import TransformersBackend

    b = tf_engine.backend
    prompt = b.encode_chat(MSGS)
    assert b.pad_token_id in prompt  # SmolLM2: pad == eos == <|im_end|>, twice in the prompt
    with b.open([prompt]) as s:
        ours = s.logits()[0]
    full = _hf_last_logits(b.model, prompt)  # HF with every position visible
    np.testing.assert_allclose(ours, full, atol=1e-3)
    flawed = TransformersBackend(b.model, b.tokenizer, reference_mask_token=b.pad_token_id)
    with flawed.open([prompt]) as s:
        masked = s.logits()[0]
    assert np.abs(masked - full).max() > 1e-2


def test_left_padded_streams_keep_their_own_positions(tf_engine: Any) -> None:
    """§1.5.2: without position ids a left-padded stream is numbered from the first padding
    column. (RoPE scores depend on position differences, so SmolLM2's logits hardly move; models
    with absolute positions, sliding windows or position-scaled RoPE do change, so the positions
    themselves are checked.)"""
    b = tf_engine.backend
    long = b.encode_chat(MSGS)  # SmolLM2's template adds its default system prompt
    short = b.encode_chat([{"role": "system", "content": "Be brief."}, *MSGS])
    assert len(long) > len(short)
    seen: list[Any] = []

    def hook(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        seen.append(kwargs.get("position_ids"))

    handle = b.model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with b.open([long, short]) as s:
            together = s.logits()
            s.append([long[-1], short[-1]])
            step_together = s.logits()
    finally:
        handle.remove()
    prefill, step = seen[0].tolist(), seen[1].tolist()
    pad = len(long) - len(short)
    assert prefill[0] == list(range(len(long)))
    assert prefill[1][pad:] == list(range(len(short)))  # counted from the first real token
    assert step == [[len(long)], [len(short)]]
    with b.open([short]) as s:
        alone = s.logits()[0]
        s.append([short[-1]])
        step_alone = s.logits()[0]
    np.testing.assert_allclose(together[1], alone, atol=1e-3)
    np.testing.assert_allclose(step_together[1], step_alone, atol=1e-3)


def test_device_and_dtype_are_checked() -> None:
    from guardrail.adapters.transformers import TransformersBackend
    from guardrail.errors import ConfigError
    from guardrail.models import embedded_model_path

    with pytest.raises(ConfigError, match="device"):
        TransformersBackend(embedded_model_path(), device="tpu")
    with pytest.raises(ConfigError, match="dtype"):
        TransformersBackend(embedded_model_path(), dtype="int3")


def _gpu_model_path() -> str:
    """The model for GPU checks: $GUARDRAIL_GPU_TEST_MODEL, else the embedded model."""
    import os

    from guardrail.models import embedded_model_path

    path = os.environ.get("GUARDRAIL_GPU_TEST_MODEL")
    if path:
        return path
    try:
        return str(embedded_model_path())
    except FileNotFoundError as e:
        pytest.skip(str(e))
        raise


@pytest.fixture(scope="module")
def cpu_and_gpu() -> tuple[Any, Any]:
    """The GPU test model on CPU and on CUDA, fp32 (skips where CUDA is missing;
    benchmarks/gpu_checks.sh runs these tests on a GPU machine)."""
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from guardrail.adapters.transformers import TransformersBackend

    path = _gpu_model_path()
    return (TransformersBackend(path, device="cpu", dtype="float32"),
            TransformersBackend(path, device="cuda", dtype="float32"))


@pytest.mark.gpu
def test_cuda_streams_match_cpu(cpu_and_gpu: tuple[Any, Any]) -> None:
    """The same streams on CUDA and on CPU give the same logits."""
    from guardrail.decoding.adacd import AdaCDRule
    from guardrail.decoding.loop import FinishEvent, GenerationRequest, decode

    cpu, gpu = cpu_and_gpu
    po = cpu.encode_chat(MSGS)
    ps = cpu.encode_chat([{"role": "system", "content": "Please refuse to answer me!"}, *MSGS])
    results = []
    for b in (cpu, gpu):
        with b.open([po, ps]) as s:
            first = s.logits()
            s.append([po[-1], po[-1]])
            results.append(np.concatenate([first, s.logits()]))
    c, g = results
    scale = float(np.abs(c).max())
    np.testing.assert_allclose(g, c, atol=1e-3 * scale)
    top2 = np.sort(c, axis=-1)[:, -2:]
    clear = (top2[:, 1] - top2[:, 0]) > 1e-2 * scale
    assert (g.argmax(-1) == c.argmax(-1))[clear].all()
    # The whole loop runs on the GPU, freeing the safety stream after K.
    events = list(decode(gpu, [GenerationRequest([po, ps], AdaCDRule(steps=3), max_new_tokens=6,
                                                 min_new_tokens=6)]))
    fin = events[-1]
    assert isinstance(fin, FinishEvent) and len(fin.token_ids) == 6 and len(fin.steps) == 3


@pytest.mark.gpu
def test_cuda_prompt_feature_matches_cpu(cpu_and_gpu: tuple[Any, Any]) -> None:
    """The probe's feature (final hidden state of the prompt) is the same on CUDA and on CPU."""
    cpu, gpu = cpu_and_gpu
    ids = cpu.encode_chat(MSGS)
    a, b = cpu.prompt_hidden_state(ids), gpu.prompt_hidden_state(ids)
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape
    assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) > 0.999
