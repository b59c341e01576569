"""``ray:`` in a server config: how ``guardrail serve --ray`` deploys on Ray Serve.

Pure settings (no ``ray`` import), so a server config file is read and checked the same with or
without the extra. ``autoscaling`` is handed to Ray Serve as it is (its own schema checks it
when the deployment is built, and its errors name this section).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator


class RayServeSettings(BaseModel):
    """One Ray Serve application of the guarded server: its replicas, their resources and where
    it is reached (the HTTP ingress listens on the server config's ``host``/``port``)."""

    model_config = ConfigDict(extra="forbid", strict=True)

    address: str | None = Field(None, description="Ray cluster to join ('auto': the one on "
                                "this machine; None: $RAY_ADDRESS, else the latest started "
                                "here, else a new local one).")
    replicas: int | None = Field(None, ge=1, description="Replicas, each loading the model "
                                 "once and batching its own requests (None: 1, or what "
                                 "autoscaling decides).")
    autoscaling: dict[str, Any] | None = Field(
        None, description="Ray Serve autoscaling_config, passed through as written (e.g. "
        "min_replicas, max_replicas, target_ongoing_requests); excludes replicas.")
    num_cpus: float = Field(1.0, gt=0, description="CPUs Ray reserves per replica (fractions "
                            "share a core); llama.cpp uses that many threads (at least 1) "
                            "unless n_threads is set.")
    num_gpus: float = Field(0.0, ge=0, description="GPUs Ray reserves per replica.")
    max_ongoing_requests: int | None = Field(
        None, ge=1, description="Requests Ray Serve sends one replica at once (None: the "
        "server's max_queue, so the replica's own queue and 429s stay in charge).")
    name: str = Field("guardrail", min_length=1, description="Ray Serve application name "
                      "(one per policy set or model on a cluster).")
    route_prefix: str = Field("/", pattern=r"^/", description="HTTP path the application is "
                              "served under (the API is at PREFIX/v1).")
    health_check_period_s: float = Field(10.0, gt=0, description="Seconds between health "
                                         "checks of a replica (its /health route).")
    health_check_timeout_s: float = Field(30.0, gt=0, description="Seconds a health check may "
                                          "take before the replica is replaced.")

    @model_validator(mode="after")
    def _one_way_to_size(self) -> RayServeSettings:
        if self.replicas is not None and self.autoscaling is not None:
            raise ValueError("ray: give replicas or autoscaling, not both (autoscaling sets "
                             "min_replicas/max_replicas)")
        return self


__all__ = ["RayServeSettings"]
