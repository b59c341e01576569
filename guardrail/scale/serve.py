"""``guardrail serve --ray``: replicas of the guarded server on Ray Serve.

Each replica runs the server's own FastAPI app (:func:`guardrail.serve.app.create_app`, built
on the replica, so its model loads there once, at startup through the app's lifespan) and so
its continuous-batching engine; Ray Serve's HTTP ingress spreads requests over the replicas.
The API is the single-process server's, byte for byte: the same routes, keys, limits and
errors. Ray Serve's health check of a replica calls that replica's ``/health`` route.

One call deploys one Serve application (``ray.name`` at ``ray.route_prefix``): one policy set
on one model. Deploy again with another config and another name for replicas per policy set
or per model.
"""

from __future__ import annotations

import math
from typing import Any

from guardrail.errors import ConfigError
from guardrail.scale.config import RayServeSettings
from guardrail.scale.ray_runtime import connect, import_ray
from guardrail.serve.config import ServeConfig


async def check_health(app: Any) -> None:
    """Ask ``app``'s own ``/health`` route (in process, no socket) and raise unless it answers
    200 with ``status: ok``: Ray Serve then replaces the replica."""
    import httpx

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://replica") as client:
        response = await client.get("/health", timeout=10)
    body = response.json() if response.headers.get("content-type", "").startswith(
        "application/json") else {}
    if response.status_code != 200 or body.get("status") != "ok":
        raise RuntimeError(f"/health answered {response.status_code}: {response.text[:200]}")


def replica_config(config: ServeConfig) -> ServeConfig:
    """The config each replica serves: the operator's, with llama.cpp threads set to the CPUs
    Ray reserves per replica (at least 1) unless ``n_threads`` is given (replicas sharing a
    node would otherwise each size their threads by the node's cores)."""
    settings = config.ray or RayServeSettings()
    update: dict[str, Any] = {"ray": None}
    if config.n_threads is None:
        update["n_threads"] = max(1, math.floor(settings.num_cpus))
    return config.model_copy(update=update)


def deployment_options(config: ServeConfig) -> dict[str, Any]:
    """Ray Serve ``@serve.deployment`` options from ``config.ray`` (autoscaling as given)."""
    s = config.ray or RayServeSettings()
    options: dict[str, Any] = {
        "name": "GuardedServer",
        "ray_actor_options": {"num_cpus": s.num_cpus, "num_gpus": s.num_gpus},
        "max_ongoing_requests": s.max_ongoing_requests or config.max_queue,
        "health_check_period_s": s.health_check_period_s,
        "health_check_timeout_s": s.health_check_timeout_s,
    }
    if s.autoscaling is not None:
        options["autoscaling_config"] = s.autoscaling
    else:
        options["num_replicas"] = s.replicas or 1
    return options


def guarded_application(config: ServeConfig) -> Any:
    """The Ray Serve application (a bound deployment) serving ``config``; checks the policies
    on the driver first, so a bad one fails here, not in every replica.

    Raises:
        ConfigError: a policy that does not resolve, or autoscaling options Ray rejects.
    """
    serve = import_ray("serve").serve
    from guardrail.serve.served import build_served

    build_served(config)  # resolves every policy (loads nothing)

    @serve.ingress()
    class GuardedServer:
        """One replica: the guarded server's app, its model loaded at replica startup."""

        def __init__(self, config: ServeConfig):
            from guardrail.serve.app import create_app

            self._app = create_app(config)

        def __serve_build_asgi_app__(self) -> Any:
            return self._app

        async def check_health(self) -> None:
            await check_health(self._app)

    try:
        deployment = serve.deployment(GuardedServer, **deployment_options(config))
    except (ValueError, TypeError) as e:  # Ray's own checks (autoscaling_config's schema)
        raise ConfigError(f"ray.autoscaling: {e}") from None
    return deployment.bind(replica_config(config))


def deploy(config: ServeConfig) -> str:
    """Join the cluster (``config.ray.address``), start Ray Serve's HTTP ingress on
    ``config.host:config.port`` and run the application, waiting until its replicas are up;
    returns the API's base URL (``http://HOST:PORT/PREFIX/v1``).

    A cluster whose Serve ingress already listens elsewhere keeps its address (Ray Serve has
    one ingress per cluster); the URL returned is then the one asked for, so check
    ``serve.status()`` when sharing a cluster.
    """
    settings = config.ray or RayServeSettings()
    if config.port == 0:
        raise ConfigError("port: 0 (any free port) cannot be used with --ray: Ray Serve's "
                          "ingress needs a fixed port; give --port N")
    app = guarded_application(config)
    ray = connect(settings.address, "serve")
    ray.serve.start(http_options={"host": config.host, "port": config.port})
    ray.serve.run(app, name=settings.name, route_prefix=settings.route_prefix)
    prefix = settings.route_prefix.rstrip("/")
    return f"http://{config.host}:{config.port}{prefix}/v1"


def undeploy(config: ServeConfig) -> None:
    """Delete the application ``deploy(config)`` ran (its replicas stop; the cluster stays)."""
    settings = config.ray or RayServeSettings()
    import_ray("serve").serve.delete(settings.name)


__all__ = ["check_health", "deploy", "deployment_options", "guarded_application",
           "replica_config", "undeploy"]
