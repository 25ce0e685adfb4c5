"""What the server counts: Prometheus metrics for scraping, and Triton-style per-model
statistics (`/v2/models/{m}/stats`) that the load client reads to split queue from compute."""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
CONTENT_TYPE = CONTENT_TYPE_LATEST


class Metrics:
    """One registry per server (tests run several in one process), with process metrics
    (resident memory, CPU) alongside the server's own."""

    def __init__(self, max_batch_size: int) -> None:
        disable_created_metrics()  # no `_created` twin of every series
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        reg = self.registry
        self.http_requests = Counter(
            "serve_http_requests", "HTTP requests by route", ["route"], registry=reg
        )
        self.http_errors = Counter(
            "serve_http_errors",
            "HTTP error responses by route and status",
            ["route", "code"],
            registry=reg,
        )
        self.grpc_requests = Counter(
            "serve_grpc_requests", "gRPC calls by method", ["method"], registry=reg
        )
        self.grpc_errors = Counter(
            "serve_grpc_errors",
            "gRPC calls answered with an error, by method and status code",
            ["method", "code"],
            registry=reg,
        )
        self.client_disconnects = Counter(
            "serve_client_disconnects",
            "Requests whose client left before the answer (no status was sent)",
            ["route"],
            registry=reg,
        )
        self.request_seconds = Histogram(
            "serve_request_seconds",
            "Inference request time in the server",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.queue_seconds = Histogram(
            "serve_queue_seconds",
            "Time a request waits for its batch",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.compute_seconds = Histogram(
            "serve_compute_seconds",
            "Backend time per executed batch",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.in_place = Counter(
            "serve_in_place_requests",
            "Inference requests run at once on the event loop's thread (alone, the worker idle)",
            ["model"],
            registry=reg,
        )
        sizes = sorted({1, *(2**i for i in range(max_batch_size.bit_length())), max_batch_size})
        self.batch_size = Histogram(
            "serve_batch_size", "Images per executed batch", ["model"], buckets=sizes, registry=reg
        )

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


class ModelStats:
    """Triton's statistics extension for one model: cumulative counts and nanoseconds."""

    def __init__(self, name: str, metrics: Metrics) -> None:
        self.name = name
        self._lock = threading.Lock()
        self._sums: dict[str, list[int]] = defaultdict(lambda: [0, 0])  # kind -> [count, ns]
        self._batches: dict[int, list[int]] = defaultdict(lambda: [0, 0])
        self.inference_count = 0
        self.execution_count = 0
        self.last_inference_ms = 0
        # this model's series, bound once: a lookup by label costs a lock and a dict per call
        self._request_seconds = metrics.request_seconds.labels(name)
        self._queue_seconds = metrics.queue_seconds.labels(name)
        self._compute_seconds = metrics.compute_seconds.labels(name)
        self._batch_size = metrics.batch_size.labels(name)
        self._in_place = metrics.in_place.labels(name)

    def request(self, seconds: float, ok: bool, queue_seconds: float = 0.0) -> None:
        with self._lock:
            self._add("success" if ok else "fail", seconds)
            if ok:
                self._add("queue", queue_seconds)
        if ok:
            self._request_seconds.observe(seconds)
            self._queue_seconds.observe(queue_seconds)

    def batch(self, size: int, requests: int, seconds: float, in_place: bool = False) -> None:
        """One executed batch of `size` images from `requests` requests (one run `in_place`,
        skipping the queue). As in Triton, inference_stats are per request (each is charged its
        batch's compute time) and batch_stats per execution."""
        with self._lock:
            self._add("compute_infer", seconds, requests)
            entry = self._batches[size]
            entry[0] += 1
            entry[1] += int(seconds * 1e9)
            self.inference_count += size
            self.execution_count += 1
            self.last_inference_ms = int(time.time() * 1e3)
        self._compute_seconds.observe(seconds)
        self._batch_size.observe(size)
        if in_place:
            self._in_place.inc()

    def _add(self, kind: str, seconds: float, times: int = 1) -> None:
        entry = self._sums[kind]
        entry[0] += times
        entry[1] += int(seconds * 1e9) * times

    def report(self) -> dict:
        """The model's entry of Triton's `model_stats` list."""
        with self._lock:
            kinds = ("success", "fail", "queue", "compute_infer")
            return {
                "name": self.name,
                "version": "1",
                "last_inference": self.last_inference_ms,
                "inference_count": self.inference_count,
                "execution_count": self.execution_count,
                "inference_stats": {
                    k: {"count": self._sums[k][0], "ns": self._sums[k][1]} for k in kinds
                },
                "batch_stats": [
                    {"batch_size": size, "compute_infer": {"count": c, "ns": ns}}
                    for size, (c, ns) in sorted(self._batches.items())
                ],
            }
