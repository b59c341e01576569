"""An OpenAI-compatible server over :class:`~guardrail.GuardedChatModel` (``guardrail serve``).

A thin translation layer: each request becomes one call of the chat model of the policy it
names, so tools, ``tool_choice``, the Guard, ``on_refusal``, the policy's ``callers`` rights and
the engine's batching underneath are the chat model's own. Modules, one job each:
:mod:`~guardrail.serve.config` (the operator's settings), :mod:`~guardrail.serve.protocol`
(the wire format), :mod:`~guardrail.serve.translate` (messages both ways),
:mod:`~guardrail.serve.served` (the served policies), :mod:`~guardrail.serve.limits` (keys,
body size, queue), :mod:`~guardrail.serve.metrics`, :mod:`~guardrail.serve.completions` (the
chat endpoint) and :mod:`~guardrail.serve.app` (the FastAPI app).

Needs the ``serve`` extra (``pip install 'guardrail-decoding[serve]'``); the config module alone
does not, so the CLI can read a config before importing FastAPI.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from guardrail.serve.config import ServeConfig, ServeConfigError, load_serve_config

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["ServeConfig", "ServeConfigError", "create_app", "load_serve_config"]


def create_app(config: ServeConfig) -> FastAPI:
    """The FastAPI app serving ``config`` (see :func:`guardrail.serve.app.create_app`)."""
    try:
        from guardrail.serve.app import create_app as make
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError("guardrail serve needs FastAPI, uvicorn and prometheus-client: "
                          "pip install 'guardrail-decoding[serve]'") from e
    return make(config)
