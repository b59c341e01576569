"""``--ray`` options without a cluster: the missing extra (import failure simulated), options
refused with the option named, Ray Serve deployment options, worker threads, and rows that
arrive twice (a re-run shard) written once."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from guardrail.cli import app
from guardrail.errors import ConfigError
from guardrail.eval.results import ResultRow, ResultsFile
from guardrail.eval.runner import plan_run, record
from guardrail.policy import ModelConfig
from guardrail.scale.config import RayServeSettings
from guardrail.scale.eval import check_options, worker_model
from guardrail.scale.serve import deployment_options, replica_config
from guardrail.serve.config import ServeConfig, ServeConfigError, load_serve_config


@pytest.fixture
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """``import ray`` fails, as without the extra (even if ray was imported before)."""
    monkeypatch.setitem(sys.modules, "ray", None)


def _one_line_naming_extra(output: str) -> None:
    lines = output.strip().splitlines()
    assert len(lines) == 1, output
    assert "'ray' extra" in lines[0] and "pip install 'guardrail-decoding[ray]'" in lines[0]


def test_eval_ray_without_extra_fails_in_one_line(no_ray: None, tmp_path: Path) -> None:
    res = CliRunner().invoke(app, ["eval", "-p", "plain", "--out", str(tmp_path / "run"),
                                   "--ray", "--workers", "2"])
    assert res.exit_code == 2
    _one_line_naming_extra(res.output)
    assert not (tmp_path / "run").exists()  # nothing planned or written


def test_serve_ray_without_extra_fails_in_one_line(no_ray: None) -> None:
    res = CliRunner().invoke(app, ["serve", "--ray", "--replicas", "2"])
    assert res.exit_code == 1
    _one_line_naming_extra(res.output)


@pytest.mark.parametrize("args, message", [
    (["--workers", "2"], "--workers: only used with --ray"),
    (["--address", "auto", "--cpus-per-worker", "1"],
     "--address, --cpus-per-worker: only used with --ray"),
])
def test_eval_ray_options_need_ray(tmp_path: Path, args: list[str], message: str) -> None:
    res = CliRunner().invoke(app, ["eval", "-p", "plain", "--out", str(tmp_path), *args])
    assert res.exit_code == 2 and message in res.output


@pytest.mark.parametrize("workers, cpus, message", [
    (0, 1.0, "--workers must be a whole number of at least 1, got 0"),
    (2, 0.0, "--cpus-per-worker must be a number above 0"),
    (2, float("nan"), "--cpus-per-worker must be a number above 0"),
])
def test_eval_worker_options_are_checked(workers: int, cpus: float, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        check_options(workers, cpus)


def test_serve_ray_options_need_ray() -> None:
    res = CliRunner().invoke(app, ["serve", "--replicas", "2", "--cpus-per-replica", "0.5"])
    assert res.exit_code == 1
    assert "--replicas, --cpus-per-replica: only used with --ray" in res.output


def test_serve_config_ray_section(tmp_path: Path) -> None:
    path = tmp_path / "serve.yaml"
    path.write_text("policies: [plain]\nray:\n  replicas: 2\n  autoscaling: {max_replicas: 4}\n")
    with pytest.raises(ServeConfigError, match="replicas or autoscaling, not both"):
        load_serve_config(path)
    path.write_text("ray:\n  replica: 2\n")
    with pytest.raises(ServeConfigError, match="replica"):
        load_serve_config(path)
    path.write_text("ray:\n  autoscaling: {min_replicas: 1, max_replicas: 4}\n  num_cpus: 0.5\n")
    assert load_serve_config(path).ray == RayServeSettings(
        autoscaling={"min_replicas": 1, "max_replicas": 4}, num_cpus=0.5)


def test_deployment_options_pass_autoscaling_through() -> None:
    auto = {"min_replicas": 1, "max_replicas": 4, "target_ongoing_requests": 8}
    options = deployment_options(ServeConfig(max_queue=32, ray=RayServeSettings(
        autoscaling=auto, num_cpus=2, num_gpus=1)))
    assert options["autoscaling_config"] == auto and "num_replicas" not in options
    assert options["ray_actor_options"] == {"num_cpus": 2, "num_gpus": 1}
    assert options["max_ongoing_requests"] == 32  # the server's own queue stays in charge
    fixed = deployment_options(ServeConfig(ray=RayServeSettings(replicas=3,
                                                                max_ongoing_requests=5)))
    assert fixed["num_replicas"] == 3 and fixed["max_ongoing_requests"] == 5
    assert fixed["health_check_period_s"] == 10.0


def test_replica_and_worker_threads_follow_reserved_cpus() -> None:
    cfg = ServeConfig(ray=RayServeSettings(num_cpus=2.5))
    replica = replica_config(cfg)
    assert replica.n_threads == 2 and replica.ray is None
    assert replica_config(cfg.model_copy(update={"n_threads": 4})).n_threads == 4
    assert replica_config(ServeConfig(ray=RayServeSettings(num_cpus=0.5))).n_threads == 1
    assert worker_model(ModelConfig(), 0.5).n_threads == 1
    assert worker_model(ModelConfig(), 3).n_threads == 3
    assert worker_model(ModelConfig(n_threads=6), 1).n_threads == 6
    assert worker_model(ModelConfig(backend="transformers"), 2).n_threads is None


def test_record_writes_a_row_that_arrives_twice_once(tmp_path: Path,
                                                     caplog: pytest.LogCaptureFixture) -> None:
    plan = plan_run(["plain"], "xstest", out=tmp_path, limit=3)
    rows = [ResultRow(id=ex.id, prompt=ex.prompt, label=ex.label, type=ex.type, policy="plain",
                      response="ok", refused=False, detector="string_match", new_tokens=1,
                      seconds=0.1) for ex in plan.examples]
    with caplog.at_level(logging.WARNING, logger="guardrail.eval"):
        written = record(plan, [rows[0], rows[1], rows[0], rows[2]], progress=False)
    assert written == 3
    assert [r.key for r in ResultsFile(tmp_path).read()] == [r.key for r in rows]
    assert "arrived again" in caplog.text and plan.pending == 0
    again = plan_run(["plain"], "xstest", out=tmp_path, limit=3)  # a resume has nothing left
    assert again.pending == 0 and again.batches(4) == []
