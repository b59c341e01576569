"""A deterministic fake backend: a ChatML template, a ~40-word vocabulary and a table of logits.

Next-token logits depend only on a stream's tokens (:func:`next_logits`): a row of scores keyed
by the last token, plus three prompt effects so rules have something to work on:

* a topic word of the conversation (``rain``, ``cats``, ...) is what follows ``about``;
* ``kill`` in the conversation makes a refusal start (``I'm``) the top first token, narrowly;
* ``refuse`` in the conversation (the safety prompt "Please refuse to answer me!") pushes the
  refusal starts up at the first token, so a safety stream differs from the plain stream there.

Greedy answers: "Sure, here is a poem about rain." for a poem about rain, "I'm sorry I cannot
help with that." for a prompt with ``kill`` (plain), each ending in ``<|im_end|>``. With
``ponder`` in the conversation the model reasons first: ``<think> it.</think>`` and then the
answer (``template=`` gives the backend another chat template, e.g. one that knows
``</think>``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import jinja2.ext  # noqa: F401 - adapters/_template.py uses jinja2.ext without importing it
import numpy as np
from guardrail.adapters._template import render_chat_template
from guardrail.adapters.base import Backend, GuardedStreams, Message
from numpy.typing import NDArray

from guardrail.errors import BackendError, ConfigError

SPECIAL = ("<|im_start|>", "<|im_end|>", "<|endoftext|>")
VOCAB = (
    *SPECIAL, "<unk>", "system", "user", "assistant", ",", ".", "!", "?",
    "Sure", "here", "is", "a", "poem", "about", "it", "I'm", "Sorry", "sorry", "I", "cannot",
    "help", "with", "that", "Please", "refuse", "to", "answer", "me", "Write", "Tell", "How",
    "do", "kill", "process", "rain", "cats", "bread", "<think>", "</think>", "ponder",
)
ID = {w: i for i, w in enumerate(VOCAB)}
TOPICS = ("rain", "cats", "bread", "process")
END = ("<|im_end|>", "<|endoftext|>")

#: Scores of the next token given the last one; a token not listed ends the sentence.
TABLE: dict[str, dict[str, float]] = {
    "assistant": {"Sure": 3.0, "I'm": 2.0, "Sorry": 1.0},
    "Sure": {",": 3.0, "!": 1.0},
    ",": {"here": 3.0},
    "here": {"is": 3.0},
    "is": {"a": 3.0},
    "a": {"poem": 3.0},
    "poem": {"about": 3.0},
    "about": {"it": 1.0},  # a topic word of the conversation scores 4 more
    "I'm": {"sorry": 3.0},
    "Sorry": {"I": 3.0},
    "sorry": {"I": 3.0},
    "I": {"cannot": 3.0},
    "cannot": {"help": 3.0},
    "help": {"with": 3.0},
    "with": {"that": 3.0},
    ".": {"<|im_end|>": 5.0, "Sure": 1.0},  # "Sure" runs on when end-of-turn is masked
}
DEFAULT_ROW = {".": 3.0}

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
_PIECE = re.compile(r"<\|\w+\|>|</?think>|[\w']+|[^\w\s]")
_TEXT_PIECE = re.compile(r"[\w']+|[^\w\s]")  # special parsing off: ``<|im_end|>`` is 5 pieces


def next_logits(tokens: Sequence[int]) -> NDArray[np.float32]:
    """The fake model: next-token logits ``[vocab]`` of a stream holding ``tokens``."""
    words = {VOCAB[t] for t in tokens}
    last = VOCAB[tokens[-1]]
    if last == "</think>":  # the answer after the reasoning starts like any answer
        last = "assistant"
    z = np.zeros(len(VOCAB), dtype=np.float32)
    for w, score in TABLE.get(last, DEFAULT_ROW).items():
        z[ID[w]] += score
    if last == "about":
        for topic in TOPICS:
            if topic in words:
                z[ID[topic]] += 4.0
    if "ponder" in words and "<think>" not in words and last == "assistant":
        z[ID["<think>"]] += 6.0  # a reasoning model: it opens a reasoning section
    if last == "<think>":
        z[ID["it"]] += 5.0
    if last == "." and "<think>" in words and "</think>" not in words:
        z[ID["</think>"]] += 10.0  # the reasoning is one sentence
    if last == "assistant":
        if "kill" in words:
            z[ID["I'm"]] += 1.5
        if "refuse" in words:
            z[ID["I'm"]] += 3.0
            z[ID["Sorry"]] += 2.0
    return z


class FakeStreams(GuardedStreams):
    """Streams of the fake model (the base checks every call); the backend records every
    ``keep`` and live count."""

    def __init__(self, backend: FakeBackend, prompts: Sequence[Sequence[int]]):
        super().__init__(len(prompts))
        self._b = backend
        self._seqs = [list(p) for p in prompts]
        backend.live_log.append(len(self._seqs))

    def _logits(self) -> NDArray[np.float32]:
        return np.stack([next_logits(s) for s in self._seqs]).astype(np.float32)

    def _append(self, tokens: Sequence[int]) -> None:
        if any(len(s) >= self._b.n_ctx for s in self._seqs):
            raise BackendError(f"append: a stream is full (n_ctx={self._b.n_ctx})")
        for s, t in zip(self._seqs, tokens):
            s.append(int(t))
        self._b.live_log.append(len(self._seqs))
        if self._b.step_s:
            time.sleep(self._b.step_s)  # a model that takes time per step

    def _keep(self, indices: list[int]) -> None:
        self._b.keeps.append(indices)
        self._seqs = [self._seqs[i] for i in indices]

    def _lengths(self) -> list[int]:
        return [len(s) for s in self._seqs]

    @property
    def can_add(self) -> bool:
        return self._b.addable

    def _add(self, prompts: Sequence[Sequence[int]]) -> Iterator[int]:
        if not self._b.addable:
            raise NotImplementedError("this fake backend was made without add")
        total = sum(len(p) for p in prompts)
        for start in range(0, total, self._b.chunk):  # "prefill" in chunks, like llama.cpp
            yield min(self._b.chunk, total - start)
        self._seqs += [list(p) for p in prompts]
        self._b.live_log.append(len(self._seqs))

    def _close(self) -> None:
        self._seqs = []


class FakeBackend(Backend):
    """The fake model behind the :class:`Backend` protocol.

    ``opens`` counts :meth:`open` calls (batches), ``live_log`` holds the live streams at the
    prefill and after every append, ``keeps`` every ``keep`` call's indices.
    """

    name = "fake"

    def __init__(self, *, n_ctx: int = 512, max_streams: int = 64, addable: bool = True,
                 chunk: int = 8, step_s: float = 0.0, template: str | None = None):
        self.template = template or CHATML
        self._n_ctx, self._max_streams = n_ctx, max_streams
        self.addable, self.chunk = addable, chunk  # streams can join a running batch
        self.step_s = step_s
        self.opens = 0
        self.live_log: list[int] = []
        self.keeps: list[list[int]] = []

    @property
    def model_name(self) -> str:
        return "fake-chatml"

    @property
    def vocab_size(self) -> int:
        return len(VOCAB)

    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    @property
    def can_add_streams(self) -> bool:
        return self.addable

    @property
    def max_streams(self) -> int:
        return self._max_streams

    @property
    def end_of_turn_ids(self) -> frozenset[int]:
        return frozenset(ID[w] for w in END)

    @property
    def chat_template(self) -> str:
        return self.template

    def render(
        self,
        messages: Sequence[Message],
        *,
        tools: Sequence[Mapping[str, Any]] | None = None,
        add_generation_prompt: bool = True,
    ) -> str:
        return render_chat_template(self.template, messages, tools=tools,
                                    add_generation_prompt=add_generation_prompt)

    def tokenize(self, text: str) -> list[int]:
        return [ID.get(p, ID["<unk>"]) for p in _PIECE.findall(text)]

    def tokenize_text(self, text: str) -> list[int]:
        return [ID.get(p, ID["<unk>"]) for p in _TEXT_PIECE.findall(text)]

    @property
    def parsed_special_strings(self) -> frozenset[str]:
        return frozenset(SPECIAL)

    def detokenize(self, ids: Sequence[int]) -> str:
        out = ""
        for w in (VOCAB[i] for i in ids if VOCAB[i] not in SPECIAL):
            out += f" {w}" if out and (w[0].isalnum() or w == "<unk>") else w
        return out

    def open(self, prompts: Sequence[Sequence[int]]) -> FakeStreams:
        if not prompts or len(prompts) > self.max_streams:
            raise ConfigError(f"open: {len(prompts)} streams (1..{self.max_streams} allowed)")
        if any(len(p) >= self.n_ctx for p in prompts):
            raise ConfigError(f"open: a prompt does not fit n_ctx={self.n_ctx}")
        self.opens += 1
        return FakeStreams(self, prompts)

    def greedy(self, prompt: Sequence[int], n: int) -> list[int]:
        """The argmax chain of the table: ``n`` tokens after ``prompt`` (end-of-turn included)."""
        seq, out = list(prompt), []
        while len(out) < n:
            out.append(int(np.argmax(next_logits(seq))))
            seq.append(out[-1])
            if out[-1] in self.end_of_turn_ids:
                break
        return out
