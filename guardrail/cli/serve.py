"""``guardrail serve``: an OpenAI-compatible HTTP server over the served policies.

Settings come from ``--config FILE`` (a YAML :class:`~guardrail.serve.config.ServeConfig`),
then the flags (a flag given overrides the file), then ``$GUARDRAIL_API_KEYS`` (keys added).
FastAPI and uvicorn are imported only when the command runs, so the rest of the CLI works
without the ``serve`` extra.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import ValidationError

from guardrail.errors import ConfigError, GuardrailError
from guardrail.langchain.options import validation_summary


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(
    policy: Annotated[list[str] | None, typer.Option(
        "--policy", "-p", help="Policy to serve (shipped name or YAML path); repeat for "
        "several. The request's `model` names one. Default: balanced.")] = None,
    model: Annotated[str | None, typer.Option(
        "--model", "-m", help="GGUF file or model directory for every served policy.")] = None,
    backend: Annotated[str | None, typer.Option(
        "--backend", "-b", help="llamacpp or transformers.")] = None,
    n_threads: Annotated[int | None, typer.Option(
        "--n-threads", help="CPU threads (llama.cpp).")] = None,
    n_ctx: Annotated[int | None, typer.Option(
        "--n-ctx", help="Context size in tokens (llama.cpp).")] = None,
    n_gpu_layers: Annotated[int | None, typer.Option(
        "--n-gpu-layers", help="Layers on the GPU (llama.cpp; -1: all).")] = None,
    n_streams: Annotated[int | None, typer.Option(
        "--n-streams", "--max-batch", help="Most token streams decoded at once, all requests "
        "together (llama.cpp; a request uses one per stream of its strategy).")] = None,
    kv: Annotated[str | None, typer.Option(
        "--kv", help="llama.cpp KV cache: unified or per_stream.")] = None,
    host: Annotated[str | None, typer.Option(
        "--host", help="Address to bind (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option("--port", help="Port (default 8000).")] = None,
    api_key: Annotated[list[str] | None, typer.Option(
        "--api-key", help="Accepted bearer key; repeat for several. $GUARDRAIL_API_KEYS "
        "(comma-separated) adds more.")] = None,
    max_queue: Annotated[int | None, typer.Option(
        "--max-queue", help="Most chat requests in flight or waiting (default 64).")] = None,
    max_tokens: Annotated[int | None, typer.Option(
        "--max-tokens", help="Most tokens a request may ask for (default 1024).")] = None,
    config: Annotated[Path | None, typer.Option(
        "--config", "-c", help="YAML server config (flags override it).")] = None,
    no_preload: Annotated[bool, typer.Option(
        "--no-preload", help="Load models on the first request instead of at startup.")] = False,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn log level.")] = "info",
    ray: Annotated[bool, typer.Option(
        "--ray", help="Serve replicas on Ray Serve (the 'ray' extra; docs/scale.md).")] = False,
    replicas: Annotated[int | None, typer.Option(
        "--replicas", help="Ray Serve replicas, each loading the model once (with --ray; "
        "default 1; autoscaling: the config's ray.autoscaling).")] = None,
    address: Annotated[str | None, typer.Option(
        "--address", help="Ray cluster to join with --ray ('auto': the one on this machine; "
        "default: $RAY_ADDRESS, else the latest started here, else a new local one).")] = None,
    cpus_per_replica: Annotated[float | None, typer.Option(
        "--cpus-per-replica", help="CPUs Ray reserves per replica with --ray (default 1).")
    ] = None,
) -> None:
    """Serve policies over the OpenAI chat-completions API (POST /v1/chat/completions)."""
    from guardrail.serve.config import ServeConfig, load_serve_config, with_env_keys

    try:
        base = load_serve_config(config) if config is not None else ServeConfig()
        flags: dict[str, Any] = {
            "policies": policy or None, "model": model, "backend": backend,
            "n_threads": n_threads, "n_ctx": n_ctx, "n_gpu_layers": n_gpu_layers,
            "n_streams": n_streams, "kv": kv, "host": host,
            "port": port, "api_keys": api_key or None, "max_queue": max_queue,
            "max_tokens": max_tokens, "preload": False if no_preload else None,
        }
        data = {**base.model_dump(), **{k: v for k, v in flags.items() if v is not None}}
        ray_flags = {"replicas": replicas, "address": address, "num_cpus": cpus_per_replica}
        if ray:
            data["ray"] = {**(data.get("ray") or {}),
                           **{k: v for k, v in ray_flags.items() if v is not None}}
        else:
            names = {"replicas": "--replicas", "address": "--address",
                     "num_cpus": "--cpus-per-replica"}
            given = [names[k] for k, v in ray_flags.items() if v is not None]
            if given:
                raise ConfigError(f"{', '.join(given)}: only used with --ray")
            if data.get("ray") is not None:
                typer.echo("warning: the config's ray section is only used with --ray",
                           err=True)
        cfg = with_env_keys(ServeConfig.model_validate(data))
        if ray:
            from guardrail.scale.ray_runtime import import_ray

            import_ray("serve")  # without the extra: one line naming it, nothing started
        try:
            import uvicorn

            from guardrail.serve import create_app
        except ImportError:
            typer.echo("error: guardrail serve needs FastAPI, uvicorn and prometheus-client: "
                       "pip install 'guardrail-decoding[serve]'", err=True)
            raise typer.Exit(1) from None
        app = None if ray else create_app(cfg)  # replicas build their own
    except ValidationError as e:
        typer.echo(f"error: {validation_summary(e)}", err=True)
        raise typer.Exit(1) from None
    except GuardrailError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    if not is_loopback(cfg.host) and not cfg.api_keys:
        typer.echo(f"warning: binding {cfg.host} without API keys: anyone who can reach this "
                   "address can use the model; give --api-key or $GUARDRAIL_API_KEYS", err=True)
    if ray:
        _serve_on_ray(cfg)
        return
    typer.echo(f"guardrail serve: {', '.join(cfg.policies)} on http://{cfg.host}:{cfg.port}/v1"
               f"{' (API keys required)' if cfg.api_keys else ''}", err=True)
    # uvicorn's own signal handling: SIGINT/SIGTERM stop accepting and let in-flight requests
    # finish before the process exits.
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=log_level)


def _serve_on_ray(cfg: Any) -> None:
    """Deploy ``cfg`` on Ray Serve, wait for SIGINT/SIGTERM, then delete the application (its
    replicas finish and stop; a cluster joined with --address keeps running)."""
    import signal
    import threading

    from guardrail.scale.serve import deploy, undeploy

    try:
        url = deploy(cfg)
    except GuardrailError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    size = "autoscaled" if cfg.ray.autoscaling else f"{cfg.ray.replicas or 1}"
    typer.echo(f"guardrail serve: {', '.join(cfg.policies)} on {url} (Ray Serve, {size} "
               f"replicas){' (API keys required)' if cfg.api_keys else ''}", err=True)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(1.0):  # wakes for the signal handler
        pass
    typer.echo("guardrail serve: stopping the Ray Serve application", err=True)
    undeploy(cfg)


def register(app: typer.Typer) -> None:
    """Add the ``serve`` command to ``app``."""
    app.command("serve")(serve)


__all__ = ["is_loopback", "register", "serve"]
