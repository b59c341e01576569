"""Conversation building shared by the strategies: the deployment prompt, safety streams.

Every strategy that adds an instruction to a conversation goes through :func:`merge_system`,
so a deployment prompt, AdaCD's safety prompt and an expert's prompt are merged the same way.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from guardrail.adapters.base import Backend, Message
from guardrail.errors import ConfigError


def merge_system(
    messages: Sequence[Message], text: str | None, *, before: bool, system_role: bool = True
) -> list[dict[str, Any]]:
    """``messages`` with ``text`` merged into the leading system message (a new one if there is
    none), put ``before`` or after its content. Without a system role the text is prefixed to
    the first user turn instead, as the AdaCD reference does for Gemma-2. Empty text: a copy."""
    out = [dict(m) for m in messages]
    if not text:
        return out
    if system_role:
        if out and out[0].get("role") == "system":
            old = out[0].get("content") or ""
            out[0]["content"] = f"{text}\n\n{old}".rstrip() if before else f"{old}\n\n{text}".lstrip()
            return out
        return [{"role": "system", "content": text}, *out]
    for m in out:
        if m.get("role") == "user":
            m["content"] = f"{text}\n\n{m.get('content') or ''}"
            return out
    raise ConfigError("messages: the safety prompt needs at least one user message")


def with_system_prompt(messages: Sequence[Message], prompt: str | None) -> list[dict[str, Any]]:
    """``messages`` under a deployment system prompt (put before a leading system message)."""
    return merge_system(messages, prompt, before=True)


def add_safety_prompt(
    messages: Sequence[Message], safety_prompt: str | None, *, system_role: bool = True
) -> list[dict[str, Any]]:
    """The extreme-safety stream's messages (docs/methods.md §1.3, streams O and S): the safety
    prompt after an existing system message, or as the system message."""
    return merge_system(messages, safety_prompt, before=False, system_role=system_role)


_MARK = "\x00guardrail-system-marker\x00"


def default_system_prompt(backend: Backend) -> str | None:
    """The system text a chat template inserts when the conversation has none, or ``None``.

    Found by rendering once with a marker system message and once without, and taking what the
    no-system rendering has where the marker stands."""
    user = [{"role": "user", "content": "hi"}]
    marked = backend.render([{"role": "system", "content": _MARK}, *user])
    bare = backend.render(user)
    head, _, tail = marked.partition(_MARK)
    if not head or not bare.startswith(head) or not bare.endswith(tail):
        return None
    text = bare[len(head) : len(bare) - len(tail)]
    return text or None


def contrast_messages(
    messages: Sequence[Message], safety_prompt: str, default_system: str | None, *,
    system_role: bool = True,
) -> list[dict[str, Any]]:
    """The safety stream that differs from ``messages`` by the safety instruction alone: with no
    system message the template's default one is written out and the instruction added to it."""
    has_system = bool(messages) and messages[0].get("role") == "system"
    if system_role and not has_system and default_system:
        messages = [{"role": "system", "content": default_system}, *messages]
    return add_safety_prompt(messages, safety_prompt, system_role=system_role)


__all__ = [
    "add_safety_prompt", "contrast_messages", "default_system_prompt", "merge_system",
    "with_system_prompt",
]
