"""The policy schema: one source of truth for what a YAML safety policy may say.

Every model forbids unknown keys and is frozen; every field is described (the descriptions feed
the JSON Schema and the generated policy reference).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from guardrail.policy.base import Strict as _Strict
from guardrail.policy.strategies import AdaCDStrategy, PlainStrategy, Strategy


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
    n_ctx: int = Field(4096, ge=16, description="Context size in tokens (llama.cpp).")
    n_threads: int | None = Field(
        None, ge=1, description="CPU threads (llama.cpp; transformers uses torch's setting)."
    )
    n_gpu_layers: int = Field(
        0, ge=-1, description="Layers offloaded to the GPU (llama.cpp; -1 = all)."
    )
    device: Literal["cpu", "cuda", "auto"] = Field(
        "cpu", description="Device for transformers: cpu, cuda or auto (cuda when available)."
    )
    dtype: Literal["float32", "float16", "bfloat16", "auto"] = Field(
        "float32", description="Weight dtype for transformers."
    )
    trust_remote_code: bool = Field(
        False, description="Let transformers run code shipped with the model. Off by default."
    )


class SamplingConfig(_Strict):
    """How tokens are drawn and when the answer ends."""

    temperature: float = Field(0.0, ge=0, description="0 = greedy; otherwise sampling temperature.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling mass (1 = off).")
    top_k: int = Field(0, ge=0, description="Keep the k most likely tokens (0 = off).")
    seed: int | None = Field(None, description="Seed for sampling (null = random).")
    max_new_tokens: int = Field(256, ge=1, description="Most tokens generated per answer.")
    stop: list[str] = Field(default_factory=list, description="Strings that end the answer.")


class Policy(_Strict):
    """A safety policy: the model, the deployment prompt, the decoding strategy, sampling."""

    name: str = Field("custom", description="Policy name (shown in metadata and reports).")
    description: str = Field("", description="What the policy is for.")
    model: ModelConfig = Field(default_factory=ModelConfig, description="Model to load.")
    system_prompt: str | None = Field(
        None, description="Deployment system prompt put before every conversation."
    )
    strategy: Strategy = Field(
        default_factory=PlainStrategy, description="Decoding strategy and its parameters."
    )
    sampling: SamplingConfig = Field(
        default_factory=SamplingConfig, description="Sampling and stopping."
    )
