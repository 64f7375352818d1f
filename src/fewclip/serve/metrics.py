"""Prometheus metrics of one server process (``GET /metrics``, text exposition format)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

__all__ = ["CONTENT_TYPE_LATEST", "ServerMetrics"]

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class ServerMetrics:
    """Request counts and latencies by route and status, batch sizes, images by outcome; in a
    registry of their own (several apps in one process do not mix)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "fewclip_requests",
            "HTTP requests answered, by method, route and status code.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "fewclip_request_latency_seconds",
            "Time from receiving a request to sending its response, by route.",
            ["route"],
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "fewclip_batch_size",
            "Images per forward pass of the model (dynamic batching).",
            buckets=_BATCH_BUCKETS,
            registry=self.registry,
        )
        self.images = Counter(
            "fewclip_images",
            "Images received, by outcome (classified, or rejected as undecodable).",
            ["outcome"],
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)
