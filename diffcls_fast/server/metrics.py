"""The server's metrics, in the Prometheus text exposition format (version 0.0.4), written by hand.

Thread-safe: the engine loop and the request handlers update it, ``/metrics`` renders it.
"""

from __future__ import annotations

import threading
import time
from collections import deque

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Metrics:
    def __init__(self, window_s: float = 10.0):
        self._lock = threading.Lock()
        self.window_s = window_s
        self.requests: dict[str, int] = {}  # HTTP status -> count (classify requests)
        self.errors: dict[str, int] = {}  # kind -> count
        self.buckets = [0] * len(LATENCY_BUCKETS)
        self.latency_sum = 0.0
        self.latency_count = 0
        self.images = 0
        self.evaluations = 0  # denoiser rows run
        self.padded = 0  # padding rows run
        self.batches = 0
        self.queued_requests = 0  # accepted, not answered
        self.waiting_images = 0  # in the scheduler's waiting queue
        self.inflight_images = 0  # being scored
        self.ready = 0
        self._evals_window: deque[tuple[float, int]] = deque()  # (time, evaluations) of recent batches

    def observe_request(self, status: int, seconds: float, kind: str | None = None) -> None:
        with self._lock:
            self.requests[str(status)] = self.requests.get(str(status), 0) + 1
            if kind is not None:
                self.errors[kind] = self.errors.get(kind, 0) + 1
            self.latency_sum += seconds
            self.latency_count += 1
            for k, b in enumerate(LATENCY_BUCKETS):
                if seconds <= b:
                    self.buckets[k] += 1

    def error(self, kind: str) -> None:
        """An error outside a classify request's own count (e.g. 401 on /metrics)."""
        with self._lock:
            self.errors[kind] = self.errors.get(kind, 0) + 1

    def observe_engine(
        self, rows: int, padded: int, batches: int, images: int, queued: int, waiting: int, inflight: int
    ) -> None:
        """Deltas of the engine's counters since the last call, and its current gauges."""
        now = time.monotonic()
        with self._lock:
            self.evaluations += rows
            self.padded += padded
            self.batches += batches
            self.images += images
            self.queued_requests, self.waiting_images, self.inflight_images = queued, waiting, inflight
            if rows:
                self._evals_window.append((now, rows))
            while self._evals_window and self._evals_window[0][0] < now - self.window_s:
                self._evals_window.popleft()

    def evals_per_second(self) -> float:
        now = time.monotonic()
        with self._lock:
            recent = [(t, n) for t, n in self._evals_window if t >= now - self.window_s]
        return sum(n for _, n in recent) / self.window_s

    def render(self) -> str:
        eps = self.evals_per_second()
        with self._lock:
            fill = self.evaluations / (self.evaluations + self.padded) if self.evaluations + self.padded else 1.0
            out = []

            def metric(name: str, kind: str, help_: str, samples: list[tuple[str, float]]) -> None:
                out.append(f"# HELP {name} {help_}")
                out.append(f"# TYPE {name} {kind}")
                out.extend(f"{name}{labels} {_num(v)}" for labels, v in samples)

            metric("diffcls_ready", "gauge", "1 once the model is loaded and warmed up.", [("", self.ready)])
            metric(
                "diffcls_queue_depth",
                "gauge",
                "Classify requests accepted and not yet answered.",
                [("", self.queued_requests)],
            )
            metric(
                "diffcls_waiting_images",
                "gauge",
                "Images encoded and waiting for an in-flight slot.",
                [("", self.waiting_images)],
            )
            metric("diffcls_inflight_images", "gauge", "Images being scored.", [("", self.inflight_images)])
            metric(
                "diffcls_batch_fill", "gauge", "Real rows / (real + padding rows), since start.", [("", round(fill, 6))]
            )
            metric(
                "diffcls_evaluations_per_second",
                "gauge",
                f"Denoiser rows per second over the last {self.window_s:g} s.",
                [("", round(eps, 3))],
            )
            metric(
                "diffcls_evaluations_total",
                "counter",
                "Denoiser rows run (speculation included).",
                [("", self.evaluations)],
            )
            metric("diffcls_padded_rows_total", "counter", "Padding rows run.", [("", self.padded)])
            metric("diffcls_batches_total", "counter", "Denoiser batches run.", [("", self.batches)])
            metric("diffcls_images_total", "counter", "Images answered.", [("", self.images)])
            metric(
                "diffcls_requests_total",
                "counter",
                "Classify requests by HTTP status.",
                [(f'{{code="{c}"}}', n) for c, n in sorted(self.requests.items())],
            )
            metric(
                "diffcls_errors_total",
                "counter",
                "Errors by kind.",
                [(f'{{kind="{k}"}}', n) for k, n in sorted(self.errors.items())],
            )
            name = "diffcls_request_duration_seconds"
            out.append(f"# HELP {name} Classify request latency, from arrival to answer.")
            out.append(f"# TYPE {name} histogram")
            out.extend(f'{name}_bucket{{le="{b:g}"}} {n}' for b, n in zip(LATENCY_BUCKETS, self.buckets))
            out.append(f'{name}_bucket{{le="+Inf"}} {self.latency_count}')
            out.append(f"{name}_sum {_num(round(self.latency_sum, 6))}")
            out.append(f"{name}_count {self.latency_count}")
        return "\n".join(out) + "\n"


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else repr(float(v))


def parse(text: str) -> dict[str, float]:
    """``{'name{labels}': value}`` of a rendered exposition (for tests and the load benchmark)."""
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            key, _, val = line.rpartition(" ")
            out[key] = float(val)
    return out
