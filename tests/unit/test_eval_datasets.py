"""Dataset loading: shipped XSTest, CSV/JSONL, and clear errors naming file and row."""

from __future__ import annotations

from pathlib import Path

import pytest

from guardrail.eval import DatasetError, load_dataset, stratified_slice


def test_shipped_xstest() -> None:
    ds = load_dataset("xstest")
    assert len(ds) == 450
    assert sum(e.label == "safe" for e in ds) == 250
    assert all(e.type.startswith("contrast_") == (e.label == "unsafe") for e in ds)


def test_stratified_slice_covers_types_and_labels() -> None:
    ds = load_dataset("xstest")
    part = stratified_slice(ds, 20)
    assert len(part) == 20 and len({e.id for e in part}) == 20
    assert {e.label for e in part} == {"safe", "unsafe"}
    assert len({e.type for e in part}) == len({e.type for e in ds})
    assert part == stratified_slice(ds, 20)  # the same slice every time


def test_csv_and_jsonl(tmp_path: Path) -> None:
    csv_file = tmp_path / "d.csv"
    csv_file.write_text("prompt,label\nHi,SAFE\n\nBomb?,unsafe\n", encoding="utf-8")
    ds = load_dataset(csv_file)
    assert [(e.id, e.label, e.type) for e in ds] == [("1", "safe", ""), ("2", "unsafe", "")]
    jl = tmp_path / "d.jsonl"
    jl.write_text('{"id": 7, "prompt": "Hi", "label": "safe", "type": "t"}\n', encoding="utf-8")
    assert load_dataset(jl)[0].model_dump() == {
        "id": "7", "prompt": "Hi", "label": "safe", "type": "t"
    }


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("a.csv", b"text,label\nhi,safe\n", r"a.csv row 1 \(header\): missing column\(s\) prompt"),
        ("b.csv", b"prompt,label\nhi,safe\nyo,maybe\n", r"b.csv row 3: field 'label' is 'maybe'"),
        ("c.csv", b"", r"c.csv: the file is empty"),
        ("d.csv", b"prompt,label\nh\xe9llo,safe\n", r"d.csv: not UTF-8 text .* line 2"),
        ("e.jsonl", b'{"prompt": "x", "label": "safe"}\n{"prompt": "y"}\n',
         r"e.jsonl row 2: missing field 'label'"),
        ("f.jsonl", b'{"prompt": "x", "label": "safe"}\n{oops\n', r"f.jsonl row 2: not valid JSON"),
        ("g.csv", b"id,prompt,label\n1,a,safe\n1,b,safe\n", r"g.csv row 3: id '1' already used"),
        ("h.csv", b"prompt,label\n", r"h.csv: no prompts"),
    ],
)
def test_malformed(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DatasetError, match=message):
        load_dataset(path)


def test_unknown_dataset() -> None:
    with pytest.raises(DatasetError, match="not a shipped dataset"):
        load_dataset("no-such-set")
