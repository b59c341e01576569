"""One chat-model call from messages to chunks: prepare, decode, finish.

:func:`prepare` turns LangChain messages and call options into a :class:`Call`: the policy's
:class:`~guardrail.guard.Guard` checks the request (a rule may answer without decoding), the
conversation is rendered for the model's template (tools included), and the engine plans the
request. :func:`decode_calls` decodes prepared calls together and yields their chunks; the last
chunk of each call carries tool calls, usage and the ``guardrail`` metadata, decided after the
engine is released so a refusal detector may use the model itself. A call that cannot run (it
does not fit the model's context) raises, or, when isolated, fails alone: ``Call.error``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import closing
from dataclasses import dataclass, field
from typing import Any

from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.messages import ToolCallChunk
from langchain_core.outputs import ChatGeneration, ChatGenerationChunk

from guardrail.decoding.loop import ErrorEvent, FinishEvent, GenerationRequest, TokenEvent
from guardrail.engine import Engine
from guardrail.errors import ConfigError, GuardrailError
from guardrail.guard import Guard, last_user_text
from guardrail.loading import get_engine
from guardrail.policy import Policy
from guardrail.policy.decisions import log_step
from guardrail.langchain.call_stream import CallStream
from guardrail.langchain.thinking import (
    THINK_OPEN,
    Reasoning,
    reasoning_of,
    reasoning_request,
    visible_reasoning,
)
from guardrail.langchain.messages import add_tools_to_system, to_template_messages
from guardrail.langchain.structured import ToolCallOrJson, json_constraint, response_schema
from guardrail.langchain.tool_calls import (
    ParsedOutput,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    TemplateToolSupport,
    call_schema,
    check_tools,
    forced_prefix,
    normalise_tool_choice,
    parse_tool_calls,
    probe_template,
    safe_text_end,
    tool_names,
)


def token_texts(engine: Engine) -> list[str]:
    """Each token's text alone (once per model); pieces of split characters are empty."""

    def make() -> list[str]:
        b = engine.backend
        texts = [b.detokenize([i]) for i in range(b.vocab_size)]
        return ["" if "\ufffd" in t else t for t in texts]

    return engine.cached("token_texts", make)


def template_support(engine: Engine) -> TemplateToolSupport:
    """What the model's chat template does with tools (probed once per model)."""
    return engine.cached("template_tool_support", lambda: probe_template(engine.backend))


def plain_data(x: Any) -> Any:
    """JSON-safe copy of trace values (numpy scalars become Python numbers)."""
    if isinstance(x, Mapping):
        return {str(k): plain_data(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [plain_data(v) for v in x]
    if hasattr(x, "item") and callable(x.item):
        return x.item()
    return x


@dataclass
class Call:
    """One prepared generation and its streaming state."""

    engine: Engine
    guard: Guard
    request: GenerationRequest | None  # None when a rule answered without generating
    template_messages: list[dict[str, Any]]
    tools: list[dict[str, Any]]
    tool_mode: str  # "auto" | "any" | "none"
    tool_format: str
    prefix: str
    preset: str | None = None  # answer given by a matching rule (replace)
    matched_rule: str | None = None
    generated: str = ""
    emitted: str = ""
    finish: FinishEvent | None = field(default=None, repr=False)
    error: GuardrailError | None = None  # the call failed alone (decode_calls isolate)
    parsed: ParsedOutput | None = None  # the final answer: text, tool calls, invalid calls
    constraint: str | None = None  # the JSON engine of a forced call or response format
    structured: bool = False  # the answer is JSON under a response format
    timings: dict[str, float] = field(default_factory=dict)  # seconds the guard spent (rules_s)
    hold: bool = False  # the answer is held: on_refusal may replace it (see _released)
    early: str | None = None  # the detector's early decision on a held answer
    call_stream: CallStream | None = None  # tool calls streamed as they decode
    reasoning_mode: Reasoning | None = None  # the template has a reasoning section
    reasoning_request: GenerationRequest | None = None  # its phase, decoded first
    reasoning_finish: FinishEvent | None = None
    reasoning: str = ""  # the reasoning text (inside <think>...</think>)
    reasoning_sent: str = ""  # what of it was streamed
    reasoning_tokens: int = 0
    reasoning_s: float = 0.0

    @property
    def policy(self) -> Policy:
        return self.guard.policy

    @property
    def prompt(self) -> str:
        """The text the refusal detector reads the answer against (the last user turn)."""
        return last_user_text(self.template_messages)

    @property
    def tools_active(self) -> bool:
        return bool(self.tools) and self.tool_mode != "none"


def merge_tools(
    tmpl: list[dict[str, Any]], tools: list[dict[str, Any]], support: TemplateToolSupport
) -> tuple[list[dict[str, Any]], list[dict[str, Any]] | None]:
    """The conversation and the tools for the template to render: the template renders them
    when it can, otherwise they become a block of the system prompt (and nothing is rendered)."""
    if support.tools:
        return tmpl, tools
    return add_tools_to_system(tmpl, tools), None


def prepare(
    policy: Policy, messages: Sequence[BaseMessage], *, stop: Sequence[str],
    tools: Sequence[Mapping[str, Any]] | None, tool_choice: Any, response_format: Any = None,
    parallel_tool_calls: bool | None = None,
) -> Call:
    """Render, check and plan one call under ``policy`` (loads the model on first use).

    ``parallel_tool_calls=False`` ends a Hermes answer at its first call's closing tag, so it
    makes one call at most (a Llama-3.1 answer is one call by its format)."""
    engine = get_engine(policy.model)
    guard = Guard(policy, engine)
    check_tools(list(tools or []))
    tools = [dict(t) for t in tools or []]
    mode, forced = normalise_tool_choice(tool_choice, tools)
    answer_schema = response_schema(response_format)
    if answer_schema is not None and tools and mode == "any":
        raise ConfigError("response_format: cannot be combined with a forced tool call "
                          f"(tool_choice={tool_choice!r}); the answer would be the call")
    support = template_support(engine)
    tmpl = to_template_messages(messages, support if tools else None)
    t0 = time.perf_counter()
    verdict = guard.check_request(tmpl)  # the caller's conversation, before tools are merged
    rules_s = time.perf_counter() - t0
    render_tools: list[dict[str, Any]] | None = None
    if tools and mode != "none":
        tmpl, render_tools = merge_tools(tmpl, tools, support)
    stops = list(stop)
    prefix = forced_prefix(support.format, forced) if tools and mode == "any" else ""
    if support.format == "hermes" and tools and mode != "none" and (
        prefix or parallel_tool_calls is False
    ):
        stops.append(TOOL_CALL_CLOSE)
    c = Call(engine, guard, None, tmpl, tools, mode, support.format, prefix,
             structured=answer_schema is not None, timings={"rules_s": rules_s},
             hold=guard.holds_answer)
    if c.tools_active:
        c.call_stream = CallStream(support.format, tool_names(tools))
    if answer_schema is not None and c.tools_active and support.format != "hermes":
        raise ConfigError("response_format: with tools offered, this model's template writes "
                          "calls as bare JSON (Llama-3.1 style), which a JSON answer cannot be "
                          "told apart from; bind the schema as a tool instead "
                          "(with_structured_output(method='function_calling'))")
    if verdict is not None:
        c.matched_rule = verdict.rule
        if verdict.answers:
            c.preset = verdict.message
            return c
    req = engine.request(policy, tmpl, tools=render_tools, stop=stops)
    proc = None
    if prefix:
        ids = engine.backend.tokenize(prefix)
        req.prompts = [[*p, *ids] for p in req.prompts]
        # Keep the forced call's JSON valid for the tool's schema (a loop processor).
        proc = json_constraint(
            engine, call_schema(tools, forced), token_texts=token_texts(engine),
            budget=req.max_new_tokens, opening="" if forced else '{"name": "',
            closing="}" if forced else "", what="tools",
        )
    elif answer_schema is not None:
        # The whole answer is the JSON (strings bounded by the budget alone).
        proc = json_constraint(
            engine, answer_schema, token_texts=token_texts(engine),
            budget=req.max_new_tokens, string_cap=None, what="response_format",
        )
        if c.tools_active:  # or one tool call, if the model makes one
            call = json_constraint(
                engine, call_schema(tools, None), token_texts=token_texts(engine),
                budget=req.max_new_tokens, what="tools",
            )
            proc = ToolCallOrJson(proc, call, token_texts(engine), engine.backend.detokenize,
                                  TOOL_CALL_OPEN + "\n")
    if proc is not None:
        req.processors = [*req.processors, proc]
        c.constraint = getattr(proc, "engine", None)
    else:  # a constrained answer starts at its first token: no reasoning phase
        c.reasoning_mode = reasoning_of(engine.backend, tmpl, render_tools)
        if c.reasoning_mode is not None:
            c.reasoning_request = reasoning_request(req, c.reasoning_mode, engine.backend)
    c.request = req
    return c


def call_timings(c: Call, review_s: float) -> dict[str, float]:
    """Seconds this call took, by part: the scheduler's (``queue_s``, ``prefill_s``,
    ``first_token_s``, ``decode_s``, ``total_s``: from submission to the last token), the
    planning (``plan_s``: rendering, tokenising, any probe), and the guard's own work outside
    decoding: ``rules_s`` (request rules), ``probe_s`` (a prompt probe), ``review_s`` (refusal
    detection) and their sum ``guard_s``. A contrast stream's cost is inside ``decode_s`` (it
    decodes in the same batched step); benchmarks measure it against plain decoding."""
    t: dict[str, float] = dict(c.timings)
    if c.request is not None:
        t.update(c.request.timings)
    if c.finish is not None:
        t.update(c.finish.timings)
    if c.reasoning_s:
        t["reasoning_s"] = c.reasoning_s  # the reasoning phase, submission to its end
    t["review_s"] = review_s
    t["guard_s"] = t["rules_s"] + t.get("probe_s", 0.0) + review_s
    return {k: round(v, 4) for k, v in t.items()}


def _released(c: Call, full: str) -> bool:
    """Whether a held answer may stream now. It is held (``on_refusal`` may replace it) only
    until the refusal detector can decide on how it starts: released when that says it is no
    refusal, held to the end when it says refusal (or when it can only decide at the end)."""
    if not c.hold:
        return True
    if c.early is not None:  # decided: a refusal, held to the end
        return False
    end = safe_text_end(full, c.tool_format) if c.tools_active else len(full)  # type: ignore[arg-type]
    verdict = c.guard.decide_early(c.prompt, full[:end])
    if verdict is None:
        return False
    c.early = "refusal" if verdict.refused else "answer"
    c.hold = verdict.refused
    return not c.hold


def _on_token(c: Call, text: str) -> tuple[str, list[ToolCallChunk]]:
    """Record released text; return what may be streamed now: text, and tool-call chunks."""
    c.generated += text
    full = c.prefix + c.generated
    if not _released(c, full):
        return "", []
    end = safe_text_end(full, c.tool_format) if c.tools_active else len(full)  # type: ignore[arg-type]
    new = full[len(c.emitted) : end] if end > len(c.emitted) else ""
    c.emitted += new
    return new, c.call_stream.update(full) if c.call_stream is not None else []


def final_chunk(c: Call) -> ChatGenerationChunk:
    """The last chunk: the rest of the text, tool calls, usage and guardrail metadata."""
    policy, fin = c.policy, c.finish
    if c.preset is not None or fin is None:
        full, prompt_tokens, output_tokens, reason, steps = c.preset or "", 0, 0, "rule", []
    else:
        c.generated = fin.text  # the whole released text (the tail included)
        full = c.prefix + fin.text
        prompt_tokens = fin.prompt_tokens - c.reasoning_tokens  # its prompt held the reasoning
        output_tokens = len(fin.token_ids) + c.reasoning_tokens
        reason, steps = fin.reason, fin.steps
    parsed = (
        parse_tool_calls(full, tool_names(c.tools)) if c.tools_active and c.preset is None
        else ParsedOutput(full)
    )
    prompt = c.prompt
    content, replaced = parsed.content, False
    t0 = time.perf_counter()
    if c.preset is not None:
        verdict = c.guard.detector(prompt, content)
    else:
        answer = c.guard.review(prompt, content)
        content, replaced, verdict = answer.text, answer.replaced, answer.refusal
    review_s = time.perf_counter() - t0
    if content.startswith(c.emitted):
        rest = content[len(c.emitted) :]
    elif content.startswith(c.emitted.strip()):
        rest = content[len(c.emitted.strip()) :]
    else:
        rest = ""
    steps_plain = plain_data(steps)
    meta: dict[str, Any] = {
        "policy": policy.name,
        "strategy": policy.strategy.kind,
        "backend": policy.model.backend,
        "model": c.engine.backend.model_name,
        "modes": [s["mode"] for s in steps_plain if "mode" in s],
        "steps": steps_plain,
        "refused": bool(verdict.refused),
        "refusal_detector": verdict.detector,
        "finish_reason": reason,
    }
    if c.request is not None and c.request.probe:
        meta["probe"] = plain_data(dict(c.request.probe))  # e.g. {"harm": P(harmful)}
    meta["timings"] = call_timings(c, review_s)
    if c.matched_rule is not None:
        meta["matched_rule"] = c.matched_rule
    if replaced:
        meta["replaced"] = True
    if c.early is not None:  # a held answer: how the detector decided while it decoded
        meta["early_decision"] = c.early
    if c.tools_active:
        meta["tool_format"] = c.tool_format
    if c.constraint is not None:
        meta["constraint"] = c.constraint  # "llguidance" or "builtin"
    finish_reason = (
        "tool_calls" if parsed.tool_calls else ("length" if reason == "length" else "stop")
    )
    chunks = (
        c.call_stream.finish(full, parsed) if c.call_stream is not None and c.preset is None
        else []
    )
    c.parsed = ParsedOutput(c.emitted + rest, parsed.tool_calls, parsed.invalid_tool_calls,
                            parsed.in_order)
    extra: dict[str, Any] = {}
    if c.reasoning and not replaced and c.reasoning != c.reasoning_sent:  # held until now
        extra["reasoning_content"] = c.reasoning[len(c.reasoning_sent):]
    usage: dict[str, Any] = {
        "input_tokens": prompt_tokens,
        "output_tokens": output_tokens,
        "total_tokens": prompt_tokens + output_tokens,
    }
    if c.reasoning_tokens:
        usage["output_token_details"] = {"reasoning": c.reasoning_tokens}
    msg = AIMessageChunk(
        content=rest,
        tool_call_chunks=chunks,
        additional_kwargs=extra,
        usage_metadata=usage,  # type: ignore[arg-type]
        response_metadata={
            "guardrail": meta,
            "finish_reason": finish_reason,
            "model_name": c.engine.backend.model_name,
            "model_provider": "guardrail",
        },
        chunk_position="last",
    )
    return ChatGenerationChunk(message=msg)


def _decode(
    calls: Sequence[Call], live: list[int], cancel: threading.Event | None, isolate: bool,
    *, reasoning: bool,
) -> Iterator[tuple[int, ChatGenerationChunk]]:
    """Decode the answer (or, with ``reasoning``, the reasoning phase) of ``calls[live]``
    together; yield their streamed chunks."""
    engine = calls[live[0]].engine
    reqs = [calls[i].reasoning_request if reasoning else calls[i].request for i in live]
    # (a plain call keeps the engine's default: raise before decoding anything)
    stream = (
        engine.stream(reqs, errors="event")  # type: ignore[arg-type]
        if isolate else engine.stream(reqs)  # type: ignore[arg-type]
    )
    with closing(stream) as events:
        for ev in events:
            if cancel is not None and cancel.is_set():
                return
            c = calls[live[ev.request]]
            if isinstance(ev, TokenEvent) and reasoning:
                delta = _on_reasoning(c, ev.text)
                if delta:
                    yield live[ev.request], ChatGenerationChunk(message=AIMessageChunk(
                        content="", additional_kwargs={"reasoning_content": delta}))
            elif isinstance(ev, TokenEvent):
                log_step(c.policy, ev.step, ev.info)
                new, calls_so_far = _on_token(c, ev.text)
                if new or calls_so_far:
                    yield live[ev.request], ChatGenerationChunk(
                        message=AIMessageChunk(content=new, tool_call_chunks=calls_so_far)
                    )
            elif isinstance(ev, FinishEvent) and reasoning:
                c.reasoning_finish = ev
            elif isinstance(ev, FinishEvent):
                c.finish = ev
            elif isinstance(ev, ErrorEvent):
                c.error = ev.error


def _on_reasoning(c: Call, text: str) -> str:
    """Record reasoning text; return what may be streamed now (nothing while the answer is
    held: reasoning of an answer that is replaced is never shown)."""
    c.generated += text
    assert c.reasoning_mode is not None
    c.reasoning = visible_reasoning(c.generated, c.reasoning_mode)
    if c.hold:
        return ""
    delta = c.reasoning[len(c.reasoning_sent):]
    c.reasoning_sent = c.reasoning
    return delta


def _after_reasoning(c: Call) -> None:
    """Set the answer phase up from the reasoning phase's outcome (see thinking.py)."""
    assert c.reasoning_request is not None and c.request is not None
    fin = c.reasoning_finish
    text, c.generated = c.generated, ""
    c.reasoning_request = None
    if fin is None:
        return
    c.reasoning_s = fin.timings.get("total_s", 0.0)
    if not (c.reasoning_mode and (c.reasoning_mode.opened or
                                  text.lstrip().startswith(THINK_OPEN))):
        c.reasoning = ""  # the model answered without reasoning: decode the answer anew
        return
    ids = list(fin.token_ids)
    c.reasoning_tokens = len(ids)
    left = c.request.max_new_tokens - len(ids)
    if fin.reason != "stop_string" or left < 1:  # no answer after it: ended, or no budget
        c.finish = FinishEvent(0, "length" if fin.reason == "length" or left < 1 else "stop",
                               "", [], fin.prompt_tokens + len(ids))
        c.request = None
        return
    c.request.prompts = [[*p, *ids] for p in c.request.prompts]
    c.request.max_new_tokens = left


def decode_calls(
    calls: Sequence[Call], cancel: threading.Event | None = None, *, isolate: bool = False
) -> Iterator[tuple[int, ChatGenerationChunk]]:
    """Decode ``calls`` (all on one engine) together; yield ``(call index, chunk)``.

    Finishing (refusal detection, tool parsing) happens after the engine is released, so a
    detector may use the model itself. A call that cannot run (its prompt does not fit the
    context) raises :class:`~guardrail.errors.ContextOverflowError` before anything is decoded;
    with ``isolate=True`` it fails alone instead: its ``error`` is set, no chunk is yielded for
    it (not even a last one), and the other calls are decoded. The caller must then check
    ``Call.error`` of every call.
    """
    live = [i for i, c in enumerate(calls) if c.request is not None]
    thinking = [i for i in live if calls[i].reasoning_request is not None]
    if thinking:  # the reasoning phases first (guardrail/langchain/thinking.py)
        yield from _decode(calls, thinking, cancel, isolate, reasoning=True)
        if cancel is not None and cancel.is_set():
            return
        for i in thinking:
            if calls[i].error is None:
                _after_reasoning(calls[i])
        live = [i for i in live if calls[i].request is not None and calls[i].error is None]
    if live:
        yield from _decode(calls, live, cancel, isolate, reasoning=False)
        if cancel is not None and cancel.is_set():
            return
    for i, c in enumerate(calls):
        if c.error is not None:
            continue
        try:
            last = final_chunk(c)
        except GuardrailError as e:  # on_refusal: raise, decided for this call alone
            if not isolate:
                raise
            c.error = e
            continue
        yield i, last


def to_generation(chunk: ChatGenerationChunk, parsed: ParsedOutput | None) -> ChatGeneration:
    """The finished message: streamed text and metadata, tool calls exactly as parsed."""
    msg = chunk.message
    message = AIMessage(
        content=msg.content,
        tool_calls=parsed.tool_calls if parsed else getattr(msg, "tool_calls", []),
        invalid_tool_calls=(
            parsed.invalid_tool_calls if parsed else getattr(msg, "invalid_tool_calls", [])
        ),
        usage_metadata=getattr(msg, "usage_metadata", None),
        additional_kwargs=msg.additional_kwargs,
        response_metadata=msg.response_metadata,
        id=msg.id,
    )
    return ChatGeneration(message=message, generation_info=chunk.generation_info)


__all__ = [
    "Call", "decode_calls", "final_chunk", "plain_data", "prepare", "template_support",
    "to_generation", "token_texts",
]
