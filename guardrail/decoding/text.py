"""Turn generated token ids into streamed text: UTF-8-safe deltas and stop strings."""

from __future__ import annotations

from collections.abc import Callable, Sequence


class TextAssembler:
    """Accumulates token ids and releases text that is final.

    Text is held back while it ends in an incomplete UTF-8 sequence or could be the start of a
    stop string, so a stop string never leaks into the streamed output.
    """

    CONTEXT = 6  # tokens decoded before the new ones, so word-initial spaces come out right

    def __init__(self, detokenize: Callable[[Sequence[int]], str], stop: Sequence[str] = ()):
        self._detokenize = detokenize
        self._stop = tuple(s for s in stop if s)
        self.ids: list[int] = []
        self.text = ""  # text released so far
        self.stopped_by: str | None = None
        self._head = ""  # text of ids[:_anchor], final
        self._anchor = 0
        self._ctx = 0  # ids[_ctx:_anchor] are decoded again as context for the new tokens
        self._ctx_text = ""

    def _full(self) -> str:
        """Text of all ids, decoding only the tokens since the last complete text (plus a few
        before them), so a long answer costs O(1) per token, not O(length)."""
        window = self._detokenize(self.ids[self._ctx :])
        if not window.startswith(self._ctx_text):  # a tokenizer that rewrites earlier text
            return self._detokenize(self.ids)
        return self._head + window[len(self._ctx_text) :]

    def push(self, token: int) -> str:
        """Add one token; return the newly released text (possibly empty)."""
        self.ids.append(token)
        full = self._full()
        if full.endswith("\ufffd"):
            return ""
        self._head, self._anchor = full, len(self.ids)
        self._ctx = max(0, self._anchor - self.CONTEXT)
        self._ctx_text = self._detokenize(self.ids[self._ctx : self._anchor])
        end = len(full)
        if self._stop:
            hits = [(full.find(s, max(0, len(self.text) - len(s))), s) for s in self._stop]
            hits = [(i, s) for i, s in hits if i >= 0]
            if hits:
                end, self.stopped_by = min(hits)
            else:
                end -= self._held_back(full)
        delta = full[len(self.text) : end] if end > len(self.text) else ""
        self.text += delta
        return delta

    def flush(self) -> str:
        """Release what was held back (generation ended without a stop string)."""
        if self.stopped_by is not None:
            return ""
        full = self._full().rstrip("\ufffd")
        delta = full[len(self.text) :]
        self.text += delta
        return delta

    def _held_back(self, full: str) -> int:
        """Length of the longest suffix of ``full`` that is a proper prefix of a stop string."""
        best = 0
        for s in self._stop:
            for k in range(min(len(s) - 1, len(full)), best, -1):
                if full.endswith(s[:k]):
                    best = k
                    break
        return best
