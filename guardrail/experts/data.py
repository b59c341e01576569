"""Labelled prompt files for router training: CSV (XSTest's columns) or JSONL.

Each row needs a ``prompt`` and a ``label``. Harmful labels (→ safety expert): ``unsafe``,
``harmful``, ``1``, ``true``; harmless labels (→ helpfulness expert): ``safe``, ``harmless``,
``benign``, ``0``, ``false``. Anything else is an error naming the row.
"""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

from guardrail.errors import ConfigError

HARMFUL = {"unsafe", "harmful", "1", "true"}
HARMLESS = {"safe", "harmless", "benign", "0", "false"}


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_labelled(path: str | Path) -> tuple[list[str], list[bool]]:
    """``(prompts, harmful)`` from a CSV or JSONL file with ``prompt`` and ``label`` fields."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise ConfigError(f"--data: no such file: {str(p)!r}")
    if p.suffix in (".jsonl", ".json"):
        rows = [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    else:
        with p.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    prompts, harmful = [], []
    for n, row in enumerate(rows, 1):
        if "prompt" not in row or "label" not in row:
            raise ConfigError(f"{str(p)!r} row {n}: needs 'prompt' and 'label' fields")
        label = str(row["label"]).strip().lower()
        if label not in HARMFUL | HARMLESS:
            raise ConfigError(
                f"{str(p)!r} row {n}: label {row['label']!r} is neither harmful "
                f"({', '.join(sorted(HARMFUL))}) nor harmless ({', '.join(sorted(HARMLESS))})"
            )
        prompts.append(str(row["prompt"]))
        harmful.append(label in HARMFUL)
    if not prompts:
        raise ConfigError(f"{str(p)!r}: no rows")
    return prompts, harmful
