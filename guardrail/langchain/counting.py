"""What LangChain asks a chat model about itself: its profile and token counts.

Token counts use the guarded model's own tokenizer and chat template (LangChain's fallback is a
GPT-2 tokenizer fetched from the Hub: other counts, and no counts offline). A conversation is
counted as the prompt the answer stream reads: the deployment system prompt merged in, tools
rendered the way a call renders them (by the template, or as a system-prompt block when the
template cannot), the generation prompt appended. Safety streams and probes read other
prompts and are not counted.

The profile is read from the policy's model section without loading the model, so building a
chat model stays cheap: ``max_input_tokens`` is llama.cpp's ``n_ctx`` (with ``kv: per_stream``,
the context of one stream) or, for a transformers checkpoint directory, its config's
``max_position_embeddings``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from langchain_core.language_models.model_profile import ModelProfile
from langchain_core.messages import BaseMessage
from langchain_core.utils.function_calling import convert_to_openai_tool

from guardrail.engine import Engine
from guardrail.langchain.calls import merge_tools, template_support
from guardrail.langchain.thinking import THINK_CLOSE
from guardrail.loading import loaded_engine
from guardrail.langchain.messages import to_template_messages
from guardrail.policy import Policy
from guardrail.strategies.prompts import with_system_prompt


def prompt_ids(engine: Engine, policy: Policy, messages: Sequence[BaseMessage],
               tools: Sequence[Any] | None = None) -> list[int]:
    """The answer stream's prompt ids for ``messages`` (and ``tools``) under ``policy``."""
    schemas = [convert_to_openai_tool(t) for t in tools or []]
    support = template_support(engine)
    tmpl = to_template_messages(messages, support if schemas else None)
    render = None
    if schemas:
        tmpl, render = merge_tools(tmpl, schemas, support)
    tmpl = with_system_prompt(tmpl, policy.system_prompt)
    return engine.backend.encode_chat(tmpl, tools=render)


def _context_tokens(policy: Policy) -> int | None:
    model = policy.model
    if model.backend == "llamacpp":
        return int(model.n_ctx)
    if model.path is None:
        return None
    cfg = Path(model.path).expanduser() / "config.json"
    try:
        value = json.loads(cfg.read_text()).get("max_position_embeddings")
    except (OSError, ValueError):
        return None
    return int(value) if isinstance(value, int) else None


def model_profile(policy: Policy) -> ModelProfile:
    """What the guarded model supports, for ``create_agent`` and middleware that read it
    (``reasoning_output`` from the chat template once the model is loaded)."""
    profile: dict[str, Any] = {
        "open_weights": True, "text_inputs": True, "image_inputs": False,
        "audio_inputs": False, "video_inputs": False, "pdf_inputs": False,
        "text_outputs": True, "image_outputs": False, "audio_outputs": False,
        "video_outputs": False, "tool_calling": True, "tool_choice": True,
        "tool_call_streaming": True, "structured_output": True, "reasoning_output": False,
        "temperature": True,
    }
    context = _context_tokens(policy)
    if context is not None:
        profile["max_input_tokens"] = context
    engine = loaded_engine(policy.model)  # known once the model is loaded (its template)
    if engine is not None:
        profile["reasoning_output"] = THINK_CLOSE in (engine.backend.chat_template or "")
    return ModelProfile(**profile)  # type: ignore[typeddict-item]
