"""Streamed text assembly on the embedded model's real tokenizer."""

from __future__ import annotations

from collections.abc import Sequence

from guardrail.decoding.text import TextAssembler
from guardrail.engine import Engine


def test_incremental_text_equals_decoding_everything_on_a_real_tokenizer(engine: Engine) -> None:
    """Windowed decoding gives, token by token, exactly the text of a full decode."""
    b = engine.backend
    text = "Ünïcödé, emoji 🙂🙂 and  double  spaces; code: `kill -9 $PID`\n\ttabs. " * 8
    ids = b.tokenize(text)
    calls: list[int] = []

    def dec(xs: Sequence[int]) -> str:
        calls.append(len(xs))
        return b.detokenize(xs)

    t = TextAssembler(dec)
    out = "".join(t.push(i) for i in ids) + t.flush()
    assert out == dec(ids)
    assert max(calls[:-1]) <= TextAssembler.CONTEXT + 2  # no full re-decode per token
