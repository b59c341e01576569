"""Shared fixtures: each real model is loaded once per test session; the fake backend
(``tests/fakes.py``, no model) is fresh for each test."""

from __future__ import annotations

import importlib.util

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
