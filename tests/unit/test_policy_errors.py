"""Every bad policy names its file, line, field path and what is allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from guardrail.errors import PolicyError
from guardrail.policy import PolicyValidationError, load_policy, load_policy_text


def problems_of(path: Path) -> list[str]:
    with pytest.raises(PolicyValidationError) as info:
        load_policy(path)
    assert isinstance(info.value, PolicyError) and isinstance(info.value, ValueError)
    return [str(p) for p in info.value.problems]


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_unknown_key_suggests_the_close_one(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "name: p\nstrategy:\n  kind: adacd\n  alpah: 3\n")
    [msg] = problems_of(path)
    assert msg.startswith(f"{path}:4: strategy.alpah: unknown key 'alpah'")
    assert "did you mean 'alpha'?" in msg
    assert "Allowed keys: alpha, beta, kind, lam, lambda, safety_prompt, steps" in msg


def test_unknown_top_level_key(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "sytem_prompt: hi\n")
    [msg] = problems_of(path)
    assert msg.startswith(f"{path}:1: sytem_prompt: unknown key")
    assert "did you mean 'system_prompt'?" in msg


def test_wrong_type(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "sampling:\n  max_new_tokens: lots\n")
    [msg] = problems_of(path)
    assert msg.startswith(f"{path}:2: sampling.max_new_tokens: Input should be a valid integer")
    assert "got 'lots'" in msg


def test_out_of_range_adacd_parameters_all_listed(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "p.yaml",
        "strategy:\n  kind: adacd\n  alpha: -1\n  lambda: 1.5\n  beta: 1\n  steps: -2\n",
    )
    msgs = problems_of(path)
    assert len(msgs) == 4
    assert msgs[0].startswith(f"{path}:3: strategy.alpha: Input should be greater than or equal to 0")
    assert msgs[1].startswith(f"{path}:4: strategy.lambda: Input should be less than or equal to 1")
    assert "λ, agreement threshold" in msgs[1]
    assert msgs[2].startswith(f"{path}:5: strategy.beta: Input should be less than 1")
    assert msgs[3].startswith(f"{path}:6: strategy.steps:")


def test_unknown_strategy_lists_the_known_ones(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "name: p\nstrategy:\n  kind: magic\n")
    [msg] = problems_of(path)
    assert msg.startswith(f"{path}:3: strategy.kind: unknown strategy 'magic'; allowed: plain, adacd")


def test_missing_strategy_kind(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "strategy:\n  alpha: 2\n")
    [msg] = problems_of(path)
    assert msg.startswith(f"{path}:1: strategy: missing key 'kind'")
    assert "allowed: plain, adacd" in msg


def test_bad_enum_value_lists_choices(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "model:\n  backend: vllm\non_refusal: {action: block}\n")
    msgs = problems_of(path)
    assert msgs[0].startswith(f"{path}:2: model.backend: Input should be 'llamacpp' or 'transformers'")
    assert msgs[1].startswith(f"{path}:3: on_refusal.action: Input should be 'allow', 'replace' or")


def test_bad_rule_regex(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "rules:\n  - name: r\n    pattern: '(open'\n")
    [msg] = problems_of(path)
    assert msg.startswith(f"{path}:3: rules[0].pattern: not a valid regular expression")


def test_missing_rule_field_points_at_the_rule(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "rules:\n  - name: r\n")
    [msg] = problems_of(path)
    assert msg.startswith(f"{path}:2: rules[0].pattern: required field is missing")


def test_error_in_parent_names_the_parent_file_and_line(tmp_path: Path) -> None:
    base = write(tmp_path, "base.yaml", "name: base\n\nsampling:\n  top_p: 7\n")
    leaf = write(tmp_path, "leaf.yaml", "extends: base.yaml\nstrategy:\n  kind: adacd\n  alpha: -3\n")
    msgs = problems_of(leaf)
    assert f"{base}:4: sampling.top_p: Input should be less than or equal to 1" in msgs[0]
    assert msgs[1].startswith(f"{leaf}:4: strategy.alpha:")


def test_extends_cycle(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", "extends: b.yaml\n")
    b = write(tmp_path, "b.yaml", "name: b\nextends: a.yaml\n")
    [msg] = problems_of(a)
    assert msg.startswith(f"{b}:2: extends: extends cycle: {a.resolve()} -> {b.resolve()} -> ")


def test_self_extends_is_a_cycle(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", "extends: a.yaml\n")
    [msg] = problems_of(a)
    assert "extends cycle" in msg and msg.startswith(f"{a}:1: extends:")


def test_missing_extends_target(tmp_path: Path) -> None:
    a = write(tmp_path, "a.yaml", "name: a\nextends: nothere.yaml\n")
    [msg] = problems_of(a)
    assert msg.startswith(f"{a}:2: extends: no such policy file, and 'nothere.yaml' is not")
    assert "(shipped: adacd, balanced" in msg and "strict" in msg
    assert msg.endswith(f"looked for {tmp_path / 'nothere.yaml'}")


def test_missing_file() -> None:
    with pytest.raises(PolicyError, match=r"no such policy file.*'/no/such/p\.yaml'.*shipped:"):
        load_policy("/no/such/p.yaml")


def test_unknown_name() -> None:
    with pytest.raises(PolicyError, match=r"'balancd' is not a shipped policy \(shipped: adacd"):
        load_policy("balancd")


def test_invalid_yaml_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "name: p\nstrategy:\n  kind: adacd\n alpha: [1,\n")
    [msg] = problems_of(path)
    assert msg.startswith(f"{path}:4: invalid YAML:")


def test_not_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "- just\n- a list\n")
    [msg] = problems_of(path)
    assert msg == f"{path}:1: a policy must be a mapping of fields (key: value), got list"


def test_duplicate_key(tmp_path: Path) -> None:
    path = write(tmp_path, "p.yaml", "name: a\nname: b\n")
    [msg] = problems_of(path)
    assert msg == f"{path}:2: name: duplicate key 'name'"


def test_unset_env_var_without_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("GUARDRAIL_TEST_UNSET", raising=False)
    path = write(tmp_path, "p.yaml", "name: p\nmodel:\n  path: ${GUARDRAIL_TEST_UNSET}/m.gguf\n")
    [msg] = problems_of(path)
    assert msg.startswith(
        f"{path}:3: model.path: environment variable GUARDRAIL_TEST_UNSET is not set"
    )
    assert "${GUARDRAIL_TEST_UNSET:-default}" in msg


def test_nan_and_inf_are_refused() -> None:
    with pytest.raises(PolicyError, match=r"strategy\.alpha"):
        load_policy_text("strategy: {kind: adacd, alpha: .inf}")
    with pytest.raises(PolicyError, match=r"sampling\.temperature"):
        load_policy_text("sampling: {temperature: .nan}")


def test_judge_settings_need_the_judge_detector() -> None:
    with pytest.raises(PolicyError, match=r"<string>:1: refusal: judge settings are only used"):
        load_policy_text("refusal:\n  judge: {max_new_tokens: 4}\n")


def test_recursive_alias_and_alias_bombs() -> None:
    with pytest.raises(PolicyError, match="recursive alias"):
        load_policy_text("rules: &a [*a]\n")
    bomb = "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join(['*' + p] * 10)}]\n"
        for p, c in zip("abcdefg", "bcdefgh")
    )
    with pytest.raises(PolicyError, match="too large"):
        load_policy_text(bomb)
