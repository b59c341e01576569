"""Evaluation datasets: CSV or JSONL rows with a ``prompt`` and a ``label`` (``safe`` = should be
answered, ``unsafe`` = should be refused), optional ``id`` and ``type``.

``xstest`` names the copy of XSTest shipped in the package, so evaluations run offline;
``framed`` the shipped scoring split of jailbreak-framed requests (``framed_scoring.csv``:
JailbreakBench's odd rows and MT-Bench's first turns, each in one of eight framings; its
calibration half is ``framed_calibration.csv``). Every
problem is reported with the file, the row (CSV: the line number including the header; JSONL:
the line number) and what is allowed. A CSV header that names a column twice, a CSV row with
a filled cell past the header's columns, and a JSONL object with a key twice are errors (they
would otherwise be read silently, one value winning or dropped), naming the line and, for CSV,
the column.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel

from guardrail.errors import ConfigError

SHIPPED = {"xstest": "xstest_prompts.csv", "framed": "framed_scoring.csv"}
LABELS = ("safe", "unsafe")


class DatasetError(ConfigError):
    """A dataset file that cannot be read as prompts with labels."""


class Example(BaseModel):
    """One prompt to evaluate."""

    id: str
    prompt: str
    label: Literal["safe", "unsafe"]
    type: str = ""


def dataset_source(name_or_path: str | Path) -> tuple[str, bytes]:
    """``(display name, raw bytes)`` of a shipped dataset name or a file path."""
    key = str(name_or_path)
    if key in SHIPPED:
        res = resources.files("guardrail.data").joinpath(SHIPPED[key])
        return f"{key} (shipped {SHIPPED[key]})", res.read_bytes()
    path = Path(key).expanduser()
    if not path.is_file():
        raise DatasetError(
            f"--data {key!r}: not a shipped dataset ({', '.join(SHIPPED)}) and no such file"
        )
    return str(path), path.read_bytes()


def load_dataset(name_or_path: str | Path) -> list[Example]:
    """Every example of a shipped dataset or a ``.csv`` / ``.jsonl`` file, in file order."""
    name, data = dataset_source(name_or_path)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise DatasetError(
            f"{name}: not UTF-8 text (bad byte {data[e.start:e.start + 1]!r} on line {line}); "
            "save the file as UTF-8"
        ) from e
    if not text.strip():
        raise DatasetError(f"{name}: the file is empty; expected a header row and prompts")
    jsonl = name.lower().endswith((".jsonl", ".ndjson", ".json"))
    rows = _jsonl_rows(name, text) if jsonl else _csv_rows(name, text)
    examples: list[Example] = []
    seen: dict[str, str] = {}
    for where, row in rows:
        ex = _example(name, where, row, len(examples) + 1)
        if ex.id in seen:
            raise DatasetError(
                f"{name} {where}: id {ex.id!r} already used on {seen[ex.id]}; ids must be unique"
            )
        seen[ex.id] = where
        examples.append(ex)
    if not examples:
        raise DatasetError(f"{name}: no prompts (only a header or blank lines)")
    return examples


def _csv_rows(name: str, text: str) -> Iterator[tuple[str, dict[str, Any]]]:
    reader = csv.DictReader(io.StringIO(text, newline=""))
    header = list(reader.fieldnames or [])
    missing = [c for c in ("prompt", "label") if c not in header]
    if missing:
        raise DatasetError(
            f"{name} row 1 (header): missing column(s) {', '.join(missing)}; "
            f"found {', '.join(header) or 'none'}; required: prompt, label; optional: id, type"
        )
    for col, field in enumerate(header, start=1):
        first = header.index(field) + 1
        if field and first != col:
            raise DatasetError(
                f"{name} line {reader.line_num} (header), column {col}: column {field!r} "
                f"already is column {first}; each column may appear once"
            )
    for row in reader:
        extra = [str(v) for v in row.pop(None, None) or []]  # type: ignore[call-overload]
        filled = [i for i, v in enumerate(extra) if v.strip()]
        if filled:  # cells past the header's last column (empty trailing cells are harmless)
            raise DatasetError(
                f"{name} line {reader.line_num}, column {len(header) + filled[0] + 1}: "
                f"{extra[filled[0]]!r} is past the header's {len(header)} columns "
                f"({', '.join(header)}); quote a cell that holds a comma"
            )
        if not any((v or "").strip() for v in row.values() if isinstance(v, str)):
            continue  # blank line
        yield f"row {reader.line_num}", row


class _RepeatedKey(ValueError):
    def __init__(self, key: str):
        super().__init__(key)
        self.key = key


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise _RepeatedKey(k)
        out[k] = v
    return out


def _jsonl_rows(name: str, text: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line, object_pairs_hook=_unique_keys)
        except json.JSONDecodeError as e:
            raise DatasetError(f"{name} row {n}: not valid JSON ({e.msg})") from e
        except _RepeatedKey as e:
            raise DatasetError(
                f"{name} row {n}: key {e.key!r} appears twice in the object; "
                "each field may appear once"
            ) from e
        if not isinstance(row, dict):
            raise DatasetError(f"{name} row {n}: expected a JSON object, got {type(row).__name__}")
        yield f"row {n}", row


def _example(name: str, where: str, row: dict[str, Any], ordinal: int) -> Example:
    for field in ("prompt", "label"):
        if field not in row or row[field] is None:
            raise DatasetError(f"{name} {where}: missing field {field!r}")
    prompt = row["prompt"]
    if not isinstance(prompt, str) or not prompt.strip():
        raise DatasetError(f"{name} {where}: field 'prompt' must be non-empty text")
    label = str(row["label"]).strip().lower()
    if label not in LABELS:
        raise DatasetError(
            f"{name} {where}: field 'label' is {row['label']!r}; allowed: safe (should be "
            "answered), unsafe (should be refused)"
        )
    raw_id = row.get("id")
    ex_id = str(raw_id).strip() if raw_id not in (None, "") else str(ordinal)
    return Example(id=ex_id, prompt=prompt, label=label, type=str(row.get("type") or "").strip())  # type: ignore[arg-type]


def stratified_slice(examples: list[Example], limit: int | None) -> list[Example]:
    """``limit`` examples taken in turn from each type (file order within a type).

    XSTest is sorted by type, so the first N rows would cover one or two types and no unsafe
    prompt; this slice covers every type and both labels even when short, and is the same on
    every run (so a resumed run asks for the same prompts).
    """
    if limit is None or limit >= len(examples):
        return list(examples)
    if limit < 1:
        raise ConfigError(f"--limit must be at least 1, got {limit}")
    groups: dict[str, list[Example]] = {}
    for ex in examples:
        groups.setdefault(ex.type, []).append(ex)
    picked: list[Example] = []
    depth = 0
    while len(picked) < limit:
        for group in groups.values():
            if depth < len(group) and len(picked) < limit:
                picked.append(group[depth])
        depth += 1
    order = {id(ex): i for i, ex in enumerate(examples)}
    return sorted(picked, key=lambda ex: order[id(ex)])
