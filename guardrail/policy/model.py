"""Which model a policy (or a model expert, or a judge) loads, and how."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from guardrail.policy.base import Bool, Int
from guardrail.policy.base import Strict as _Strict


# Numbers and switches are strict (policy.base.Int/Bool): ``trust_remote_code: 'yes'`` and
# ``n_gpu_layers: true`` are errors, never True and 1.
class ModelConfig(_Strict):
    """Which model to load and how. Models are cached by these fields: policies that agree on
    them share one loaded model."""

    backend: Literal["llamacpp", "transformers"] = Field(
        "llamacpp", description="Model backend: llama.cpp (GGUF) or Hugging Face transformers."
    )
    path: str | None = Field(
        None,
        description="GGUF file or model directory; null means the embedded SmolLM2-135M-Instruct.",
    )
    n_ctx: Int = Field(
        4096, ge=16,
        description="Context size in tokens (llama.cpp): of all streams together with "
        "kv: unified, of each stream with kv: per_stream.",
    )
    n_streams: Int = Field(
        16, ge=1, le=256,
        description="Most token streams decoded at once (llama.cpp's n_seq_max): a request "
        "uses one per stream of its strategy (plain 1, adacd and balanced 2).",
    )
    kv: Literal["unified", "per_stream"] = Field(
        "unified",
        description="llama.cpp KV cache: unified (one cache all streams share; batched answers "
        "may drift from the same request alone) or per_stream (a cache of n_ctx per stream, "
        "n_ctx x n_streams in all; batched greedy answers equal those decoded alone).",
    )
    n_threads: Int | None = Field(
        None, ge=1, description="CPU threads (llama.cpp; transformers uses torch's setting)."
    )
    n_gpu_layers: Int = Field(
        0, ge=-1, description="Layers offloaded to the GPU (llama.cpp; -1 = all)."
    )
    device: Literal["cpu", "cuda", "auto"] = Field(
        "cpu", description="Device for transformers: cpu, cuda or auto (cuda when available)."
    )
    dtype: Literal["float32", "float16", "bfloat16", "auto"] = Field(
        "float32", description="Weight dtype for transformers."
    )
    trust_remote_code: Bool = Field(
        False, description="Let transformers run code shipped with the model. Off by default."
    )
    lora: str | None = Field(
        None, min_length=1,
        description="A LoRA adapter applied to the whole model (e.g. `guardrail train porover`'s): "
        "transformers merges a PEFT adapter directory into the weights on load (no decode cost); "
        "llama.cpp applies a GGUF LoRA file to the model's context.",
    )
