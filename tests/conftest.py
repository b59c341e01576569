"""Shared fixtures: each real model is loaded once per test session; the fake backend
(``tests/fakes.py``, no model) is fresh for each test."""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fakes import FakeBackend
from guardrail.engine import Engine
from guardrail.loading import engine_for, get_engine
from guardrail.models import embedded_model_path
from guardrail.policy import ModelConfig


def _have(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _embedded_or_skip() -> None:
    try:
        embedded_model_path()
    except FileNotFoundError as e:  # pragma: no cover - depends on the install
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def tf_engine() -> Engine:
    """The embedded model on the transformers backend (fp32, CPU)."""
    if not _have("transformers"):
        pytest.skip("transformers is not installed")
    _embedded_or_skip()
    return get_engine(ModelConfig(backend="transformers"))


@pytest.fixture(scope="session")
def llama_engine() -> Engine:
    """The embedded model on the llama.cpp backend."""
    if not _have("llama_cpp"):
        pytest.skip("llama-cpp-python is not installed")
    _embedded_or_skip()
    return get_engine(ModelConfig(backend="llamacpp"))


@pytest.fixture(params=["llamacpp", "transformers"])
def engine(request: pytest.FixtureRequest) -> Engine:
    """Each backend in turn."""
    name = "llama_engine" if request.param == "llamacpp" else "tf_engine"
    return request.getfixturevalue(name)


@pytest.fixture
def fake_backend() -> FakeBackend:
    """A deterministic table-driven backend (ChatML, ~40 words): no model is loaded."""
    return FakeBackend()


@pytest.fixture
def fake_engine(fake_backend: FakeBackend) -> Engine:
    """The engine of :func:`fake_backend`."""
    return engine_for(fake_backend)


@pytest.fixture(scope="session")
def lora_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A PEFT-format down_proj adapter of the embedded model (r=4, α=8, seed 0), converted by
    the CLI to a GGUF LoRA."""
    pytest.importorskip("torch")  # the converter reads PEFT adapters with torch
    pytest.importorskip("gguf")
    from safetensors.numpy import save_file
    from typer.testing import CliRunner

    from guardrail.cli import app

    root = tmp_path_factory.mktemp("lora")
    rng = np.random.default_rng(0)
    tensors = {}
    for i in range(30):  # SmolLM2-135M: 30 layers, hidden 576, MLP 1536
        key = f"base_model.model.model.layers.{i}.mlp.down_proj"
        tensors[f"{key}.lora_A.weight"] = rng.normal(0, 0.05, (4, 1536)).astype(np.float32)
        tensors[f"{key}.lora_B.weight"] = rng.normal(0, 0.05, (576, 4)).astype(np.float32)
    peft_dir = root / "peft"
    peft_dir.mkdir()
    save_file(tensors, str(peft_dir / "adapter_model.safetensors"))
    (peft_dir / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": 4, "lora_alpha": 8, "target_modules": ["down_proj"]}))
    out = root / "safety.gguf"
    res = CliRunner().invoke(app, ["experts", "convert-lora", str(peft_dir), "-o", str(out)])
    assert res.exit_code == 0, res.output
    return out


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[str]:
    """A local Ray cluster for the whole session (Ray Serve and Ray Data tests share it): 2 CPUs,
    no dashboard, started in this process and stopped at the end; yields its address (for CLI
    runs in a subprocess, ``--address``). Skips when the ``ray`` extra is not installed."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.data")
    pytest.importorskip("ray.serve")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level="WARNING")
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
