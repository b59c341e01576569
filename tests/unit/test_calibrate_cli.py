"""`guardrail calibrate` rejects bad arguments in one line, naming them, before loading a model
(the calibration itself runs in tests/integration/test_experts_probe.py)."""

from __future__ import annotations

from typer.testing import CliRunner

from guardrail.cli import app


def test_bad_backend_is_named() -> None:
    res = CliRunner().invoke(app, ["calibrate", "--backend", "vllm"])
    assert res.exit_code == 2 and "--backend" in res.output and "'vllm'" in res.output
    assert "Traceback" not in res.output


def test_missing_model_file_is_named(tmp_path) -> None:  # type: ignore[no-untyped-def]
    res = CliRunner().invoke(app, ["calibrate", str(tmp_path / "nope.gguf")])
    assert res.exit_code == 2 and "nope.gguf" in res.output and "Traceback" not in res.output


def test_training_commands_name_a_bad_backend(tmp_path) -> None:  # type: ignore[no-untyped-def]
    data = tmp_path / "x.csv"
    data.write_text("prompt,label\nhi,safe\nbomb,unsafe\n")
    for args in (["router", "train", "--data", str(data), "--out", str(tmp_path / "r")],
                 ["refusal", "train", str(data), "--out", str(tmp_path / "p")]):
        res = CliRunner().invoke(app, [*args, "--backend", "vllm"])
        assert res.exit_code == 2 and "--backend" in res.output, (args, res.output)
        assert "ValidationError" not in res.output and "Traceback" not in res.output
