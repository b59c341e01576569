"""Prometheus metrics of one server, in a registry of its own (never the process-global one, so
two apps in one process, as in tests, count separately).

Label values are the operator's served policy names (or ``none`` before a request named one) and
HTTP status codes: nothing a caller writes becomes a label, so a caller cannot grow the series.
"""

from __future__ import annotations

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)

NO_POLICY = "none"
"""The policy label of a request refused before it named a served policy."""

_TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
_DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class ServeMetrics:
    """The server's counters, gauges and histograms (names start with ``guardrail_``)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "guardrail_requests", "Chat completion requests by served policy and HTTP status "
            "(499: the client went away).", ["policy", "status"], registry=r)
        self.prompt_tokens = Counter(
            "guardrail_prompt_tokens", "Prompt tokens of finished answers.", ["policy"],
            registry=r)
        self.completion_tokens = Counter(
            "guardrail_completion_tokens", "Generated tokens of finished answers.", ["policy"],
            registry=r)
        self.refusals = Counter(
            "guardrail_refusals", "Answers the policy's refusal detection called refusals.",
            ["policy"], registry=r)
        self.in_flight = Gauge(
            "guardrail_requests_in_flight", "Chat requests being decoded or waiting for the "
            "model (the queue the max_queue bound applies to).", registry=r)
        self.queue_limit = Gauge(
            "guardrail_queue_limit", "The max_queue bound.", registry=r)
        self.decoding = Gauge(
            "guardrail_scheduler_requests_decoding", "Requests the loaded models' schedulers "
            "are decoding or prefilling now.", registry=r)
        self.waiting = Gauge(
            "guardrail_scheduler_requests_waiting", "Requests waiting for room in a loaded "
            "model's running batch (stream slots or context).", registry=r)
        self.streams = Gauge(
            "guardrail_scheduler_live_streams", "Token streams live in the loaded models' "
            "running batches.", registry=r)
        self.ttft = Histogram(
            "guardrail_time_to_first_token_seconds", "From the request's arrival to its first "
            "generated text.", ["policy"], buckets=_TTFT_BUCKETS, registry=r)
        self.duration = Histogram(
            "guardrail_request_duration_seconds", "From the request's arrival to its last byte.",
            ["policy"], buckets=_DURATION_BUCKETS, registry=r)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return generate_latest(self.registry)


__all__ = ["NO_POLICY", "ServeMetrics"]
