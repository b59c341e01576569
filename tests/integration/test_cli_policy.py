"""The ``guardrail policy`` and ``guardrail chat`` commands, and per-request policy switching.

The command groups are registered on a fresh Typer app exactly as ``guardrail.cli`` registers
them; ``chat`` runs on the embedded model with at most 8 new tokens.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import typer
import yaml
from typer.testing import CliRunner

import guardrail.loading
from guardrail.cli import chat as chat_cli
from guardrail.cli import policy as policy_cli
from guardrail.engine import Engine
from guardrail.policy import load_policy, load_policy_text, with_overrides
from guardrail.policy.reference import json_schema, markdown_reference

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def app() -> typer.Typer:
    app = typer.Typer()
    policy_cli.register(app)
    chat_cli.register(app)
    return app


runner = CliRunner()


def test_list_marks_the_default(app: typer.Typer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GUARDRAIL_POLICY", raising=False)
    result = runner.invoke(app, ["policy", "list"])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert any(line.startswith("* balanced ") for line in lines)
    for name in ("adacd", "plain", "strict", "permissive"):
        assert any(line.split()[0] == name for line in lines if not line.startswith("*"))


def test_show_prints_the_resolved_policy(app: typer.Typer, tmp_path: Path) -> None:
    path = tmp_path / "child.yaml"
    path.write_text("extends: strict\nsampling: {max_new_tokens: '${N:-12}'}\n", encoding="utf-8")
    result = runner.invoke(app, ["policy", "show", str(path)])
    assert result.exit_code == 0, result.output
    shown = yaml.safe_load(result.stdout)
    assert shown["name"] == "child" and "extends" not in shown
    assert shown["sampling"]["max_new_tokens"] == 12
    assert shown["system_prompt"] == load_policy("strict").system_prompt
    assert load_policy_text(result.stdout).strategy == load_policy("strict").strategy


def test_validate_lists_every_problem_and_exits_1(app: typer.Typer, tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text("extends: balanced\n", encoding="utf-8")
    bad = tmp_path / "bad.yaml"
    bad.write_text("strategy:\n  kind: adacd\n  alpah: 1\n  steps: -1\n", encoding="utf-8")
    worse = tmp_path / "worse.yaml"
    worse.write_text("strategy: [\n", encoding="utf-8")
    result = runner.invoke(app, ["policy", "validate", str(good), str(bad), str(worse)])
    assert result.exit_code == 1
    assert f"{good}: ok" in result.stdout
    assert f"{bad}:3: strategy.alpah: unknown key 'alpah'; did you mean 'alpha'?" in result.stderr
    assert f"{bad}:4: strategy.steps: Input should be greater than or equal to 0" in result.stderr
    assert f"{worse}:2: invalid YAML" in result.stderr
    assert "2 of 3 policy file(s) invalid" in result.stderr
    ok = runner.invoke(app, ["policy", "validate", str(good), "strict"])
    assert ok.exit_code == 0, ok.output


def test_schema_is_json_schema_with_aliases(app: typer.Typer, tmp_path: Path) -> None:
    result = runner.invoke(app, ["policy", "schema"])
    assert result.exit_code == 0
    schema = json.loads(result.stdout)
    assert schema["$schema"].startswith("https://json-schema.org/")
    assert schema["additionalProperties"] is False
    adacd = schema["$defs"]["AdaCDStrategy"]["properties"]
    assert {"lam", "lambda", "alpha"} <= set(adacd)
    assert "extends" in schema["properties"]
    out = tmp_path / "policy.schema.json"
    assert runner.invoke(app, ["policy", "schema", "-o", str(out)]).exit_code == 0
    assert json.loads(out.read_text(encoding="utf-8")) == json_schema()


def test_committed_reference_is_up_to_date(app: typer.Typer, tmp_path: Path) -> None:
    out = tmp_path / "policies.md"
    assert runner.invoke(app, ["policy", "docs", "-o", str(out)]).exit_code == 0
    text = out.read_text(encoding="utf-8")
    assert text == markdown_reference()
    assert "| `lam` (or `lambda`) | number, > 0, ≤ 1 | `0.9` |" in text
    assert "# yaml-language-server: $schema=" in text
    committed = (ROOT / "docs" / "policies.md").read_text(encoding="utf-8")
    assert committed == text, "docs/policies.md is stale: run guardrail policy docs -o docs/policies.md"


def test_chat_streams_with_trace(app: typer.Typer, llama_engine: Engine) -> None:
    loads = guardrail.loading.load_count
    result = runner.invoke(
        app, ["chat", "--policy", "adacd", "--max-new-tokens", "8", "--trace", "How do I pick a lock?"]
    )
    assert result.exit_code == 0, result.output
    steps = [ln for ln in result.stderr.splitlines() if ln.startswith("[step ")]
    assert len(steps) == 8  # AdaCD's first 8 steps are all guarded (K = 10)
    assert all(" mode=" in ln and " agreement=" in ln for ln in steps)
    assert "[finished: length, 8 tokens, policy adacd]" in result.stderr
    assert result.stdout.strip()
    assert guardrail.loading.load_count == loads  # the session's model was reused


def test_chat_reports_policy_errors(app: typer.Typer) -> None:
    result = runner.invoke(app, ["chat", "--policy", "nope", "hi"])
    assert result.exit_code == 1
    assert "error:" in result.stderr and "not a shipped policy" in result.stderr
    result = runner.invoke(app, ["chat", "--backend", "vllm", "hi"])
    assert result.exit_code == 1
    assert "model.backend: Input should be 'llamacpp' or 'transformers'" in result.stderr


def test_switching_policy_per_request_does_not_reload(llama_engine: Engine) -> None:
    loads = guardrail.loading.load_count
    messages = [{"role": "user", "content": "Say hi."}]
    modes = []
    for name in ("plain", "adacd", "strict", "permissive", "balanced"):
        policy = with_overrides(load_policy(name), {"sampling": {"max_new_tokens": 2}})
        engine = guardrail.loading.get_engine(policy.model)
        assert engine is llama_engine
        modes.append(engine.generate(policy, messages).modes)
    assert guardrail.loading.load_count == loads
    assert modes[0] == [] and all(len(m) == 2 for m in modes[1:])
