"""The OpenAI chat-completions wire format: request models, response and chunk builders, errors.

Requests are validated strictly (``extra="forbid"``, no coercion of strings to numbers): an
unknown field is a 400 naming it, never silently ignored, because an ignored option is one the
caller believes applies. Only what the server does something with is accepted; everything the
policy decides (strategy, sampling defaults, refusal handling) stays out of the request, except
the per-call options the policy's ``callers`` rights grant (checked by the chat model).

Responses follow OpenAI's ``chat.completion`` and ``chat.completion.chunk`` shapes, plus one
extension field ``guardrail`` with the decoding trace (policy, strategy, modes, refusal).
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from guardrail.policy.problems import format_path


class ApiError(Exception):
    """An error answered in OpenAI's shape: ``{"error": {message, type, param, code}}``."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None,
                 headers: Mapping[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code, self.headers = param, code, dict(headers or {})

    def body(self) -> dict[str, Any]:
        """The JSON body of the error response (and of a mid-stream error event)."""
        return error_body(self.message, self.type, self.param, self.code)


def error_body(message: str, type: str, param: str | None = None,
               code: str | None = None) -> dict[str, Any]:
    """``{"error": {"message", "type", "param", "code"}}``."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


# ------------------------------------------------------------------------------------ requests


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


class TextPart(_Strict):
    """A text content part (the only kind local chat templates take)."""

    type: Literal["text"]
    text: str


Content = str | list[TextPart]


class FunctionCall(_Strict):
    """An earlier tool call's function: its name and its arguments as a JSON string."""

    name: str
    arguments: str


class ToolCallIn(_Strict):
    """A tool call of an earlier assistant turn."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class SystemMessage(_Strict):
    """A system (or developer) turn."""

    role: Literal["system", "developer"]
    content: Content
    name: str | None = None


class UserMessage(_Strict):
    """A user turn."""

    role: Literal["user"]
    content: Content
    name: str | None = None


class AssistantMessage(_Strict):
    """An earlier assistant turn, possibly with tool calls."""

    role: Literal["assistant"]
    content: Content | None = None
    name: str | None = None
    tool_calls: list[ToolCallIn] | None = None
    refusal: str | None = None


class ToolMessage(_Strict):
    """A tool result answering an earlier call."""

    role: Literal["tool"]
    content: Content
    tool_call_id: str


Message = Annotated[
    SystemMessage | UserMessage | AssistantMessage | ToolMessage, Field(discriminator="role")
]


class FunctionDef(_Strict):
    """A tool's function: name, description and JSON-Schema parameters."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(_Strict):
    """An OpenAI tool (functions only)."""

    type: Literal["function"]
    function: FunctionDef


class ToolChoiceFunction(_Strict):
    """The function a named ``tool_choice`` forces."""

    name: str


class NamedToolChoice(_Strict):
    """``{"type": "function", "function": {"name": ...}}``: force that tool."""

    type: Literal["function"]
    function: ToolChoiceFunction


class JsonSchemaFormat(_Strict):
    """``response_format.json_schema``: the schema the answer must follow."""

    name: str = Field(..., pattern=r"^[A-Za-z0-9_-]{1,64}$")
    description: str | None = None
    schema_: dict[str, Any] = Field(default_factory=lambda: {"type": "object"}, alias="schema")
    strict: bool | None = None


class TextFormat(_Strict):
    """``{"type": "text"}``: a plain answer (the default)."""

    type: Literal["text"]


class JsonObjectFormat(_Strict):
    """``{"type": "json_object"}``: the answer is a JSON object."""

    type: Literal["json_object"]


class JsonSchemaResponseFormat(_Strict):
    """``{"type": "json_schema", "json_schema": {...}}``: the answer follows the schema."""

    type: Literal["json_schema"]
    json_schema: JsonSchemaFormat


ResponseFormat = Annotated[
    TextFormat | JsonObjectFormat | JsonSchemaResponseFormat, Field(discriminator="type")
]


class StreamOptions(_Strict):
    """``stream_options``: ``include_usage`` adds a last chunk with the token counts."""

    include_usage: bool = False


class GuardrailExtension(_Strict):
    """The ``guardrail`` extension field: ``policy`` picks a served policy by name (as
    ``model`` does; it wins when both are given)."""

    policy: str | None = None


class ChatCompletionRequest(_Strict):
    """``POST /v1/chat/completions``: the fields the server accepts (anything else is a 400)."""

    model: str
    messages: list[Message] = Field(..., min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool | None = None
    response_format: ResponseFormat | None = None
    stop: str | list[str] | None = Field(None, description="Stop strings (at most 16).")
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    user: str | None = None
    n: Literal[1] | None = Field(None, description="Only one choice per request.")
    guardrail: GuardrailExtension | None = None


MAX_STOPS = 16


def _data_path(data: Any, err: Mapping[str, Any]) -> tuple[Any, ...]:
    """A pydantic error's location as the keys present in the body: union member names are
    dropped; a missing or unknown field keeps its name; a bad union tag points at its key."""
    loc = tuple(err["loc"])
    path: list[Any] = []
    current = data
    for i, part in enumerate(loc):
        present = (isinstance(current, dict) and part in current) or (
            isinstance(current, list) and isinstance(part, int) and 0 <= part < len(current))
        if present:
            current = current[part]
            path.append(part)
        elif i == len(loc) - 1 and err["type"] in ("extra_forbidden", "missing"):
            path.append(part)
    if err["type"] == "union_tag_invalid":
        path.append(str((err.get("ctx") or {}).get("discriminator", "type")).strip("'"))
    return tuple(path)


def _describe(err: Mapping[str, Any], path: tuple[Any, ...]) -> str:
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "extra_forbidden":
        text = f"unknown field {str(path[-1])!r}"
        if len(path) == 1:
            allowed = ", ".join(sorted(ChatCompletionRequest.model_fields))
            text += f"; allowed fields: {allowed}"
        return text
    if kind == "union_tag_invalid":
        key = str(ctx.get("discriminator", "type")).strip("'")
        allowed = str(ctx.get("expected_tags", "")).replace("'", "")
        return f"unknown {key} {ctx.get('tag')!r}; allowed: {allowed}"
    if kind == "missing":
        return "required field is missing"
    got = err.get("input")
    shown = "" if isinstance(got, (dict, list)) else f", got {got!r:.60}"
    return f"{err['msg']}{shown}"


def parse_request(data: Any) -> ChatCompletionRequest:
    """Validate a decoded JSON body; the most specific problem becomes a 400 naming its field
    (``param``), with a message that says what is allowed."""
    if not isinstance(data, dict):
        raise ApiError(400, f"the request body must be a JSON object, got {type(data).__name__}")
    try:
        req = ChatCompletionRequest.model_validate(data)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        located = [(_data_path(data, err), err) for err in errors]
        path, err = max(located, key=lambda pe: len(pe[0]))  # first of the deepest
        param = format_path(path) if path else None
        raise ApiError(400, f"{param or 'request'}: {_describe(err, path)}", param=param) from None
    if isinstance(req.stop, list) and len(req.stop) > MAX_STOPS:
        raise ApiError(400, f"stop: at most {MAX_STOPS} stop strings", param="stop")
    return req


# ----------------------------------------------------------------------------------- responses


def completion_id() -> str:
    """A fresh ``chatcmpl-...`` id."""
    return f"chatcmpl-{uuid.uuid4().hex}"


def now() -> int:
    """The ``created`` timestamp (seconds)."""
    return int(time.time())


def usage_body(usage: Mapping[str, Any] | None) -> dict[str, int]:
    """LangChain ``usage_metadata`` as OpenAI ``usage``."""
    u = usage or {}
    prompt, completion = int(u.get("input_tokens", 0)), int(u.get("output_tokens", 0))
    return {"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": int(u.get("total_tokens", prompt + completion))}


_TRACE_KEYS = ("policy", "strategy", "backend", "model", "modes", "refused", "refusal_detector",
               "matched_rule", "replaced", "finish_reason", "tool_format", "timings")


def guardrail_trace(meta: Mapping[str, Any] | None) -> dict[str, Any]:
    """The ``guardrail`` extension: the decoding trace of ``response_metadata["guardrail"]``
    (policy, strategy, per-step modes, the refusal decision, timings when present); the
    per-step details are left out (the modes summarise them)."""
    m = meta or {}
    return {k: m[k] for k in _TRACE_KEYS if k in m}


def completion_body(*, id: str, created: int, model: str, message: dict[str, Any],
                    finish_reason: str, usage: dict[str, int],
                    trace: dict[str, Any]) -> dict[str, Any]:
    """A ``chat.completion`` object with one choice."""
    return {
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": message, "logprobs": None,
                     "finish_reason": finish_reason}],
        "usage": usage, "guardrail": trace,
    }


def chunk_body(*, id: str, created: int, model: str, delta: dict[str, Any] | None,
               finish_reason: str | None = None, usage: dict[str, int] | None = None,
               trace: dict[str, Any] | None = None,
               include_usage: bool = False) -> dict[str, Any]:
    """A ``chat.completion.chunk``; ``delta=None`` is the usage-only chunk (no choices)."""
    out: dict[str, Any] = {"id": id, "object": "chat.completion.chunk", "created": created,
                           "model": model}
    out["choices"] = [] if delta is None else [
        {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
    ]
    if include_usage:
        out["usage"] = usage
    if trace is not None:
        out["guardrail"] = trace
    return out


def sse(data: Mapping[str, Any] | str) -> bytes:
    """One server-sent event line: ``data: <json>`` and a blank line."""
    text = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False,
                                                         separators=(",", ":"))
    return f"data: {text}\n\n".encode()


DONE = sse("[DONE]")


def models_body(models: list[dict[str, Any]]) -> dict[str, Any]:
    """``GET /v1/models``: an OpenAI list of model objects."""
    return {"object": "list", "data": models}


def model_body(name: str, created: int, **extra: Any) -> dict[str, Any]:
    """One model object (a served policy)."""
    return {"id": name, "object": "model", "created": created, "owned_by": "guardrail", **extra}


__all__ = [
    "DONE", "ApiError", "ChatCompletionRequest", "GuardrailExtension", "Message", "Tool",
    "chunk_body", "completion_body", "completion_id", "error_body", "guardrail_trace",
    "model_body", "models_body", "now", "parse_request", "sse", "usage_body",
]
