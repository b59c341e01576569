"""Policy hardening: strict numbers and switches, no empty policies, a clear message for both
spellings of one field, policy files re-read when edited, a bounded model cache, and policies
read as data (the safe YAML loader; ``trust_remote_code`` only where a policy says so)."""

from __future__ import annotations

import gc
import os
import re
import sys
import types
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

import guardrail.loading as loading
from fakes import FakeBackend
from guardrail.errors import ConfigError
from guardrail.langchain.options import as_policy
from guardrail.policy import (
    ModelConfig,
    Policy,
    PolicyValidationError,
    load_policy,
    load_policy_text,
    shipped_policies,
    with_overrides,
)
from guardrail.policy.yamlsource import _LineLoader

ROOT = Path(__file__).resolve().parents[2]


def write(path: Path, text: str, bump: int = 0) -> Path:
    """Write ``text``; move the mtime on by ``bump`` seconds (coarse filesystem clocks)."""
    path.write_text(text, encoding="utf-8")
    if bump:
        stamp = 1_700_000_000 + bump
        os.utime(path, (stamp, stamp))
    return path


def problems_of(path: Path, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(PolicyValidationError) as info:
        load_policy(path, env=env)
    return [str(p) for p in info.value.problems]


# ------------------------------------------------------------------ 1. strict types


@pytest.mark.parametrize(
    ("yaml_text", "field", "expected"),
    [
        ("model:\n  trust_remote_code: 'yes'\n", "model.trust_remote_code",
         "Input should be a valid boolean, got 'yes'"),
        ("model:\n  trust_remote_code: 1\n", "model.trust_remote_code",
         "Input should be a valid boolean, got 1"),
        ("model:\n  trust_remote_code: 'true'\n", "model.trust_remote_code",
         "Input should be a valid boolean, got 'true'"),
        ("model:\n  n_gpu_layers: true\n", "model.n_gpu_layers",
         "Input should be a valid integer, got True"),
        ("model:\n  n_ctx: '4096'\n", "model.n_ctx", "Input should be a valid integer, got '4096'"),
        ("model:\n  n_ctx: 4096.0\n", "model.n_ctx", "Input should be a valid integer, got 4096.0"),
        ("model:\n  n_threads: true\n", "model.n_threads",
         "Input should be a valid integer, got True"),
        ("logging:\n  decisions: 'on'\n", "logging.decisions",
         "Input should be a valid boolean, got 'on'"),
        ("sampling:\n  max_new_tokens: true\n", "sampling.max_new_tokens",
         "Input should be a valid integer, got True"),
        ("sampling:\n  temperature: true\n", "sampling.temperature",
         "Input should be a valid number, got True"),
        ("sampling:\n  top_p: '0.5'\n", "sampling.top_p", "Input should be a valid number, got '0.5'"),
        ("strategy:\n  kind: adacd\n  steps: true\n", "strategy.steps",
         "Input should be a valid integer, got True"),
        ("strategy:\n  kind: adacd\n  alpha: '2'\n", "strategy.alpha",
         "Input should be a valid number, got '2'"),
    ],
)
def test_no_lax_coercion_of_numbers_and_switches(
    tmp_path: Path, yaml_text: str, field: str, expected: str
) -> None:
    path = write(tmp_path / "p.yaml", yaml_text)
    [msg] = problems_of(path)
    line = yaml_text.count("\n")  # the offending key is on the last line
    assert msg.startswith(f"{path}:{line}: {field}: {expected}"), msg


def test_model_config_is_strict_in_python_too() -> None:
    with pytest.raises(ValidationError):
        ModelConfig(trust_remote_code="yes")  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        ModelConfig(n_gpu_layers=True)
    base = load_policy("plain")
    with pytest.raises(PolicyValidationError, match="model.trust_remote_code"):
        with_overrides(base, {"model": {"trust_remote_code": "yes"}})
    with pytest.raises(PolicyValidationError, match="model.n_ctx"):
        with_overrides(base, {"model": {"n_ctx": True}})


def test_ints_stay_valid_numbers_and_interpolation_still_reads_values() -> None:
    policy = load_policy_text(
        "sampling: {temperature: 1, top_p: 1, max_new_tokens: '${N:-12}', seed: '${SEED}'}\n"
        "strategy: {kind: adacd, alpha: '${ALPHA:-2.5}', lambda: '${LAM:-1}', steps: 3}\n"
        "model: {trust_remote_code: '${TRC:-false}', n_ctx: '${CTX}'}\n"
        "logging: {decisions: '${LOG:-true}'}\n",
        env={"SEED": "7", "CTX": "2048"},
    )
    assert policy.sampling.temperature == 1.0 and isinstance(policy.sampling.temperature, float)
    assert policy.sampling.max_new_tokens == 12 and policy.sampling.seed == 7
    assert policy.strategy.alpha == 2.5 and policy.strategy.lam == 1.0  # type: ignore[union-attr]
    assert policy.model.trust_remote_code is False and policy.model.n_ctx == 2048
    assert policy.logging.decisions is True
    # interpolated text that does not spell the value is refused, not coerced
    for env, field in (({"TRC": "yes"}, "model.trust_remote_code"), ({"N": "1.5"}, "max_new_tokens")):
        with pytest.raises(PolicyValidationError, match=re.escape(field)):
            load_policy_text(
                "model: {trust_remote_code: '${TRC:-false}'}\n"
                "sampling: {max_new_tokens: '${N:-12}'}\n", env=env,
            )
    # a string field keeps the interpolated text as a plain string
    p = load_policy_text("system_prompt: 'n=${N}'\nname: '${N}'\n", env={"N": "3"})
    assert p.system_prompt == "n=3" and type(p.system_prompt) is str and p.name == "3"


# ------------------------------------------------------------------ 2. empty policies


@pytest.mark.parametrize("text", ["", "\n\n", "# only a comment\n# and another\n", "null\n", "~\n"])
def test_empty_policy_file_is_refused(tmp_path: Path, text: str) -> None:
    path = write(tmp_path / "empty.yaml", text)
    [msg] = problems_of(path)
    assert msg.startswith(f"{path}: policy file is empty; "), msg
    with pytest.raises(PolicyValidationError, match="policy file is empty"):
        load_policy_text(text, source="inline.yaml")


def test_empty_parent_policy_is_refused(tmp_path: Path) -> None:
    parent = write(tmp_path / "parent.yaml", "# nothing yet\n")
    child = write(tmp_path / "child.yaml", "extends: parent.yaml\nname: child\n")
    [msg] = problems_of(child)
    assert msg.startswith(f"{parent.resolve()}: policy file is empty"), msg


def test_explicit_fields_are_still_a_policy() -> None:
    assert load_policy_text("extends: plain\n").strategy.kind == "plain"
    assert load_policy_text("name: x\n").name == "x"


# ------------------------------------------------------------------ 3. two spellings


@pytest.mark.parametrize("order", [("lam", "lambda"), ("lambda", "lam")])
def test_both_spellings_of_one_field(tmp_path: Path, order: tuple[str, str]) -> None:
    path = write(
        tmp_path / "p.yaml", f"strategy:\n  kind: adacd\n  {order[0]}: 0.5\n  {order[1]}: 0.6\n"
    )
    [msg] = problems_of(path)
    assert "both 'lam' and 'lambda' given: two spellings of one field; keep one" in msg, msg
    assert "did you mean" not in msg and "unknown key" not in msg
    assert msg.startswith(f"{path}:") and "strategy.lam" in msg


# ------------------------------------------------------------------ 4. policy files re-read


def _alpha(policy: Policy) -> float:
    return policy.strategy.alpha  # type: ignore[union-attr,no-any-return]


def test_edited_policy_file_is_read_again_whatever_its_spelling(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    path = write(tmp_path / "stale.yaml", "strategy: {kind: adacd, alpha: 1.0}\n", bump=1)
    first = as_policy("stale.yaml")
    assert _alpha(first) == 1.0
    assert as_policy("./stale.yaml") is first  # one file, one cache entry
    assert as_policy(path) is first  # unchanged: not read again
    write(path, "strategy: {kind: adacd, alpha: 2.0}\n", bump=2)
    assert _alpha(as_policy("stale.yaml")) == 2.0
    assert _alpha(as_policy("./stale.yaml")) == 2.0
    assert _alpha(as_policy(str(path))) == 2.0


def test_edited_parent_policy_file_is_read_again(tmp_path: Path) -> None:
    parent = write(tmp_path / "parent.yaml", "strategy: {kind: adacd, alpha: 1.0}\n", bump=1)
    child = write(tmp_path / "child.yaml", "extends: parent.yaml\nname: child\n", bump=1)
    assert _alpha(as_policy(child)) == 1.0
    write(parent, "strategy: {kind: adacd, alpha: 3.0}\n", bump=2)
    assert _alpha(as_policy(child)) == 3.0


def test_a_broken_edit_is_an_error_and_not_cached(tmp_path: Path) -> None:
    path = write(tmp_path / "p.yaml", "strategy: {kind: adacd, alpha: 1.0}\n", bump=1)
    assert _alpha(as_policy(path)) == 1.0
    write(path, "strategy: {kind: adacd, alpha: -1}\n", bump=2)
    with pytest.raises(PolicyValidationError, match="strategy.alpha"):
        as_policy(path)
    write(path, "strategy: {kind: adacd, alpha: 4.0}\n", bump=3)
    assert _alpha(as_policy(path)) == 4.0


def test_shipped_names_stay_cached_by_name() -> None:
    assert as_policy("balanced") is as_policy("balanced")


# ------------------------------------------------------------------ 5. bounded model cache


@pytest.fixture
def fake_loads(monkeypatch: pytest.MonkeyPatch) -> list[weakref.ref[FakeBackend]]:
    """A fresh model cache whose loader makes fake backends; returns a weak ref per load."""
    monkeypatch.setattr(loading, "_cache", OrderedDict())
    monkeypatch.setattr(loading, "_live", weakref.WeakValueDictionary())
    monkeypatch.delenv(loading.MAX_MODELS_ENV, raising=False)
    loads: list[weakref.ref[FakeBackend]] = []

    def load(cfg: ModelConfig) -> FakeBackend:
        backend = FakeBackend()
        loads.append(weakref.ref(backend))
        return backend

    monkeypatch.setattr(loading, "_load_backend", load)
    return loads


def _cfg(tmp_path: Path, n_ctx: int) -> ModelConfig:
    return ModelConfig(path=str(tmp_path), n_ctx=n_ctx)


def _alive(loads: list[weakref.ref[FakeBackend]]) -> int:
    gc.collect()
    return sum(ref() is not None for ref in loads)


def test_each_load_setting_does_not_keep_a_model_for_ever(
    tmp_path: Path, fake_loads: list[weakref.ref[FakeBackend]]
) -> None:
    assert loading.max_models() == loading.MAX_MODELS == 4
    for n_ctx in range(2048, 2048 + 10):
        loading.get_engine(_cfg(tmp_path, n_ctx))
    assert len(fake_loads) == 10
    assert _alive(fake_loads) == 4  # the four most recent; the rest freed
    assert [r() is not None for r in fake_loads] == [False] * 6 + [True] * 4
    before = len(fake_loads)
    loading.get_engine(_cfg(tmp_path, 2048 + 9))  # still cached: not loaded again
    assert len(fake_loads) == before


def test_least_recently_used_goes_first(
    tmp_path: Path, fake_loads: list[weakref.ref[FakeBackend]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(loading.MAX_MODELS_ENV, "2")
    a = loading.get_engine(_cfg(tmp_path, 100)).backend
    loading.get_engine(_cfg(tmp_path, 200))
    assert loading.get_engine(_cfg(tmp_path, 100)).backend is a  # now the most recent
    loading.get_engine(_cfg(tmp_path, 300))  # drops 200, not 100
    assert len(fake_loads) == 3
    assert loading.get_engine(_cfg(tmp_path, 100)).backend is a
    del a
    assert _alive(fake_loads) == 2
    loading.get_engine(_cfg(tmp_path, 200))
    assert len(fake_loads) == 4  # 200 was dropped, so it loads again


def test_an_engine_a_caller_holds_is_never_loaded_twice(
    tmp_path: Path, fake_loads: list[weakref.ref[FakeBackend]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(loading.MAX_MODELS_ENV, "1")
    held = loading.get_engine(_cfg(tmp_path, 100))
    for n_ctx in (200, 300, 400):
        loading.get_engine(_cfg(tmp_path, n_ctx))
    assert loading.get_engine(_cfg(tmp_path, 100)) is held  # found again, not reloaded
    assert len(fake_loads) == 4
    assert _alive(fake_loads) == 1  # only the held one: the cache keeps no more than 1
    wrapped = FakeBackend()
    engine = loading.engine_for(wrapped)
    assert loading.engine_for(wrapped) is engine
    del held
    assert _alive(fake_loads) == 0  # the cache now holds the wrapped backend's engine


@pytest.mark.parametrize("value", ["0", "-1", "many", "1.5"])
def test_bad_max_models_is_an_error(
    tmp_path: Path, fake_loads: list[weakref.ref[FakeBackend]], monkeypatch: pytest.MonkeyPatch,
    value: str,
) -> None:
    monkeypatch.setenv(loading.MAX_MODELS_ENV, value)
    with pytest.raises(ConfigError, match=loading.MAX_MODELS_ENV):
        loading.get_engine(_cfg(tmp_path, 100))
    assert fake_loads == []  # refused before loading anything


# ------------------------------------------------------------------ 6. policies are data


def test_policy_yaml_cannot_construct_python_objects(tmp_path: Path) -> None:
    assert issubclass(_LineLoader, __import__("yaml").SafeLoader)
    marker = tmp_path / "made-by-yaml"
    for text in (
        f"name: !!python/object/apply:os.mkdir ['{marker}']\n",
        f"!!python/object/apply:os.mkdir ['{marker}']\n",
        "name: !!python/name:os.system\n",
        "model: !!python/object:guardrail.policy.ModelConfig {trust_remote_code: true}\n",
    ):
        path = write(tmp_path / "evil.yaml", text)
        assert problems_of(path)  # refused (perhaps as not a policy at all)
        with pytest.raises(PolicyValidationError, match="invalid YAML: .*constructor for the tag"):
            load_policy_text(text)
    assert not marker.exists()


def test_no_unsafe_yaml_loading_in_the_package() -> None:
    unsafe = re.compile(
        r"yaml\.(load|load_all|full_load|full_load_all|unsafe_load|unsafe_load_all)\(|"
        r"yaml\.(Loader|FullLoader|UnsafeLoader|CLoader|CFullLoader|CUnsafeLoader)\b"
    )
    found = [
        f"{f.relative_to(ROOT)}:{n}"
        for top in ("guardrail", "adapters")
        for f in sorted((ROOT / top).rglob("*.py"))
        for n, line in enumerate(f.read_text(encoding="utf-8").splitlines(), 1)
        if unsafe.search(line)
    ]
    assert found == []


def _model_configs(value: Any) -> list[ModelConfig]:
    """Every ModelConfig inside a policy (the model, judge, probe and expert models)."""
    if isinstance(value, ModelConfig):
        return [value]
    if isinstance(value, BaseModel):
        return [m for name in type(value).model_fields for m in _model_configs(getattr(value, name))]
    if isinstance(value, (list, tuple)):
        return [m for v in value for m in _model_configs(v)]
    return []


def test_trust_remote_code_only_where_a_policy_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert ModelConfig().trust_remote_code is False
    assert Policy().model.trust_remote_code is False
    for name in shipped_policies():
        configs = _model_configs(load_policy(name))
        assert configs and not any(c.trust_remote_code for c in configs), name
    seen: list[bool] = []

    class Recorder:
        def __init__(self, path: Path, *, trust_remote_code: bool, **kwargs: Any) -> None:
            seen.append(trust_remote_code)

    module = types.ModuleType("guardrail.adapters.transformers")
    module.TransformersBackend = Recorder  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "guardrail.adapters.transformers", module)
    monkeypatch.setattr(loading, "load_count", loading.load_count)
    base = f"model: {{backend: transformers, path: '{tmp_path}'"
    loading._load_backend(load_policy_text(base + "}\n").model)
    loading._load_backend(load_policy_text(base + ", trust_remote_code: false}\n").model)
    loading._load_backend(load_policy_text(base + ", trust_remote_code: true}\n").model)
    assert seen == [False, False, True]
