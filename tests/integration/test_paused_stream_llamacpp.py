"""The issue's reproduction on the embedded model: a paused stream, then an invoke in the same
thread; the stream's answer is the one it gives alone (it used to come back corrupted)."""

from __future__ import annotations

import pytest

from guardrail import GuardedChatModel

pytest.importorskip("llama_cpp")

Q = "Count from 1 to 4, one number per line."


def test_paused_stream_then_invoke_in_the_same_thread() -> None:
    llm = GuardedChatModel(policy="plain", backend="llamacpp", n_threads=1, max_new_tokens=12)
    alone = "".join(str(c.content) for c in llm.stream(Q))
    it = llm.stream(Q)
    head = [str(next(it).content) for _ in range(3)]
    other = llm.invoke("Say hi.")
    assert other.content
    assert "".join(head) + "".join(str(c.content) for c in it) == alone
