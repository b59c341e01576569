"""The server's configuration: what the operator serves, where, and within which bounds.

Everything here is the operator's (command line, a YAML file, the environment); nothing in a
request can change it. :class:`ServeConfig` is strict (no unknown keys, no string-to-number
coercion) so a typo in a config file is an error naming the file, the line and the field, in
the same form as policy errors (:mod:`guardrail.policy.problems`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from guardrail.policy.problems import (
    PolicyProblem,
    PolicyValidationError,
    from_validation_error,
)
from guardrail.policy.yamlsource import parse_yaml, read_bounded
from guardrail.scale.config import RayServeSettings

API_KEYS_ENV = "GUARDRAIL_API_KEYS"
"""Environment variable holding API keys, comma-separated (added to the configured ones)."""
MAX_CONFIG_BYTES = 1 << 20
"""Largest server config file read (1 MiB); a larger file is refused unread."""


class ServeConfig(BaseModel):
    """What ``guardrail serve`` serves and its bounds.

    ``policies`` are shipped names or YAML paths, given by the operator; each is served under
    its policy name and the first is the default listed first. ``model``/``backend`` (and the
    load options) override every served policy's ``model`` section, so all of them decode on
    one loaded model.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    host: str = Field("127.0.0.1", min_length=1, description="Address to bind (loopback by "
                      "default; a non-loopback address should come with api_keys).")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0: any free port).")
    policies: list[str] = Field(
        default_factory=lambda: ["balanced"], min_length=1,
        description="Policies served, by shipped name or YAML path; the first is the default.",
    )
    model: str | None = Field(None, description="GGUF file or model directory for every served "
                              "policy (None: each policy's own model).")
    backend: Literal["llamacpp", "transformers"] | None = Field(
        None, description="Backend for every served policy (None: each policy's own)."
    )
    n_ctx: int | None = Field(2048, ge=16, description="Context size in tokens (llama.cpp): of "
                              "each stream with kv per_stream (the server's default), of all "
                              "together with unified; None: each policy's own.")
    n_threads: int | None = Field(None, ge=1, description="CPU threads (llama.cpp).")
    n_gpu_layers: int | None = Field(None, description="Layers on the GPU (llama.cpp; -1: all).")
    n_streams: int | None = Field(17, ge=1, le=256, description="Most token streams decoded at "
                                  "once (llama.cpp), all requests together: 17 decodes 8 "
                                  "two-stream requests (adacd, balanced) and keeps one for "
                                  "probes; None: each policy's own.")
    kv: Literal["unified", "per_stream"] | None = Field(
        "per_stream", description="llama.cpp KV cache: per_stream (the server's default: a "
        "cache of n_ctx per stream, so an answer never depends on the other requests decoded "
        "beside it) or unified (n_ctx in all, shared; less memory, answers may drift); None: "
        "each policy's own.")
    api_keys: list[str] = Field(
        default_factory=list, description="Bearer keys accepted on /v1 and /metrics (empty: no "
        f"auth). ${API_KEYS_ENV} (comma-separated) adds more.",
    )
    max_queue: int = Field(64, ge=1, description="Most chat requests in flight or waiting; one "
                           "more gets 429.")
    max_tokens: int = Field(1024, ge=1, description="Most tokens a request may ask for; also "
                            "caps each served policy's own max_new_tokens.")
    max_request_bytes: int = Field(1 << 20, ge=1024, description="Largest request body (bytes); "
                                   "a larger one gets 413.")
    preload: bool = Field(True, description="Load the models (and train or read a prompt "
                          "probe) at startup with a one-token answer per served policy.")
    ray: RayServeSettings | None = Field(None, description="Ray Serve deployment for `guardrail "
                                         "serve --ray` (replicas, autoscaling, resources; "
                                         "docs/scale.md); unused without --ray.")

    @field_validator("api_keys")
    @classmethod
    def _keys(cls, v: list[str]) -> list[str]:
        keys = [k.strip() for k in v]
        if any(not k for k in keys):
            raise ValueError("api_keys: a key must not be empty")
        return keys

    @field_validator("policies")
    @classmethod
    def _policies(cls, v: list[str]) -> list[str]:
        if any(not p.strip() for p in v):
            raise ValueError("policies: a policy name or path must not be empty")
        return v


class ServeConfigError(PolicyValidationError):
    """A server config file failed to load; ``problems`` names file, line and field of each.

    A :class:`~guardrail.errors.ConfigError` (through ``PolicyValidationError``), so the CLI
    reports it like any other bad setting."""


def keys_from_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """API keys from ``$GUARDRAIL_API_KEYS`` (comma-separated; blanks ignored)."""
    text = (os.environ if environ is None else environ).get(API_KEYS_ENV, "")
    return [k.strip() for k in text.split(",") if k.strip()]


def with_env_keys(config: ServeConfig, environ: Mapping[str, str] | None = None) -> ServeConfig:
    """``config`` with the keys of ``$GUARDRAIL_API_KEYS`` added (none twice)."""
    keys = list(dict.fromkeys([*config.api_keys, *keys_from_env(environ)]))
    return config if keys == config.api_keys else config.model_copy(update={"api_keys": keys})


def _looks_like_path(ref: str) -> bool:
    return ref.endswith((".yaml", ".yml", ".gguf")) or "/" in ref or os.sep in ref


def _relative_to(base: Path, ref: str) -> str:
    """A relative path written in a config file, taken from the file's folder."""
    path = Path(ref).expanduser()
    return ref if path.is_absolute() else str(base / path)


def load_serve_config(path: str | Path) -> ServeConfig:
    """Read a YAML server config (safe loader) and validate it.

    Relative policy and model paths in it are taken from the file's folder (shipped policy
    names stay names).

    Raises:
        ServeConfigError: (a :class:`~guardrail.errors.ConfigError`) naming the file, the line
            and the field of every problem.
    """
    file = Path(path)
    source = str(file)
    try:
        located = parse_yaml(read_bounded(file, MAX_CONFIG_BYTES, "a server config"), source)
    except PolicyValidationError as e:
        raise ServeConfigError(e.problems) from None
    data = located.data if located.data is not None else {}
    if not isinstance(data, dict):
        raise ServeConfigError([PolicyProblem(
            source, located.line_of(()) or 1, (),
            f"a server config must be a mapping of fields (key: value), got "
            f"{type(data).__name__}")])
    try:
        config = ServeConfig.model_validate(data)
    except ValidationError as e:
        err = from_validation_error(e, ServeConfig, data, lambda p: (source, located.line_of(p)))
        raise ServeConfigError(err.problems) from None
    base = file.parent
    update: dict[str, object] = {}
    if "policies" in data:
        update["policies"] = [_relative_to(base, p) if _looks_like_path(p) else p
                              for p in config.policies]
    if config.model is not None:
        update["model"] = _relative_to(base, config.model)
    return config.model_copy(update=update) if update else config


__all__ = [
    "API_KEYS_ENV", "ServeConfig", "ServeConfigError", "keys_from_env", "load_serve_config",
    "with_env_keys",
]
