"""Loaded models, once each: the engine for a model config, cached by its load options.

Backends are cached by (backend, path, load options), so switching policy per request never
reloads weights. Engines made here know how to load further models (an expert on another model
asks its engine), so nothing below this module imports it.

The cache is bounded: it keeps the ``$GUARDRAIL_MAX_MODELS`` (default 4, :data:`MAX_MODELS`)
most recently used engines, loaded models and wrapped backends together, and drops the least
recently used one beyond that, so each new setting (``n_ctx`` 2048, 2049, ...) does not keep
another copy of the model for ever. A dropped engine is freed with its model once no caller
holds it; while one does, it is still the engine returned for its settings (looked up by weak
reference), so a model in use is never loaded twice.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any

from guardrail.adapters.base import Backend
from guardrail.engine import Engine
from guardrail.errors import ConfigError, ModelNotFoundError
from guardrail.models import resolve_model_path
from guardrail.policy.model import ModelConfig

BACKENDS = ("llamacpp", "transformers")

MAX_MODELS_ENV = "GUARDRAIL_MAX_MODELS"
"""Environment variable: how many engines the cache keeps (a whole number, at least 1)."""
MAX_MODELS = 4
"""Engines kept when ``$GUARDRAIL_MAX_MODELS`` is not set."""

_cache: OrderedDict[tuple[Any, ...], Engine] = OrderedDict()  # least recently used first
_live: weakref.WeakValueDictionary[tuple[Any, ...], Engine] = weakref.WeakValueDictionary()
_cache_lock = threading.Lock()
load_count = 0  # models loaded in this process (tests count reloads with it)


def _cache_key(cfg: ModelConfig) -> tuple[Any, ...]:
    path = str(resolve_model_path(cfg.path))
    if cfg.backend == "llamacpp":
        return (cfg.backend, path, cfg.n_ctx, cfg.n_threads, cfg.n_gpu_layers, cfg.n_streams,
                cfg.kv, _lora_key(cfg))
    return (cfg.backend, path, cfg.device, cfg.dtype, cfg.trust_remote_code, _lora_key(cfg))


def _lora_key(cfg: ModelConfig) -> str | None:
    return None if cfg.lora is None else str(Path(cfg.lora).expanduser().resolve())


def max_models() -> int:
    """How many engines the cache keeps: ``$GUARDRAIL_MAX_MODELS``, else :data:`MAX_MODELS`."""
    text = os.environ.get(MAX_MODELS_ENV, "").strip()
    if not text:
        return MAX_MODELS
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise ConfigError(f"{MAX_MODELS_ENV} must be a whole number of at least 1, got {text!r}")
    return value


def _lookup(key: tuple[Any, ...], dropped: list[Engine]) -> Engine | None:
    """The engine cached (or still held by a caller) for ``key``, made the most recently used."""
    engine = _cache.get(key)
    if engine is None:
        engine = _live.get(key)
    return None if engine is None else _store(key, engine, dropped)


def _store(key: tuple[Any, ...], engine: Engine, dropped: list[Engine]) -> Engine:
    """Cache ``engine`` as the most recently used; the least recently used beyond the bound go
    to ``dropped`` (freed, with their models, when the caller lets go of that list, unless a
    caller still holds them: never under the lock)."""
    limit = max_models()
    _cache[key] = engine
    _cache.move_to_end(key)
    _live[key] = engine
    while len(_cache) > limit:
        dropped.append(_cache.popitem(last=False)[1])
    return engine


def _load_backend(cfg: ModelConfig, loaded: Any = None) -> Backend:
    global load_count
    path = resolve_model_path(cfg.path)
    if loaded is not None:
        _check_loaded(cfg, path, loaded)
    if cfg.backend == "llamacpp":
        from guardrail.adapters.llamacpp import LlamaCppBackend  # optional: llama-cpp-python

        backend: Backend = LlamaCppBackend(
            path if loaded is None else loaded, n_ctx=cfg.n_ctx, n_threads=cfg.n_threads,
            n_gpu_layers=cfg.n_gpu_layers, n_seq_max=cfg.n_streams, kv=cfg.kv,
        )
        if cfg.lora is not None:
            backend = backend.with_lora(cfg.lora)
    elif cfg.backend == "transformers":
        from guardrail.adapters.transformers import TransformersBackend  # optional: torch

        weights, tokenizer = (path, None) if loaded is None else loaded
        backend = TransformersBackend(
            weights, tokenizer=tokenizer, device=cfg.device, dtype=cfg.dtype,
            trust_remote_code=cfg.trust_remote_code,
        )
        if cfg.lora is not None:
            backend.merge_lora(cfg.lora)
    else:  # pragma: no cover - the schema rejects it first
        raise ConfigError(f"backend must be one of {', '.join(BACKENDS)}, got {cfg.backend!r}")
    load_count += loaded is None  # borrowed weights were loaded by their owner
    return backend


def _check_loaded(cfg: ModelConfig, path: Path, loaded: Any) -> None:
    """A ConfigError unless ``loaded`` holds the weights ``cfg`` names, for ``cfg``'s backend:
    a ``llama_cpp.Llama`` of the GGUF, or a transformers (model, tokenizer) pair."""
    if cfg.backend == "llamacpp":
        source = getattr(loaded, "model_path", None)
        fits = source is not None and Path(source).resolve() == path
    else:
        fits = isinstance(loaded, tuple) and len(loaded) == 2 and cfg.lora is None
        source = (getattr(getattr(loaded[0], "config", None), "_name_or_path", None) if fits
                  else type(loaded).__name__)
    if not fits:
        raise ConfigError(f"loaded weights of {source!r} cannot serve model {str(path)!r} on "
                          f"backend {cfg.backend!r}")


def get_engine(cfg: ModelConfig, *, loaded: Any = None) -> Engine:
    """The engine for ``cfg``, loading the model on first use only (or again after the bounded
    cache dropped it and no caller held it). ``loaded``: a ``llama_cpp.Llama`` already holding
    ``cfg``'s GGUF (an adopted ChatLlamaCpp's) or a transformers (model, tokenizer) pair of
    ``cfg``'s directory (an adopted ChatHuggingFace's), whose weights are borrowed instead of
    read again."""
    key = _cache_key(cfg)
    dropped: list[Engine] = []
    with _cache_lock:
        engine = _lookup(key, dropped)
        if engine is None:
            max_models()  # a bad $GUARDRAIL_MAX_MODELS fails before loading, not after
            backend = _load_backend(cfg) if loaded is None else _load_backend(cfg, loaded)
            engine = _store(key, Engine(backend, load=get_engine), dropped)
    return engine


def loaded_engine(cfg: ModelConfig) -> Engine | None:
    """The engine for ``cfg`` if it is loaded already (nothing is loaded here)."""
    try:
        key = _cache_key(cfg)
    except ModelNotFoundError:
        return None
    with _cache_lock:
        return _cache.get(key) or _live.get(key)


def model_name(cfg: ModelConfig) -> str:
    """The name the backend for ``cfg`` reports (``backend.model_name``), without loading it:
    the loaded engine's when it is cached, else what the backend will call itself (the file or
    folder name; a transformers LoRA merged into the weights adds ``+adapter``). LangChain's
    ``ls_model_name`` and the answer's ``model_name`` come from here and from the backend."""
    engine = loaded_engine(cfg)
    if engine is not None:
        return engine.backend.model_name
    try:
        name = resolve_model_path(cfg.path).name
    except ModelNotFoundError:  # the call that loads it fails with this error itself
        return Path(str(cfg.path)).name
    if cfg.backend == "transformers" and cfg.lora is not None:
        name = f"{name}+{Path(cfg.lora).name}"
    return name


def engine_for(backend: Backend) -> Engine:
    """Wrap an already-loaded backend (it is cached by identity, in the same bounded cache)."""
    key = ("object", id(backend))
    dropped: list[Engine] = []
    with _cache_lock:
        engine = _lookup(key, dropped)
        if engine is None or engine.backend is not backend:
            engine = _store(key, Engine(backend, load=get_engine), dropped)
    return engine


def clear_cache() -> None:
    """Forget every cached model (they are freed once no caller holds them)."""
    with _cache_lock:
        _cache.clear()
        _live.clear()


__all__ = [
    "BACKENDS", "MAX_MODELS", "MAX_MODELS_ENV", "clear_cache", "engine_for", "get_engine",
    "load_count", "max_models",
]
