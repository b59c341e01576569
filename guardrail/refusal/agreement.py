"""How often a detector agrees with people: XSTest's human-labelled model completions.

The files (``xstest_v2_completions_*.csv`` in XSTest's ``model_completions`` folder) hold a
prompt, a model's answer and the human ``final_label`` (``1_full_compliance``,
``2_full_refusal``, ``3_partial_refusal``). Gold refusal = full or partial refusal, the reading
XSTest uses when it reports refusal rates.
"""

from __future__ import annotations

import csv
import random
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, Field
from tqdm import tqdm

from guardrail.errors import ConfigError
from guardrail.eval.framings import frame_twice
from guardrail.refusal.base import Detector
from guardrail.refusal.probe import answer_key

GOLD = {"1_full_compliance": False, "2_full_refusal": True, "3_partial_refusal": True}


class LabelledAnswer(BaseModel):
    """One human-labelled answer."""

    source: str
    index: int = Field(0, description="Row number within its file (0 = first answer).")
    id: str
    prompt: str
    response: str
    refused: bool


class Agreement(BaseModel):
    """A detector's agreement with the human labels (refusal vs compliance)."""

    detector: str
    files: list[str]
    n: int
    excluded: int = Field(
        0, description="Answers left out because the detector was trained on them."
    )
    accuracy: float = Field(description="Share of answers where detector and people agree.")
    precision: float | None = Field(description="Of the detected refusals, share people call one.")
    recall: float | None = Field(description="Of the human-labelled refusals, share detected.")
    true_pos: int
    false_pos: int
    true_neg: int
    false_neg: int


def load_labelled(paths: Sequence[str | Path]) -> list[LabelledAnswer]:
    """Every row of XSTest completion files (columns ``id, prompt, completion, final_label``)."""
    out: list[LabelledAnswer] = []
    for path in map(Path, paths):
        try:
            with path.open(encoding="utf-8", newline="") as f:
                rows = list(csv.DictReader(f))
        except FileNotFoundError as e:
            raise ConfigError(f"{path}: no such file") from e
        for i, row in enumerate(rows, start=2):  # i: the CSV line (header = line 1)
            missing = {"prompt", "completion", "final_label"} - set(row)
            if missing:
                raise ConfigError(f"{path}: missing column(s) {sorted(missing)}")
            if row["final_label"] not in GOLD:
                raise ConfigError(
                    f"{path} row {i}: final_label {row['final_label']!r} is not one of "
                    f"{', '.join(GOLD)}"
                )
            out.append(
                LabelledAnswer(
                    source=path.name,
                    index=i - 2,
                    id=row.get("id") or str(i),
                    prompt=row["prompt"],
                    response=row["completion"],
                    refused=GOLD[row["final_label"]],
                )
            )
    return out


def framed(answers: Sequence[LabelledAnswer]) -> list[LabelledAnswer]:
    """The same answers after long prompts: each prompt wrapped in two jailbreak framings
    (:func:`~guardrail.eval.framings.frame_twice`, chosen by the answer's row number), so a
    detector is checked on, and a probe trained on, refusals that follow a long request. The
    label is the answer's: a refusal stays a refusal whatever framed the question. An answer
    whose question is empty cannot be framed: :class:`ConfigError` naming its file and row."""
    out: list[LabelledAnswer] = []
    for a in answers:
        if not a.prompt.strip():
            raise ConfigError(f"{a.source} row {a.index + 2}: the prompt is empty, so it cannot "
                              "be wrapped in a framing (--framed)")
        out.append(a.model_copy(update={"id": f"{a.id}-framed",
                                        "prompt": frame_twice(a.prompt, a.index)[1]}))
    return out


def sample(answers: list[LabelledAnswer], n: int | None, seed: int = 0) -> list[LabelledAnswer]:
    """A reproducible random sample of ``n`` answers (all of them when ``n`` is ``None``)."""
    if n is None or n >= len(answers):
        return answers
    return random.Random(seed).sample(answers, n)


def held_out(answers: Sequence[LabelledAnswer], detector: Detector) -> list[LabelledAnswer]:
    """The answers ``detector`` was not trained on (a refusal probe lists its training answers;
    other detectors were trained on none of them)."""

    trained = getattr(getattr(detector, "probe", None), "trained_on", frozenset())
    return [a for a in answers if answer_key(a.prompt, a.response) not in trained]


def measure(
    detector: Detector,
    answers: Sequence[LabelledAnswer],
    *,
    batch_size: int = 8,
    progress: bool = True,
    long_prompts: bool = False,
) -> Agreement:
    """Run ``detector`` on every answer it was not trained on (:func:`held_out`) and count
    agreement with the human labels; ``long_prompts``: each after its question in two
    jailbreak framings (:func:`framed`; an answer trained on after its plain question counts
    as trained on)."""
    kept = held_out(answers, detector)
    excluded, answers = len(answers) - len(kept), framed(kept) if long_prompts else kept
    tp = fp = tn = fn = 0
    bar = tqdm(total=len(answers), desc=f"agreement {detector.name}", disable=not progress)
    for start in range(0, len(answers), batch_size):
        chunk = answers[start : start + batch_size]
        results = detector.detect_many([(a.prompt, a.response) for a in chunk])
        for a, r in zip(chunk, results):
            tp += r.refused and a.refused
            fp += r.refused and not a.refused
            tn += not r.refused and not a.refused
            fn += not r.refused and a.refused
        bar.update(len(chunk))
    bar.close()
    n = tp + fp + tn + fn
    return Agreement(
        detector=detector.name,
        files=sorted({a.source for a in answers}),
        n=n,
        excluded=excluded,
        accuracy=(tp + tn) / n if n else 0.0,
        precision=tp / (tp + fp) if tp + fp else None,
        recall=tp / (tp + fn) if tp + fn else None,
        true_pos=tp,
        false_pos=fp,
        true_neg=tn,
        false_neg=fn,
    )
