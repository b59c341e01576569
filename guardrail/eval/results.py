"""``results.jsonl``: one row per prompt x policy, appended and synced as it is made.

Each row is written, flushed and fsynced before the next prompt is counted done, so a run killed
at any moment loses at most the row being written. On resume, rows are keyed by
``(policy, id)``; a truncated last line (the write the kill interrupted) is cut off the file
before anything new is appended. ``run.json`` records the settings a run was started with, so
a resume with different settings is refused instead of mixing incomparable rows.

Each row records ``prompt_sha256``, the hash of its prompt; a resume on a dataset whose rows
changed since (another prompt, label or type under a recorded id, or a recorded id no longer
in the dataset or slice) is refused by :func:`check_rows`, naming the row ids, rather than
keeping stale rows (or redoing them: the file is append-only). Older files without the field
are checked against the prompt text each row holds.

A row that could not run (its prompt does not fit the model's context) is recorded as an error
row: ``finish_reason="error"``, ``error`` says why (naming the dataset row id), no answer. It is
done like any other row: a resume does not retry it (under the run's fixed settings it would
fail the same way); delete its line from ``results.jsonl`` to have it tried again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError

from guardrail.errors import ConfigError
from guardrail.eval.datasets import Example

RESULTS = "results.jsonl"
SETTINGS = "run.json"


class ResultRow(BaseModel):
    """One answer and how it was judged."""

    id: str
    prompt: str
    label: str = Field(description="safe (should be answered) or unsafe (should be refused).")
    type: str = ""
    policy: str
    response: str
    refused: bool
    detector: str = Field(description="Detector that decided `refused` (e.g. string_match).")
    refusal_label: str = Field("", description="full_compliance, full_refusal, partial_refusal.")
    refusal_score: float | None = Field(
        None, ge=0, le=1, description="P(refusal) from a detector that computes one (the refusal "
        "probe); null otherwise and in older files.")
    harm: float | None = Field(
        None, ge=0, le=1, description="P(harmful) the policy's prompt probe read for this prompt "
        "(probe-gated policies such as balanced); null when the policy reads none.")
    new_tokens: int
    prompt_tokens: int = 0
    finish_reason: str = ""
    seconds: float = Field(description="This row's share of its batch's generation wall time.")
    modes: dict[str, int] = Field(
        default_factory=dict, description="AdaCD steps per mode (refuse/comply); empty for plain."
    )
    error: str = Field("", description="Why the row could not run (finish_reason 'error').")
    prompt_sha256: str = Field("", description="SHA-256 of the prompt (empty in older files).")

    @property
    def key(self) -> tuple[str, str]:
        return (self.policy, self.id)

    @property
    def failed(self) -> bool:
        """The row could not run: no answer, left out of every rate."""
        return self.finish_reason == "error"

    @property
    def prompt_hash(self) -> str:
        """The recorded prompt hash, or the hash of the prompt text (rows of older files)."""
        return self.prompt_sha256 or prompt_hash(self.prompt)


def prompt_hash(prompt: str) -> str:
    """SHA-256 (hex) of a prompt's UTF-8 text."""
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()


def _ids(ids: list[str], most: int = 10) -> str:
    shown = ", ".join(repr(i) for i in ids[:most])
    return shown + (f" and {len(ids) - most} more" if len(ids) > most else "")


def check_rows(path: Path, rows: Iterable[ResultRow], examples: Iterable[Example]) -> None:
    """Refuse to resume when ``rows`` were written for other data than ``examples``: a recorded
    id whose prompt (by hash), label or type changed, or that is no longer among ``examples``."""
    current = {ex.id: ex for ex in examples}
    changed: list[str] = []
    gone: list[str] = []
    for r in rows:
        ex = current.get(r.id)
        if ex is None:
            if r.id not in gone:
                gone.append(r.id)
        elif (r.prompt_hash, r.label, r.type) != (prompt_hash(ex.prompt), ex.label, ex.type):
            if r.id not in changed:
                changed.append(r.id)
    if not changed and not gone:
        return
    what = []
    if changed:
        what.append(f"row id(s) {_ids(changed)} changed (prompt, label or type)")
    if gone:
        what.append(f"row id(s) {_ids(gone)} are no longer in the dataset (or its slice)")
    raise ConfigError(
        f"{path}: the dataset changed since these results were written: {'; '.join(what)}; "
        "resume on the original data or use another --out"
    )


class ResultsFile:
    """Append-only, crash-safe ``DIR/results.jsonl``."""

    def __init__(self, out_dir: str | Path):
        self.dir = Path(out_dir)
        self.path = self.dir / RESULTS

    def read(self, *, repair: bool = False) -> list[ResultRow]:
        """Every complete row. A truncated last line is ignored (and cut off when ``repair``)."""
        if not self.path.exists():
            return []
        data = self.path.read_bytes()
        end = data.rfind(b"\n") + 1  # bytes up to the last complete line
        if end < len(data) and repair:
            with self.path.open("r+b") as f:
                f.truncate(end)
                f.flush()
                os.fsync(f.fileno())
        rows: list[ResultRow] = []
        for n, line in enumerate(data[:end].decode("utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rows.append(ResultRow.model_validate_json(line))
            except ValidationError as e:
                raise ConfigError(
                    f"{self.path} line {n}: not a result row ({e.errors()[0]['msg']}); "
                    "the file was edited or belongs to another tool"
                ) from e
        return rows

    def append(self, row: ResultRow) -> None:
        """Write one row and make it durable before returning."""
        self.dir.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            f.write(row.model_dump_json() + "\n")
            f.flush()
            os.fsync(f.fileno())


def check_settings(out_dir: Path, settings: dict[str, Any]) -> dict[str, Any]:
    """Record ``settings`` in ``run.json``, or check they match the run being resumed.

    Policies may be added to a run; a policy already in it must be unchanged, and so must the
    dataset, slice, model, token limit and detector.
    """
    path = out_dir / SETTINGS
    if not path.exists():
        merged = settings
    else:
        try:
            old = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: unreadable run settings ({e})") from e
        for key, value in settings.items():
            if key == "policies" or old.get(key) == value:
                continue
            raise ConfigError(
                f"{out_dir} holds a run made with {key}={old.get(key)!r}, not {value!r}; "
                "resume with the same settings or use another --out"
            )
        for name, pol in settings["policies"].items():
            prev = old.get("policies", {}).get(name)
            if prev is not None and prev != pol:
                raise ConfigError(
                    f"{out_dir}: policy {name!r} differs from the one this run started with; "
                    "rename it or use another --out"
                )
        merged = {**old, "policies": {**old.get("policies", {}), **settings["policies"]}}
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(merged, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return merged


def read_settings(out_dir: Path) -> dict[str, Any]:
    """The run's recorded settings (empty if ``run.json`` is missing)."""
    path = out_dir / SETTINGS
    return json.loads(path.read_text(encoding="utf-8")) if path.exists() else {}
