"""Prometheus metrics: the engine's Observer, recording into a registry of its own (one per app, so
several servers in one process, as in tests, never collide). It also keeps the few totals that
Triton's statistics extension reports (`model_stats`, served at /v2/models/{model}/stats)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily

from otas.engine.serving import Observer, Served
from otas.server.admission import FrontDoor
from otas.types import BatchPlan

_LAT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
_DECISION_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025)


def observe_many(child, values: np.ndarray) -> None:
    """`child.observe(v)` for each of `values` (one labelled histogram), with one increment per bucket hit
    and one of the sum: prometheus_client has no bulk observe, and a batch ends hundreds of requests.
    A client without the internals this reads (`_upper_bounds`, `_buckets`, `_sum`) gets the loop."""
    bounds, buckets, total = (getattr(child, a, None) for a in ("_upper_bounds", "_buckets", "_sum"))
    if bounds is None or buckets is None or total is None or len(bounds) != len(buckets):
        for v in values:
            child.observe(float(v))
        return
    counts = np.bincount(np.searchsorted(bounds, values, side="left"), minlength=len(bounds))  # v <= bound
    total.inc(float(values.sum()))
    for i in np.flatnonzero(counts):
        buckets[i].inc(int(counts[i]))


class Metrics(Observer):
    def __init__(self, gammas: list[int], registry: CollectorRegistry | None = None):
        self.registry = r = registry or CollectorRegistry()
        self.requests = Counter(
            "otas_requests", "Requests by application and outcome (served/rejected/expired/error)",
            ["app", "outcome", "reason"], registry=r,
        )  # fmt: skip
        self.latency = Histogram(
            "otas_request_latency_seconds",
            "Served requests: arrival to answer",
            ["app"],
            buckets=_LAT_BUCKETS,
            registry=r,
        )
        self.queue = Histogram(
            "otas_queue_latency_seconds",
            "Served requests: arrival to batch start",
            ["app"],
            buckets=_LAT_BUCKETS,
            registry=r,
        )
        self.slo_met = Counter("otas_slo_met", "Requests served within their deadline", ["app"], registry=r)
        self.slo_attainment = Gauge(
            "otas_slo_attainment", "Fraction of ended requests (any outcome) served on time", ["app"], registry=r
        )
        self.utility = Counter(
            "otas_utility", "Expected utility accrued: u * acc(task, gamma), on time", ["app"], registry=r
        )
        self.gamma = Counter("otas_batches", "Batches run, by gamma", ["gamma"], registry=r)
        self.floor = Counter(
            "otas_floor_batches",
            "Batches by how the policy's floor held them (otas): free, capped (no slower than the fixed gamma "
            "that earned more) or following (run as that gamma's baseline batches)",
            ["mode"], registry=r,
        )  # fmt: skip
        self.batch_size = Histogram("otas_batch_size", "Requests per batch", buckets=_BATCH_BUCKETS, registry=r)
        self.queue_depth_g = Gauge("otas_queue_depth", "Requests queued in the scheduler", registry=r)
        self.predicted = Histogram(
            "otas_batch_predicted_seconds", "Predicted batch latency (profile x online correction)",
            buckets=_LAT_BUCKETS, registry=r,
        )  # fmt: skip
        self.measured = Histogram(
            "otas_batch_measured_seconds",
            "Measured batch latency (the device taking it up to the event loop taking up its results)",
            buckets=_LAT_BUCKETS,
            registry=r,
        )
        self.device = Histogram(
            "otas_batch_device_seconds",
            "The device's own time of a batch (the runner's: collation, forward, copy back)",
            buckets=_LAT_BUCKETS,
            registry=r,
        )
        self.ratio = Gauge("otas_batch_measured_over_predicted", "Last batch: measured / predicted latency", registry=r)
        self.decision = Histogram(
            "otas_decision_seconds", "The scheduler's time deciding the next batch, on the event loop",
            ["planned"], buckets=_DECISION_BUCKETS, registry=r,
        )  # fmt: skip
        for g in gammas:
            self.gamma.labels(str(g))
        self._ended: dict[str, int] = {}
        self._met: dict[str, int] = {}
        self._totals = {k: [0, 0] for k in ("success", "fail", "queue", "compute_infer")}  # [count, ns]
        self._batches, self._last_ms = 0, 0
        self._children: dict[tuple[str, tuple[str, ...]], Any] = {}  # (metric, labels) -> its child, made once
        self._doors: list = []

    def watch(self, door: FrontDoor) -> None:
        """Export the front door's state (`admission.py`), read at each scrape. Several doors (the
        gRPC door here and the HTTP front ends' of `--http-workers`, `intake.FrontEnds`) are summed."""
        self._doors.append(door)
        if len(self._doors) > 1:
            return
        r, doors = self.registry, self._doors
        Gauge("otas_front_in_flight", "Inference requests in the host's front end (parsing, decoding)",
              registry=r).set_function(lambda: sum(d.in_flight for d in doors))  # fmt: skip
        Gauge("otas_front_limit", "Front-end requests admitted at most now (0: not yet measured)",
              registry=r).set_function(lambda: sum(d.limit or 0 for d in doors))  # fmt: skip
        Gauge("otas_front_rate", "Requests per second the front end finishes while busy (measured)",
              registry=r).set_function(lambda: sum(d.rate or 0.0 for d in doors))  # fmt: skip
        r.register(_DoorCounts(doors))

    def watch_delivery(self, ms: Callable[[], float]) -> None:
        """Export the delivery time the engine plans deadlines short by (`Engine.delivery`), read at
        each scrape."""
        help_ = (
            "Answer ready on the engine to response leaving the HTTP layer: the recent 95th percentile, which "
            "deadlines are planned short by"
        )
        Gauge("otas_delivery_seconds", help_, registry=self.registry).set_function(lambda: ms() / 1e3)

    def forget(self, app: str) -> None:
        """Drop every series of an application that was removed (its counts leave /metrics)."""
        for m in (self.latency, self.queue, self.slo_met, self.slo_attainment, self.utility):
            with contextlib.suppress(KeyError):
                m.remove(app)
        for name, labels in [k for k in self._children if k[1][:1] == (app,)]:
            if name == self.requests._name:  # (app, outcome, reason): the series made for it
                self.requests.remove(*labels)
            del self._children[name, labels]
        self._ended.pop(app, None)
        self._met.pop(app, None)

    def _of(self, metric, *labels: str):
        """`metric.labels(*labels)`, looked up once (prometheus_client's lookup takes a lock and rebuilds
        the key on every call, and the server makes several a request)."""
        key = (metric._name, labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def ended_many(self, app: str, outcome: str, reason: str, n: int) -> None:
        """`ended(app, outcome, reason)` for the `n` images of one request that was not served."""
        self._of(self.requests, app, outcome, reason).inc(n)
        self._ended[app] = self._ended.get(app, 0) + n
        self._totals["fail"][0] += n
        self._of(self.slo_attainment, app).set(self._met.get(app, 0) / self._ended[app])

    def ended(self, app: str, outcome: str, reason: str = "", served: Served | None = None) -> None:
        if served is not None:
            self.served_many(app, [served])
        else:
            self.ended_many(app, outcome, reason, 1)

    def served_many(self, app: str, served: Sequence[Served]) -> None:
        """`ended(app, "served", "", s)` for each of `served`, with one update per counter."""
        self._of(self.requests, app, "served", "").inc(len(served))
        self._ended[app] = self._ended.get(app, 0) + len(served)
        total = np.fromiter((s.total_ms for s in served), float, len(served))
        queue = np.maximum(np.fromiter((s.queue_ms for s in served), float, len(served)), 0.0)
        exec_ms = np.fromiter((s.exec_ms for s in served), float, len(served))
        for key, ms in (("success", total), ("queue", queue), ("compute_infer", exec_ms)):
            self._totals[key][0] += len(served)
            self._totals[key][1] += int((ms * 1e6).astype(np.int64).sum())
        self._last_ms = int(time.time() * 1000)
        observe_many(self._of(self.latency, app), total / 1e3)
        observe_many(self._of(self.queue, app), queue / 1e3)
        utility = sum(s.utility for s in served)
        met = sum(1 for s in served if s.deadline_met)
        self._of(self.utility, app).inc(utility)
        if met:
            self._of(self.slo_met, app).inc(met)
            self._met[app] = self._met.get(app, 0) + met
        self._of(self.slo_attainment, app).set(self._met.get(app, 0) / self._ended[app])

    def decided(self, ms: float, planned: bool) -> None:
        self._of(self.decision, "1" if planned else "0").observe(ms / 1e3)

    def batch(self, plan: BatchPlan, measured_ms: float, runner_ms: float, queued: int) -> None:
        self._of(self.gamma, str(plan.gamma)).inc()
        self._of(self.floor, "following" if "follow" in plan.meta else "capped" if "cap" in plan.meta else "free").inc()
        self._batches += 1
        self.batch_size.observe(plan.size)
        self.predicted.observe(plan.predicted_ms / 1e3)
        self.measured.observe(measured_ms / 1e3)
        self.device.observe(runner_ms / 1e3)
        if plan.predicted_ms > 0:
            self.ratio.set(measured_ms / plan.predicted_ms)
        self.queue_depth_g.set(queued)

    def queue_depth(self, n: int) -> None:
        self.queue_depth_g.set(n)

    def model_stats(self, model: str) -> dict[str, Any]:
        """Triton's per-model statistics: inferences served (`success`, arrival to answer; `queue`;
        `compute_infer`, the batch's run), those not served (`fail`: rejected, expired, failed),
        and batches run (`execution_count`)."""
        stats = {k: {"count": c, "ns": ns} for k, (c, ns) in self._totals.items()}
        for k in ("compute_input", "compute_output", "cache_hit", "cache_miss"):
            stats[k] = {"count": 0, "ns": 0}
        return {
            "name": model, "version": "1", "last_inference": self._last_ms,
            "inference_count": self._totals["success"][0], "execution_count": self._batches,
            "inference_stats": stats, "batch_stats": [],
        }  # fmt: skip


class _DoorCounts:
    """`otas_front_requests_total{outcome}`: inference requests admitted or refused (503
    `overloaded`, before parsing: not in `otas_requests_total`, which counts images of parsed
    requests) by the front door."""

    def __init__(self, doors: list):
        self.doors = doors

    def collect(self):
        c = CounterMetricFamily("otas_front_requests", "Inference requests at the front door", labels=["outcome"])
        c.add_metric(["admitted"], sum(d.admitted for d in self.doors))
        c.add_metric(["overloaded"], sum(d.refused for d in self.doors))
        yield c
