"""Preference pairs: what `guardrail train preferences` writes and `train experts|porover` read.

One JSON object per line (:class:`PreferencePair`). How pairs are made from over-generated
answers (:func:`make_pairs`), every filter named:

* error rows (the prompt did not fit the model), empty answers, and answers a policy blocked
  (no text to learn from) are dropped;
* identical answer texts (after stripping whitespace) count once, keeping the first teacher's;
* a **harmful** prompt (label ``unsafe``) gives safety pairs: a refusal preferred to a
  compliance. Its answers' score is ``P(refusal)`` (higher = safer);
* a **harmless** prompt (label ``safe``) gives helpfulness pairs: a non-refusal preferred to a
  refusal. Its answers' score is ``1 − P(refusal)`` (higher = more helpful);
* a prompt whose answers are all refusals or all compliances gives no pair;
* at most ``per_prompt`` pairs per prompt: chosen and rejected answers are each ranked by score
  (most confident first, then teacher order) and paired rank with rank first (the best with
  the worst-scored, the second with the second, ...), then the remaining combinations.

``P(refusal)`` is the refusal probe's probability with ``detector: probe``; with a keyword or
judge detector it is 1 for a refusal and 0 otherwise (every margin is then 1).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import product
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from guardrail.errors import ConfigError

Expert = Literal["safety", "helpfulness"]


class AnswerSource(BaseModel):
    """Where an answer came from: the teacher policy, its sampling seed, the detector's call."""

    model_config = ConfigDict(extra="forbid")

    teacher: str
    seed: int | None = None
    refused: bool
    p_refusal: float = Field(ge=0, le=1)
    detector: str


class PreferencePair(BaseModel):
    """A prompt, a preferred and a dispreferred answer, the expert it trains, and the scores
    whose gap is SPE-DPO's margin (docs/training.md)."""

    model_config = ConfigDict(extra="forbid")

    id: str = Field(description="Dataset row id of the prompt, then '#k' for its k-th pair.")
    prompt: str = Field(min_length=1)
    label: Literal["safe", "unsafe"]
    chosen: str = Field(min_length=1)
    rejected: str = Field(min_length=1)
    expert: Expert
    score_chosen: float = Field(ge=0, le=1)
    score_rejected: float = Field(ge=0, le=1)
    chosen_from: AnswerSource
    rejected_from: AnswerSource

    @property
    def margin(self) -> float:
        """SPE-DPO's margin ``max(0, s_w − s_l)`` (eq. S)."""
        return max(0.0, self.score_chosen - self.score_rejected)


@dataclass(frozen=True)
class Answer:
    """One over-generated answer to a prompt and how the detector decided it."""

    text: str
    source: AnswerSource


def _score(answer: Answer, harmful: bool) -> float:
    p = answer.source.p_refusal
    return p if harmful else 1.0 - p


def make_pairs(
    pid: str, prompt: str, label: str, answers: Sequence[Answer], *, per_prompt: int = 2
) -> list[PreferencePair]:
    """The pairs of one prompt by the rules in this module's docstring."""
    if per_prompt < 1:
        raise ConfigError(f"--pairs-per-prompt must be at least 1, got {per_prompt}")
    harmful = label == "unsafe"
    seen: set[str] = set()
    unique: list[tuple[int, Answer]] = []
    for order, a in enumerate(answers):
        key = a.text.strip()
        if key and key not in seen:
            seen.add(key)
            unique.append((order, a))
    good = [(o, a) for o, a in unique if a.source.refused == harmful]
    bad = [(o, a) for o, a in unique if a.source.refused != harmful]
    if not good or not bad:
        return []
    good.sort(key=lambda oa: (-_score(oa[1], harmful), oa[0]))
    bad.sort(key=lambda oa: (_score(oa[1], harmful), oa[0]))
    grid = sorted(product(range(len(good)), range(len(bad))),
                  key=lambda ij: (ij[0] != ij[1], ij[0] + ij[1], ij[0]))
    out = []
    for k, (i, j) in enumerate(grid[:per_prompt]):
        w, lo = good[i][1], bad[j][1]
        out.append(PreferencePair(
            id=f"{pid}#{k}", prompt=prompt, label=label,  # type: ignore[arg-type]
            chosen=w.text, rejected=lo.text,
            expert="safety" if harmful else "helpfulness",
            score_chosen=_score(w, harmful), score_rejected=_score(lo, harmful),
            chosen_from=w.source, rejected_from=lo.source,
        ))
    return out


def write_pairs(pairs: Iterable[PreferencePair], path: str | Path) -> Path:
    """Write pairs as JSONL (atomically: a temporary file renamed into place)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for pair in pairs:
            f.write(pair.model_dump_json() + "\n")
    tmp.replace(p)
    return p


def read_pairs(path: str | Path, *, expert: Expert | None = None) -> list[PreferencePair]:
    """Pairs from a JSONL file (all, or one expert's); errors name the file and the line."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"--pairs: no such file: {str(p)!r}")
    out = []
    for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(PreferencePair.model_validate(json.loads(line)))
        except json.JSONDecodeError as e:
            raise ConfigError(f"{str(p)!r} line {n}: not JSON ({e.msg})") from None
        except ValidationError as e:
            err = e.errors()[0]
            where = ".".join(str(x) for x in err["loc"]) or "(row)"
            raise ConfigError(f"{str(p)!r} line {n}: field {where!r}: {err['msg']} (a pair "
                              "needs id, prompt, label, chosen, rejected, expert, scores and "
                              "sources; see docs/training.md)") from None
    if expert is not None:
        out = [q for q in out if q.expert == expert]
    return out
