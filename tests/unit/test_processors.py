"""The loop's logits-processor stage on a tiny fake backend: MinNewTokens, call order, arguments."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pytest
from numpy.typing import NDArray

from guardrail.adapters.base import Backend, Message, Streams
from guardrail.decoding.loop import FinishEvent, GenerationRequest, decode
from guardrail.decoding.processors import LogitsProcessor, MinNewTokens
from guardrail.decoding.rules import PlainRule, StepInfo

V = 6
EOT = 5


class _TableStreams(Streams):
    """Each stream's next-token logits are ``table[last token]``: fully predictable."""

    def __init__(self, table: NDArray[np.float32], prompts: Sequence[Sequence[int]]) -> None:
        self.table = table
        self.seqs = [list(p) for p in prompts]

    @property
    def n_live(self) -> int:
        return len(self.seqs)

    def logits(self) -> NDArray[np.float32]:
        return np.stack([self.table[s[-1]] for s in self.seqs]).astype(np.float32)

    def append(self, tokens: Sequence[int]) -> None:
        for s, t in zip(self.seqs, tokens, strict=True):
            s.append(t)

    def keep(self, indices: Sequence[int]) -> None:
        self.seqs = [self.seqs[i] for i in indices]

    def lengths(self) -> list[int]:
        return [len(s) for s in self.seqs]

    def close(self) -> None:
        self.seqs = []


class _TableBackend(Backend):
    """A model whose every token is the letter ``"abcde"[id]``; token 5 ends the turn."""

    name = "table"

    def __init__(self, table: NDArray[np.float32]) -> None:
        self.table = table

    @property
    def model_name(self) -> str:
        return "table"

    @property
    def vocab_size(self) -> int:
        return V

    @property
    def n_ctx(self) -> int:
        return 64

    @property
    def end_of_turn_ids(self) -> frozenset[int]:
        return frozenset({EOT})

    @property
    def chat_template(self) -> str | None:
        return None

    def render(
        self, messages: Sequence[Message], *, tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        return "".join(str(m["content"]) for m in messages)

    def tokenize(self, text: str) -> list[int]:
        return ["abcde".index(c) for c in text]

    def detokenize(self, ids: Sequence[int]) -> str:
        return "".join("abcde"[i] for i in ids if i != EOT)

    def open(self, prompts: Sequence[Sequence[int]]) -> Streams:
        return _TableStreams(self.table, prompts)


def _table(eot_after: int) -> NDArray[np.float32]:
    """After token ``t`` the model prefers ``t + 1`` (so a, b, c, ...); after ``eot_after`` it
    prefers the end of turn, with ``eot_after + 1`` second."""
    table = np.zeros((V, V), dtype=np.float32)
    for t in range(V):
        table[t, min(t + 1, EOT)] = 2.0
    table[eot_after, EOT] = 3.0
    table[eot_after, eot_after + 1] = 2.5
    return table


def _run(req: GenerationRequest, table: NDArray[np.float32]) -> FinishEvent:
    [fin] = [e for e in decode(_TableBackend(table), [req]) if isinstance(e, FinishEvent)]
    return fin


def test_min_new_tokens_masks_end_of_turn_only_before_n() -> None:
    z = np.arange(V, dtype=np.float32)
    mask = MinNewTokens([EOT], 2)
    early = mask(z, [0], 1, z)
    assert early[EOT] == -np.inf
    np.testing.assert_array_equal(early[:EOT], z[:EOT])
    assert z[EOT] == EOT  # the input is not modified in place
    assert mask(z, [0, 1], 2, z) is z  # from step n on, nothing changes
    assert isinstance(mask, LogitsProcessor)


def test_min_new_tokens_field_still_delays_the_end_of_turn() -> None:
    table = _table(eot_after=1)
    plain = _run(GenerationRequest([[0]], PlainRule(), max_new_tokens=8), table)
    assert plain.token_ids == [1, EOT] and plain.reason == "stop"
    held = _run(GenerationRequest([[0]], PlainRule(), max_new_tokens=8, min_new_tokens=2), table)
    assert held.token_ids == [1, 2, 3, 4, EOT]  # step 1 could not end; later steps could
    assert held.text == "bcde"


class _Recorder:
    """Records what the loop passes; optionally forces one token at one step."""

    def __init__(self, force: dict[int, int] | None = None) -> None:
        self.calls: list[tuple[list[int], int, NDArray[np.float32], NDArray[np.float32]]] = []
        self.force = force or {}

    def __call__(
        self, logits: NDArray[np.float32], generated_ids: Sequence[int], step: int,
        answer_logits: NDArray[np.float32],
    ) -> NDArray[np.float32]:
        self.calls.append((list(generated_ids), step, logits.copy(), answer_logits.copy()))
        if step in self.force:
            out = np.full_like(logits, -np.inf)
            out[self.force[step]] = 0.0
            return out
        return logits


class _Shifted:
    """A rule whose final logits differ from the answer stream's (so the two can be told apart)."""

    name = "shifted"
    n_streams = 1

    def combine(
        self, logits: NDArray[np.float32], step: int
    ) -> tuple[NDArray[np.float32], StepInfo | None]:
        return logits[0] + 100.0, None

    def streams_needed(self, step: int) -> int:
        return 1


def test_processors_get_rule_logits_generated_ids_step_and_answer_row() -> None:
    table = _table(eot_after=3)
    rec = _Recorder()
    fin = _run(GenerationRequest([[0]], _Shifted(), max_new_tokens=8, processors=[rec]), table)
    assert fin.token_ids == [1, 2, 3, EOT]
    assert [(ids, step) for ids, step, _, _ in rec.calls] == [
        ([], 0), ([1], 1), ([1, 2], 2), ([1, 2, 3], 3),
    ]
    for ids, _, z, answer in rec.calls:
        last = ids[-1] if ids else 0
        np.testing.assert_array_equal(answer, table[last])  # raw answer-stream row
        np.testing.assert_array_equal(z, table[last] + 100.0)  # the rule's output


def test_processors_run_in_order_and_before_min_new_tokens() -> None:
    table = _table(eot_after=1)
    first = _Recorder(force={0: 1})
    second = _Recorder()
    fin = _run(
        GenerationRequest([[0]], PlainRule(), max_new_tokens=8, min_new_tokens=2,
                          processors=[first, second]),
        table,
    )
    # The second processor sees the first one's output ...
    z0 = second.calls[0][2]
    assert z0[1] == 0.0 and np.isneginf(np.delete(z0, 1)).all()
    # ... and the end-of-turn mask of min_new_tokens comes after both (step 1 < 2).
    assert second.calls[1][0] == [1]
    assert second.calls[1][2][EOT] == 3.0
    assert fin.token_ids == [1, 2, 3, 4, EOT]


def test_a_processor_cannot_break_other_requests_of_the_batch() -> None:
    table = _table(eot_after=2)
    rec = _Recorder(force={0: 4})
    backend = _TableBackend(table)
    events = list(decode(backend, [
        GenerationRequest([[0]], PlainRule(), max_new_tokens=8, processors=[rec]),
        GenerationRequest([[0]], PlainRule(), max_new_tokens=8),
    ]))
    fins = {e.request: e for e in events if isinstance(e, FinishEvent)}
    assert fins[0].token_ids == [4, EOT]
    assert fins[1].token_ids == [1, 2, EOT]
    assert [ids for ids, *_ in rec.calls] == [[], [4]]


@pytest.mark.parametrize("n", [0, 1])
def test_no_mask_is_added_without_min_new_tokens(n: int) -> None:
    table = _table(eot_after=0)
    fin = _run(GenerationRequest([[0]], PlainRule(), max_new_tokens=4, min_new_tokens=n), table)
    assert fin.token_ids == ([EOT] if n == 0 else [1, 2, 3, 4])
