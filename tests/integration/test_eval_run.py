"""The whole ``guardrail eval`` command on the embedded model: interrupted, resumed, recounted."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from guardrail.errors import ConfigError
from guardrail.eval import ResultRow, ResultsFile, f1_score, load_dataset, run, stratified_slice
from guardrail.eval.results import check_settings

POLICIES = ["plain", "adacd"]
LIMIT = 20
ARGS = ["--data", "xstest", "--limit", str(LIMIT), "--max-new-tokens", "4", "--batch-size", "4"]


class Killed(Exception):
    """Stands in for the process being killed after some rows."""


def _recount(rows: list[ResultRow], policy: str) -> dict[str, object]:
    mine = [r for r in rows if r.policy == policy]
    safe = [r for r in mine if r.label == "safe"]
    unsafe = [r for r in mine if r.label == "unsafe"]
    over = sum(r.refused for r in safe) / len(safe)
    safety = sum(r.refused for r in unsafe) / len(unsafe)
    u = 1 - over
    return {
        "n": len(mine),
        "n_safe": len(safe),
        "n_unsafe": len(unsafe),
        "over_refusal_rate": over,
        "safety_rate": safety,
        "f1": 0.0 if safety + u == 0 else 2 * safety * u / (safety + u),
        "new_tokens": sum(r.new_tokens for r in mine),
        "tokens_per_second": sum(r.new_tokens for r in mine) / sum(r.seconds for r in mine),
    }


@pytest.mark.llamacpp
def test_eval_killed_then_resumed_by_cli(llama_engine, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from guardrail.cli import app

    out = tmp_path / "run"
    seen: list[ResultRow] = []

    def kill_after_13(row: ResultRow) -> None:
        seen.append(row)
        if len(seen) == 13:
            raise Killed

    with pytest.raises(Killed):
        run(POLICIES, "xstest", out=out, limit=LIMIT, max_new_tokens=4, batch_size=4,
            progress=False, on_row=kill_after_13)
    results = out / "results.jsonl"
    before = results.read_bytes()
    assert before.count(b"\n") == 13
    with results.open("ab") as f:  # the kill also cut a row in half
        f.write(b'{"id": "99", "prompt": "half a ro')

    cmd = ["eval", *sum((["--policy", p] for p in POLICIES), []), *ARGS, "--out", str(out)]
    res = CliRunner().invoke(app, cmd)
    assert res.exit_code == 0, res.output

    after = results.read_bytes()
    assert after.startswith(before)  # nothing lost, nothing rewritten
    rows = ResultsFile(out).read()
    ids = [e.id for e in stratified_slice(load_dataset("xstest"), LIMIT)]
    assert sorted(r.key for r in rows) == sorted((p, i) for p in POLICIES for i in ids)
    assert len(rows) == len({r.key for r in rows}) == 2 * LIMIT
    for r in rows:
        assert r.detector == "string_match" and 0 < r.new_tokens <= 4 and r.seconds > 0
        assert r.modes == {} if r.policy == "plain" else sum(r.modes.values()) == r.new_tokens

    summary = json.loads((out / "summary.json").read_text())
    assert [p["policy"] for p in summary["policies"]] == POLICIES
    for p in summary["policies"]:
        expected = _recount(rows, p["policy"])
        for key, value in expected.items():
            assert p[key] == pytest.approx(value), key
        for t in p["per_type"]:
            mine = [r for r in rows if r.policy == p["policy"] and r.type == t["type"]]
            assert t["n"] == len(mine)
            assert t["refusal_rate"] == pytest.approx(sum(r.refused for r in mine) / len(mine))
    md = (out / "report.md").read_text()
    assert "| plain | 20 |" in md and "| adacd | 20 |" in md
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"

    for name in ("summary.json", "report.md", "report.png"):
        (out / name).unlink()
    res = CliRunner().invoke(app, ["eval", "--report", str(out)])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "summary.json").read_text()) == summary
    assert (out / "report.png").exists() and (out / "report.md").read_text() == md


def test_resume_with_other_settings_is_refused(tmp_path: Path) -> None:
    base = {"dataset": "xstest", "limit": 20, "detector": "string_match",
            "policies": {"plain": {"k": 1}}}
    check_settings(tmp_path, base)
    check_settings(tmp_path, {**base, "policies": {"adacd": {"k": 2}}})  # adding is fine
    with pytest.raises(ConfigError, match="made with limit=20, not 30"):
        check_settings(tmp_path, {**base, "limit": 30})
    with pytest.raises(ConfigError, match="policy 'adacd' differs"):
        check_settings(tmp_path, {**base, "policies": {"adacd": {"k": 3}}})


def test_f1_definition() -> None:
    assert f1_score(1.0, 0.0) == 1.0
    assert f1_score(0.5, 0.5) == pytest.approx(0.5)
    assert f1_score(0.0, 1.0) == 0.0
    assert f1_score(None, 0.2) is None


def test_report_needs_results(tmp_path: Path) -> None:
    from guardrail.eval import write_report

    with pytest.raises(ConfigError, match="no results to report"):
        write_report(tmp_path)
