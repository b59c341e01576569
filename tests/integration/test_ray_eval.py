"""``guardrail eval --ray`` on a local Ray cluster (the session's ``ray_cluster``), embedded
model: the CLI in a subprocess joins the cluster with ``--address`` and shards 40 prompts x 2
policies over 2 worker actors. Its ``results.jsonl`` equals a local run's row for row; a worker
killed mid-run has its shard re-run, and a driver killed mid-run resumes, every row exactly
once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

pytest.importorskip("llama_cpp")
pytest.importorskip("ray")

from guardrail.eval import load_dataset, run, stratified_slice
from guardrail.policy import load_policy

pytestmark = pytest.mark.llamacpp

POLICIES = ["plain", "adacd"]
# kv per_stream: a stream's answer never depends on what is decoded beside it (with the default
# unified cache it may, and which requests share a step depends on timing)
MODEL = {"kv": "per_stream", "n_ctx": 512, "n_streams": 8}
LIMIT = 40
TOKENS = 8
WORKER_TITLE = "ray::MapWorker(MapBatches(EvalWorker))"  # the actor's process title
RUN_TIMEOUT = 300.0


@pytest.fixture(scope="module")
def policy_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """The shipped policies on the exact KV layout, as YAML files the CLI reads."""
    root = tmp_path_factory.mktemp("policies")
    files = []
    for name in POLICIES:
        data = load_policy(name).model_dump(mode="json", exclude_unset=True)
        path = root / f"{name}.yaml"
        path.write_text(yaml.safe_dump({**data, "model": MODEL}), encoding="utf-8")
        files.append(path)
    return files


def _command(out: Path, address: str, policies: list[Path]) -> list[str]:
    return [sys.executable, "-m", "guardrail.cli", "eval",
            *[arg for p in policies for arg in ("--policy", str(p))], "--data", "xstest",
            "--limit", str(LIMIT), "--max-new-tokens", str(TOKENS), "--batch-size", "4",
            "--out", str(out), "--ray", "--address", address, "--workers", "2",
            "--cpus-per-worker", "1"]


def _rows(out: Path) -> list[dict[str, Any]]:
    """The complete rows of ``out/results.jsonl`` without their timings."""
    path = out / "results.jsonl"
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")[:-1]  # a cut last line is not a row
    return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in lines]


def _wait(what: str, done: Callable[[], bool], proc: subprocess.Popen[bytes],
          timeout: float = RUN_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if proc.poll() is not None:
            raise AssertionError(f"the eval exited ({proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _worker_pids() -> list[int]:
    """Processes of this machine running an eval worker actor."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            title = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if title.decode(errors="replace").startswith(WORKER_TITLE):
            pids.append(int(entry))
    return pids


@pytest.fixture(scope="module")
def local_rows(tmp_path_factory: pytest.TempPathFactory, policy_files: list[Path]
               ) -> list[dict[str, Any]]:
    """The same evaluation run locally, in this process."""
    out = tmp_path_factory.mktemp("local")
    run(policy_files, "xstest", out=out, limit=LIMIT, max_new_tokens=TOKENS, batch_size=4,
        progress=False)
    return _rows(out)


def test_ray_eval_equals_local_run(ray_cluster: str, local_rows: list[dict[str, Any]],
                                   policy_files: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "ray"
    res = subprocess.run(_command(out, ray_cluster, policy_files), capture_output=True, check=False,
                         timeout=RUN_TIMEOUT)
    assert res.returncode == 0, res.stderr.decode()[-3000:]
    rows = _rows(out)
    assert len(rows) == len(local_rows) == LIMIT * len(POLICIES)
    assert rows == local_rows  # same rows, same answers, same order
    summary = json.loads((out / "summary.json").read_text())
    assert [p["policy"] for p in summary["policies"]] == POLICIES
    assert all(p["n"] == LIMIT for p in summary["policies"])
    assert "| plain | 40 |" in (out / "report.md").read_text()
    assert (out / "report.png").read_bytes()[:4] == b"\x89PNG"
    assert b"ray workers" in res.stderr  # the driver's one progress bar


def test_killed_worker_and_driver_then_rerun_every_row_once(
        ray_cluster: str, local_rows: list[dict[str, Any]], policy_files: list[Path],
        tmp_path: Path) -> None:
    out = tmp_path / "ray"
    results = out / "results.jsonl"
    proc = subprocess.Popen(_command(out, ray_cluster, policy_files), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        _wait("8 rows", lambda: len(_rows(out)) >= 8, proc)
        workers = _worker_pids()
        assert len(workers) == 2, workers
        os.kill(workers[0], signal.SIGKILL)  # a worker dies with batches in hand
        at_kill = len(_rows(out))
        # Ray restarts it and re-runs its batches: the run goes on, losing nothing
        _wait("16 more rows", lambda: len(_rows(out)) >= at_kill + 16, proc)
        before = _rows(out)
        assert before == local_rows[: len(before)]  # nothing lost, doubled or changed
        assert len(before) < len(local_rows), "the run ended before the driver was killed"
        os.kill(proc.pid, signal.SIGKILL)  # then the whole run is interrupted
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    kept = results.read_bytes()
    kept = kept[: kept.rfind(b"\n") + 1]

    res = subprocess.run(_command(out, ray_cluster, policy_files), capture_output=True, check=False,
                         timeout=RUN_TIMEOUT)
    assert res.returncode == 0, res.stderr.decode()[-3000:]
    assert results.read_bytes().startswith(kept)  # the resumed run only appended
    rows = _rows(out)
    keys = [(r["policy"], r["id"]) for r in rows]
    ids = [e.id for e in stratified_slice(load_dataset("xstest"), LIMIT)]
    assert len(keys) == len(set(keys)) == LIMIT * len(POLICIES)
    assert sorted(keys) == sorted((p, i) for p in POLICIES for i in ids)
    for r in rows:
        assert r["finish_reason"] != "error" and 0 < r["new_tokens"] <= TOKENS
    summary = json.loads((out / "summary.json").read_text())
    assert all(p["n"] == LIMIT for p in summary["policies"])
