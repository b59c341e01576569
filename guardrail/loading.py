"""Loaded models, once each: the engine for a model config, cached by its load options.

Backends are cached by (backend, path, load options), so switching policy per request never
reloads weights. Engines made here know how to load further models (an expert on another model
asks its engine), so nothing below this module imports it.
"""

from __future__ import annotations

import threading
from typing import Any

from guardrail.adapters.base import Backend
from guardrail.engine import Engine
from guardrail.errors import ConfigError
from guardrail.models import resolve_model_path
from guardrail.policy.model import ModelConfig

BACKENDS = ("llamacpp", "transformers")

_cache: dict[tuple[Any, ...], Engine] = {}
_cache_lock = threading.Lock()
load_count = 0  # models loaded in this process (tests count reloads with it)


def _cache_key(cfg: ModelConfig) -> tuple[Any, ...]:
    path = str(resolve_model_path(cfg.path))
    if cfg.backend == "llamacpp":
        return (cfg.backend, path, cfg.n_ctx, cfg.n_threads, cfg.n_gpu_layers)
    return (cfg.backend, path, cfg.device, cfg.dtype, cfg.trust_remote_code)


def _load_backend(cfg: ModelConfig) -> Backend:
    global load_count
    path = resolve_model_path(cfg.path)
    if cfg.backend == "llamacpp":
        from guardrail.adapters.llamacpp import LlamaCppBackend  # optional: llama-cpp-python

        backend: Backend = LlamaCppBackend(
            path, n_ctx=cfg.n_ctx, n_threads=cfg.n_threads, n_gpu_layers=cfg.n_gpu_layers
        )
    elif cfg.backend == "transformers":
        from guardrail.adapters.transformers import TransformersBackend  # optional: torch

        backend = TransformersBackend(
            path, device=cfg.device, dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code
        )
    else:  # pragma: no cover - the schema rejects it first
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {cfg.backend!r}")
    load_count += 1
    return backend


def get_engine(cfg: ModelConfig) -> Engine:
    """The engine for ``cfg``, loading the model on first use only."""
    key = _cache_key(cfg)
    with _cache_lock:
        engine = _cache.get(key)
        if engine is None:
            engine = _cache[key] = Engine(_load_backend(cfg), load=get_engine)
        return engine


def engine_for(backend: Backend) -> Engine:
    """Wrap an already-loaded backend (it is cached by identity)."""
    key = ("object", id(backend))
    with _cache_lock:
        engine = _cache.get(key)
        if engine is None or engine.backend is not backend:
            engine = _cache[key] = Engine(backend, load=get_engine)
        return engine


def clear_cache() -> None:
    """Forget every cached model (they are freed once no caller holds them)."""
    with _cache_lock:
        _cache.clear()


__all__ = ["BACKENDS", "clear_cache", "engine_for", "get_engine", "load_count"]
