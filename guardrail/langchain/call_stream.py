"""Tool calls streamed while their JSON decodes, as LangChain ``tool_call_chunks``.

A call opens a chunk (its ``name``, ``id`` and ``index``) as soon as the answer has written
``{"name": "<a bound tool>", "arguments": {`` (``"parameters"`` in the Llama-3.1 format), and
every later token adds the arguments' new text to that index, the way OpenAI-style providers
stream. Merged by LangChain (``chunk + chunk``), the chunks' arguments are the model's own
text for the call; ``AIMessageChunk`` parses them into ``tool_calls``.

What a consumer can rely on: the merged stream has the same calls, names, ids and arguments as
``invoke``. A call whose JSON turns out not to parse (cut off by ``max_tokens``, a malformed
block) cannot be taken back once streamed: its last chunk adds closing text that can never
parse (the open strings and brackets closed, then one ``}`` too many), so the merged stream
reports it in ``invalid_tool_calls`` as ``invoke`` does, instead of a call repaired by partial
JSON parsing. A call written in another shape (arguments first, arguments as a string, an
unknown tool) is not streamed: it arrives whole in the last chunk, as before.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field

from langchain_core.messages import InvalidToolCall, ToolCall, ToolCallChunk
from langchain_core.messages.tool import tool_call_chunk

from guardrail.langchain.tool_calls import (
    PYTHON_TAG,
    TOOL_CALL_CLOSE,
    TOOL_CALL_OPEN,
    ParsedOutput,
    ToolFormat,
    new_call_id,
)

logger = logging.getLogger("guardrail.tools")

CUT = "\x1f"
"""Where a streamed call that did not parse was cut: JSON text never holds this character raw
(control characters must be escaped), so it marks the end of the model's own text."""


def streamed_text(args: str) -> str:
    """The model's own text of a streamed call's merged arguments (without an unparseable
    end added after it)."""
    return args.rsplit(CUT, 1)[0] if CUT in args else args


_HEADER = re.compile(
    r'\s*\{\s*"name"\s*:\s*"([A-Za-z0-9_.-]{1,64})"\s*,\s*"(?:arguments|parameters)"\s*:\s*'
)


@dataclass
class JsonScan:
    """Where a JSON value that starts with ``{`` ends, read a piece at a time (strings,
    escapes and nesting tracked; the value is not validated, the final parse does that)."""

    pos: int = 0  # characters read
    stack: list[str] = field(default_factory=list)
    in_string: bool = False
    escaped: bool = False
    end: int | None = None  # one past the value's closing brace, once read

    def feed(self, text: str) -> int | None:
        """Read ``text[self.pos:]`` (``text`` grows between calls); the value's end, if read."""
        while self.end is None and self.pos < len(text):
            ch = text[self.pos]
            self.pos += 1
            if self.in_string:
                if self.escaped:
                    self.escaped = False
                elif ch == "\\":
                    self.escaped = True
                elif ch == '"':
                    self.in_string = False
            elif ch == '"':
                self.in_string = True
            elif ch in "{[":
                self.stack.append(ch)
            elif ch in "}]":
                if self.stack:
                    self.stack.pop()
                if not self.stack:
                    self.end = self.pos
        return self.end

    def unparseable_end(self) -> str:
        """:data:`CUT`, then text that closes what is open and one brace too many: appended to
        a streamed value, the whole can never parse, even by partial JSON parsing, and
        :func:`streamed_text` gives back what the model wrote."""
        closing = ("n" if self.escaped else "") + ('"' if self.in_string else "")
        closing += "".join("}" if b == "{" else "]" for b in reversed(self.stack))
        return CUT + closing + "}"


@dataclass
class _Streamed:
    id: str
    name: str
    start: int  # where the arguments' text starts in the answer
    scan: JsonScan = field(default_factory=JsonScan)
    sent: int = 0  # characters of the arguments' text streamed so far

    def text(self, answer: str) -> str:
        return answer[self.start : self.start + self.sent]


class CallStream:
    """The tool-call chunks of one answer, computed from its text as it grows.

    Args:
        fmt: the template's call format (``hermes`` blocks or a ``llama3`` JSON answer).
        names: the bound tools' names; a call to any other name is not streamed.
    """

    def __init__(self, fmt: ToolFormat, names: list[str]) -> None:
        self.fmt = fmt
        self.names = frozenset(names)
        self.calls: dict[int, _Streamed] = {}  # by the call's place in the answer
        self._skip: set[int] = set()

    def _bodies(self, answer: str) -> list[tuple[int, int]]:
        """(start, end) of each call's text so far, in order."""
        if self.fmt == "llama3":
            s = len(answer) - len(answer.lstrip())
            if answer.startswith(PYTHON_TAG, s):
                s += len(PYTHON_TAG)
            return [(s, len(answer))] if answer[s:].lstrip().startswith("{") else []
        out, pos = [], 0
        while (i := answer.find(TOOL_CALL_OPEN, pos)) >= 0:
            start = i + len(TOOL_CALL_OPEN)
            end = answer.find(TOOL_CALL_CLOSE, start)
            out.append((start, len(answer) if end < 0 else end))
            if end < 0:
                break
            pos = end + len(TOOL_CALL_CLOSE)
        return out

    def update(self, answer: str) -> list[ToolCallChunk]:
        """Chunks for what ``answer`` (the whole text so far) added since the last call."""
        out: list[ToolCallChunk] = []
        for j, (start, end) in enumerate(self._bodies(answer)):
            if j in self._skip:
                continue
            call = self.calls.get(j)
            if call is None:
                m = _HEADER.match(answer, start, end)
                if m is None:
                    continue
                if m.group(1) not in self.names:
                    self._skip.add(j)
                    continue
                if m.end() == end:  # the arguments have not started yet
                    continue
                if answer[m.end()] != "{":  # arguments as a string, or not an object
                    self._skip.add(j)
                    continue
                call = self.calls[j] = _Streamed(new_call_id(), m.group(1), m.end())
            args = answer[call.start : end]
            stop = call.scan.feed(args)
            limit = len(args) if stop is None else stop
            delta = args[call.sent : limit]
            first = call.sent == 0
            call.sent = limit
            if first:
                out.append(tool_call_chunk(name=call.name, args=delta, id=call.id, index=j))
            elif delta:
                out.append(tool_call_chunk(args=delta, index=j))
        return out

    def finish(self, answer: str, parsed: ParsedOutput) -> list[ToolCallChunk]:
        """The last chunks: what the final tokens added, every call not streamed (whole), and
        for a streamed call that did not parse, its unparseable end. The parsed calls take the
        streamed ids, so ``invoke`` and the merged stream name the same calls."""
        out = self.update(answer)
        for j, call in enumerate(parsed.in_order):
            streamed = self.calls.get(j)
            if streamed is None:
                out.append(_whole(call, j))
                continue
            call["id"] = streamed.id
            if not _same_call(call, streamed, answer):
                if call.get("type") == "tool_call":
                    logger.warning("tool call %d: the streamed arguments differ from the "
                                   "parsed ones; the merged stream reports it invalid", j)
                out.append(tool_call_chunk(args=streamed.scan.unparseable_end(), index=j))
        return out


def _same_call(call: ToolCall | InvalidToolCall, streamed: _Streamed, answer: str) -> bool:
    """Whether the merged chunks of ``streamed`` parse to ``call`` (a valid call)."""
    if call.get("type") != "tool_call" or streamed.scan.end is None:
        return False
    try:
        args = json.loads(streamed.text(answer))
    except json.JSONDecodeError:
        return False
    return call["name"] == streamed.name and args == call["args"]


def _whole(call: ToolCall | InvalidToolCall, index: int) -> ToolCallChunk:
    """One chunk with the whole call. An invalid call's raw text must not be "repaired" by
    partial JSON parsing when chunks are merged, so it carries the raw output, tag included."""
    if call.get("type") == "tool_call":
        return tool_call_chunk(name=call["name"], args=json.dumps(call["args"],
                               ensure_ascii=False), id=call["id"], index=index)
    return tool_call_chunk(name=call.get("name"), args=f"{TOOL_CALL_OPEN}{call.get('args') or ''}",
                           id=call.get("id"), index=index)


__all__ = ["CUT", "CallStream", "JsonScan", "streamed_text"]
