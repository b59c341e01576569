"""``POST /v1/chat/completions``: one OpenAI request as one call of a served chat model.

The request is bounded (queue slot, body size, token cap), validated, translated to LangChain
messages and call options, and answered by the served :class:`~guardrail.GuardedChatModel`
(``ainvoke``, or ``astream`` for ``stream: true``). Everything the policy does (request rules,
the strategy, refusal detection, ``on_refusal``, the ``callers`` rights on the options) happens
inside that call, exactly as for any LangChain caller; the server adds nothing to it and takes
nothing away.

A client that goes away cancels its generation: a plain request's call is raced against the
connection's ``http.disconnect``; a stream's generator is closed when Starlette stops sending it
(closing ``astream`` sets the decode worker's cancel event).
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import anyio
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.language_models import LanguageModelInput
from langchain_core.messages import AIMessage, AIMessageChunk, BaseMessage
from langchain_core.runnables import Runnable
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from guardrail.errors import (
    ConfigError,
    ContextOverflowError,
    GuardrailError,
    PolicyError,
    RefusalError,
)
from guardrail.langchain import GuardedChatModel
from guardrail.serve import protocol as p
from guardrail.serve import translate as t
from guardrail.serve.config import ServeConfig
from guardrail.serve.limits import Queue, Slot, parse_json, read_body
from guardrail.serve.metrics import NO_POLICY, ServeMetrics
from guardrail.serve.served import Served, pick

log = logging.getLogger("guardrail.serve")
T = TypeVar("T")

CLIENT_GONE = 499
"""Status recorded (never sent) for a request whose client went away."""


@dataclass
class ServerState:
    """What every request reads: the config, the served policies, the queue and the metrics."""

    config: ServeConfig
    served: dict[str, Served]
    queue: Queue
    metrics: ServeMetrics
    created: int = field(default_factory=p.now)


class _ClientGone(Exception):
    """The client disconnected before the answer was ready."""


class _FirstToken(BaseCallbackHandler):
    """Records the time of a call's first generated chunk (time to first token)."""

    run_inline = True  # called on the event loop, no executor hop

    def __init__(self) -> None:
        self.at: float | None = None

    def on_llm_new_token(self, token: str, **kwargs: Any) -> None:
        if self.at is None:
            self.at = time.perf_counter()


@dataclass
class _Outcome:
    """What one request's metrics record when it ends."""

    start: float
    policy: str = NO_POLICY
    status: int = 500
    ttft: _FirstToken = field(default_factory=_FirstToken)

    def record(self, metrics: ServeMetrics, message: AIMessage | AIMessageChunk | None) -> None:
        metrics.requests.labels(self.policy, str(self.status)).inc()
        if self.policy == NO_POLICY:
            return
        metrics.duration.labels(self.policy).observe(time.perf_counter() - self.start)
        if self.ttft.at is not None:
            metrics.ttft.labels(self.policy).observe(self.ttft.at - self.start)
        if message is not None:
            usage = p.usage_body(message.usage_metadata)
            metrics.prompt_tokens.labels(self.policy).inc(usage["prompt_tokens"])
            metrics.completion_tokens.labels(self.policy).inc(usage["completion_tokens"])
            if (message.response_metadata.get("guardrail") or {}).get("refused"):
                metrics.refusals.labels(self.policy).inc()


# --------------------------------------------------------------------------- request → call


def call_options(req: p.ChatCompletionRequest, cap: int) -> dict[str, Any]:
    """The request's per-call options as chat-model keywords (the policy's ``callers`` rights
    decide which may be set); a token budget above the server's cap is a 400."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = getattr(req, name)
        if value is not None and value > cap:
            raise p.ApiError(400, f"{name}: {value} is more than this server allows ({cap})",
                             param=name)
    out: dict[str, Any] = {}
    budget = req.max_completion_tokens if req.max_completion_tokens is not None else req.max_tokens
    if budget is not None:
        out["max_tokens"] = budget
    for name in ("temperature", "top_p", "seed"):
        if getattr(req, name) is not None:
            out[name] = getattr(req, name)
    if req.stop is not None:
        out["stop"] = [req.stop] if isinstance(req.stop, str) else list(req.stop)
    return out


def _structured_tool(req: p.ChatCompletionRequest) -> dict[str, Any] | None:
    """The forced tool a ``json_object``/``json_schema`` response format stands for."""
    rf = req.response_format
    if isinstance(rf, p.JsonSchemaResponseFormat):
        fn: dict[str, Any] = {"name": rf.json_schema.name, "parameters": rf.json_schema.schema_}
        if rf.json_schema.description:
            fn["description"] = rf.json_schema.description
        return {"type": "function", "function": fn}
    if isinstance(rf, p.JsonObjectFormat):
        return {"type": "function", "function": {
            "name": "json_object", "description": "Answer as a JSON object.",
            "parameters": {"type": "object"}}}
    return None


def bind(model: GuardedChatModel, req: p.ChatCompletionRequest
         ) -> tuple[Runnable[LanguageModelInput, Any], bool]:
    """The runnable a request calls, and whether its answer is structured (``response_format``
    as a forced tool call whose arguments are the answer)."""
    structured = _structured_tool(req)
    if structured is not None:
        if req.tools:
            raise p.ApiError(400, "response_format: a JSON response format cannot be combined "
                             "with tools", param="response_format")
        try:
            name = structured["function"]["name"]
            return model.bind_tools([structured], tool_choice=name), True
        except ConfigError as e:
            raise p.ApiError(400, f"response_format: {e}", param="response_format") from None
    if req.tools:
        tools = [tool.model_dump(exclude_none=True) for tool in req.tools]
        choice = req.tool_choice
        value = choice.model_dump() if isinstance(choice, p.NamedToolChoice) else choice
        try:
            return model.bind_tools(tools, tool_choice=value), False
        except ConfigError as e:
            param = "tool_choice" if str(e).startswith("tool_choice") else "tools"
            raise p.ApiError(400, str(e), param=param) from None
    if req.tool_choice not in (None, "none", "auto"):
        raise p.ApiError(400, "tool_choice: a tool is forced but no tools are given",
                         param="tool_choice")
    return model, False


#: Option names a chat-model error may start from, as the request spells them (``max_new_tokens``
#: is the request's ``max_tokens`` or ``max_completion_tokens``).
_OPTION_PARAMS = ("max_new_tokens", "temperature", "top_p", "seed", "stop", "tool_choice",
                  "tools", "messages")


def _param_of(text: str, req: p.ChatCompletionRequest) -> str | None:
    """The request field a chat-model error names (its first option name)."""
    found = [(m.start(), name) for name in _OPTION_PARAMS
             if (m := re.search(rf"\b{name}\b", text)) is not None]
    if not found:
        return None
    name = min(found)[1]
    if name == "max_new_tokens":
        return "max_completion_tokens" if req.max_completion_tokens is not None else "max_tokens"
    return name


def api_error(e: GuardrailError, req: p.ChatCompletionRequest | None) -> p.ApiError:
    """A guardrail error of a call as the HTTP error the caller gets.

    The caller's mistakes (options the policy does not grant, bad values, a conversation too
    long for the context) are 400s naming the field; a refusal the policy raises is a 400 with
    code ``content_filter``; the operator's problems (a served policy file broken since startup,
    a backend failure) are 500s whose details stay in the server log.
    """
    if isinstance(e, RefusalError):
        return p.ApiError(400, str(e), code="content_filter")
    if isinstance(e, ContextOverflowError):
        return p.ApiError(400, str(e), param="messages", code="context_length_exceeded")
    if isinstance(e, ConfigError) and not isinstance(e, PolicyError):
        return p.ApiError(400, str(e), param=_param_of(str(e), req) if req else None)
    log.error("guardrail serve: %s: %s", type(e).__name__, e)
    return p.ApiError(500, "the server could not answer (see its log)", type="server_error")


def _internal(e: BaseException) -> p.ApiError:
    log.error("guardrail serve: internal error", exc_info=e)
    return p.ApiError(500, "internal server error (see the server log)", type="server_error")


def _json(e: p.ApiError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


# ------------------------------------------------------------------------------ disconnects


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _or_gone(request: Request, awaitable: Awaitable[T]) -> T:
    """``awaitable``'s result; cancelled (then :class:`_ClientGone`) if the client disconnects
    first."""
    work = asyncio.ensure_future(awaitable)
    gone = asyncio.ensure_future(_until_disconnect(request.receive))
    try:
        await asyncio.wait({work, gone}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not work.done():
            work.cancel()
            await asyncio.gather(work, return_exceptions=True)
    if work.cancelled():
        raise _ClientGone()
    return work.result()


async def _close(iterator: Any) -> None:
    """Close an async iterator (a no-op when finished); a failure to close is only logged."""
    try:
        await iterator.aclose()
    except Exception as e:  # noqa: BLE001 - cleanup must go on
        log.debug("guardrail serve: closing a stream: %r", e)


# ----------------------------------------------------------------------------------- stream


class _Stream(StreamingResponse):
    """A streaming response that always runs its cleanup, even when the client left before the
    body was iterated (Starlette then never starts the generator, so its own ``finally`` would
    never run)."""

    def __init__(self, content: AsyncIterator[bytes], cleanup: Callable[[], Awaitable[None]]):
        super().__init__(content, media_type="text/event-stream",
                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        self._cleanup = cleanup

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            with anyio.CancelScope(shield=True):
                await _close(self.body_iterator)
                await self._cleanup()


async def _stream(request: Request, state: ServerState, req: p.ChatCompletionRequest,
                  served: Served, runnable: Runnable[LanguageModelInput, Any],
                  messages: list[BaseMessage], options: dict[str, Any], structured: bool,
                  slot: Slot, outcome: _Outcome) -> Response:
    """Start the stream (its first chunk, so option errors are still plain HTTP errors), then
    hand the slot and the metrics to the response."""
    chunks = runnable.astream(messages, config={"callbacks": [outcome.ttft]},
                              **options).__aiter__()
    try:
        first: AIMessageChunk | None = await _or_gone(request, _next(chunks))
    except BaseException:
        await _close(chunks)
        raise
    ident, created, name = p.completion_id(), p.now(), served.name
    usage_on = bool(req.stream_options and req.stream_options.include_usage)
    final: list[AIMessageChunk] = []
    finished = False  # the last event was sent (else the client went away)

    def chunk(delta: dict[str, Any] | None, **kw: Any) -> bytes:
        return p.sse(p.chunk_body(id=ident, created=created, model=name, delta=delta,
                                  include_usage=usage_on, **kw))

    async def events() -> AsyncIterator[bytes]:
        nonlocal finished
        try:
            yield chunk({"role": "assistant", "content": ""})
            current = first
            whole: AIMessageChunk | None = None  # every chunk so far, merged
            while current is not None:
                whole = current if whole is None else whole + current
                if current.chunk_position == "last":
                    final.append(whole)
                delta = t.to_delta(current, structured=structured,
                                   parallel=req.parallel_tool_calls, whole=whole)
                if delta:
                    yield chunk(delta)
                current = await _next(chunks)
            last = final[-1] if final else None
            trace = p.guardrail_trace(
                last.response_metadata.get("guardrail") if last is not None else None)
            if last is not None and last.invalid_tool_calls:
                trace["invalid_tool_calls"] = t.invalid_calls(last)
            reason = t.finish_reason(last, structured=structured) if last else "stop"
            yield chunk({}, finish_reason=reason, trace=trace)
            if usage_on:
                yield chunk(None, usage=p.usage_body(last.usage_metadata if last else None))
            outcome.status = 200
            served.loaded = True
            yield p.DONE
        except Exception as e:  # noqa: BLE001 - this request alone fails
            err = api_error(e, req) if isinstance(e, GuardrailError) else _internal(e)
            outcome.status = err.status
            yield p.sse(err.body())  # OpenAI's clients raise on an error event
            yield p.DONE
        finished = True

    async def cleanup() -> None:
        await _close(chunks)  # a stream left half-read: this cancels its decode
        slot.release()
        if not finished:
            outcome.status = CLIENT_GONE
        outcome.record(state.metrics, final[-1] if final else None)

    return _Stream(events(), cleanup)


async def _next(chunks: AsyncIterator[AIMessageChunk]) -> AIMessageChunk | None:
    try:
        return await chunks.__anext__()
    except StopAsyncIteration:
        return None


# ---------------------------------------------------------------------------------- handler


async def chat_completions(request: Request, state: ServerState) -> Response:
    """Answer one ``POST /v1/chat/completions`` (auth is checked before, by the route)."""
    outcome = _Outcome(time.perf_counter())
    try:
        slot = state.queue.enter()
    except p.ApiError as e:
        outcome.status = e.status
        outcome.record(state.metrics, None)
        return _json(e)
    handed_off = False
    message: AIMessage | None = None
    req: p.ChatCompletionRequest | None = None
    try:
        body = await read_body(request, state.config.max_request_bytes)
        req = p.parse_request(parse_json(body))
        ext = req.guardrail.policy if req.guardrail is not None else None
        served = pick(state.served, req.model if ext is None else ext,
                      "model" if ext is None else "guardrail.policy")
        outcome.policy = served.name
        options = call_options(req, state.config.max_tokens)
        runnable, structured = bind(served.model, req)
        messages = t.to_langchain(req.messages)
        if req.stream:
            response = await _stream(request, state, req, served, runnable, messages, options,
                                     structured, slot, outcome)
            handed_off = True
            return response
        message = await _or_gone(request, runnable.ainvoke(
            messages, config={"callbacks": [outcome.ttft]}, **options))
        trace = p.guardrail_trace(message.response_metadata.get("guardrail"))
        if message.invalid_tool_calls:
            trace["invalid_tool_calls"] = t.invalid_calls(message)
        outcome.status = 200
        served.loaded = True
        return JSONResponse(p.completion_body(
            id=p.completion_id(), created=p.now(), model=served.name,
            message=t.to_openai_message(message, structured=structured,
                                        parallel=req.parallel_tool_calls),
            finish_reason=t.finish_reason(message, structured=structured),
            usage=p.usage_body(message.usage_metadata), trace=trace))
    except p.ApiError as e:
        outcome.status = e.status
        return _json(e)
    except GuardrailError as e:
        err = api_error(e, req)
        outcome.status = err.status
        return _json(err)
    except _ClientGone:
        outcome.status = CLIENT_GONE
        return Response(status_code=CLIENT_GONE)
    except Exception as e:  # noqa: BLE001 - this request alone fails
        err = _internal(e)
        outcome.status = err.status
        return _json(err)
    finally:
        if not handed_off:
            slot.release()
            outcome.record(state.metrics, message)


__all__ = ["CLIENT_GONE", "ServerState", "api_error", "bind", "call_options", "chat_completions"]
