"""Prometheus metrics of one service: requests, latency, batch sizes, queue depth, rejections.

Each app has its own registry, so two apps in one process (tests) do not mix
their counts. Endpoint labels are route templates (``/v1/generate``), never raw
paths, so a scan of random URLs cannot grow the label set.
"""

from __future__ import annotations

from prometheus_client import (CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram,
                               disable_created_metrics, generate_latest)

disable_created_metrics()  # the *_created series double the output and say only when the server started

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self):
        r = self.registry = CollectorRegistry()
        self.requests = Counter("genforge_requests", "HTTP requests by endpoint and status code",
                                ["endpoint", "status"], registry=r)
        self.latency = Histogram("genforge_request_latency_seconds", "Request latency, first byte in to last out",
                                 ["endpoint"], buckets=LATENCY_BUCKETS, registry=r)
        self.batch_images = Histogram("genforge_batch_size_images", "Images per forward pass", ["model"],
                                      buckets=BATCH_BUCKETS, registry=r)
        self.batch_requests = Histogram("genforge_batch_size_requests", "Requests merged into one forward pass",
                                        ["model"], buckets=BATCH_BUCKETS, registry=r)
        self.queue_depth = Gauge("genforge_queue_depth", "Requests waiting for a forward pass", ["model"],
                                 registry=r)
        self.rejections = Counter("genforge_rejections", "Requests refused, by reason", ["reason"], registry=r)
        self.images = Counter("genforge_images_generated", "Images returned", ["model"], registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
