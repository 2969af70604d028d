"""One engine replica, without Ray: what a Ray Serve replica actor runs (`deployment.py` wraps it)
and what the in-process tests drive directly.

A replica is the single-process engine (`otas.engine.Engine` around its own `Scheduler`) minus
HTTP: the router decodes the image, and the replica queues it, batches it with the other requests
routed here, and answers with the same `Served` record the single-process server renders. Request
outcomes are counted by the router; batch observations are relayed to it with the replies.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from otas.config import EngineConfig, SchedulerConfig
from otas.engine.delivery import reported
from otas.engine.serving import NotServed, Observer, Served
from otas.profile.table import Profile
from otas.server.main import make_engine
from otas.types import App, BatchPlan

MAX_RELAYED = 10_000
"""Batch observations kept for the router between two replies; older ones are dropped."""


@dataclass
class ReplicaSpec:
    """How every replica builds its runner and scheduler (sent to the replicas as is)."""

    apps: list[App]
    profile: dict[str, Any]
    """`Profile.to_dict()` of the model on the replicas' device (the no-op profile with --noop)."""
    policy: str
    scheduler: SchedulerConfig
    """Per replica: `max_queue` is each replica's own backpressure limit."""
    model: str | None = None
    """Checkpoint path, readable on every node (None = the shipped model, inside the package)."""
    device: str = "cpu"
    """cpu or cuda: with cuda Ray gives each replica one GPU, which it sees as cuda:0."""
    dtype: str = ""
    noop: bool = False
    """No model: HTTP + routing + scheduling + collation only."""
    paced: bool = False
    """With noop: each batch sleeps the profile's latency, emulating the profiled device."""
    warmup: bool = True
    decode: EngineConfig | None = None
    """The decoding options (`decode_workers`, `decode_processes`, `decode_queue`, the image limits
    and formats): the router decodes with them, as the local engine does (None: the defaults)."""

    def __post_init__(self) -> None:
        if self.paced and not self.noop:
            raise ValueError("paced=True emulates a device with the no-op model; give noop=True as well")
        Profile.from_dict(self.profile)  # fail in the driver, not in every replica


def build_runner(spec: ReplicaSpec):
    """The runner this replica drives: the model on the device, the no-op model, or the paced one."""
    profile = Profile.from_dict(spec.profile)
    mb = spec.scheduler.max_batch
    if spec.noop:
        from otas.engine.noop import NoopRunner, PacedRunner

        runner = NoopRunner(spec.apps, max_batch=mb)
        return PacedRunner(runner, profile) if spec.paced else runner
    import torch

    from otas.engine.runner import Runner
    from otas.predict import default_model_path

    dt = getattr(torch, spec.dtype) if spec.dtype else None
    runner = Runner.load(spec.model or default_model_path(), spec.device, dt, mb, merge_every=profile.merge_every)
    if spec.warmup:
        runner.warmup()
    return runner


@dataclass
class Reply:
    """A replica's answer to one submission: a result or why not, plus what the router relays."""

    served: Served | None
    outcome: str = ""
    reason: str = ""
    detail: str = ""
    queued: int = 0
    """Requests queued in this replica's scheduler after this one ended."""
    replica_ms: float = 0.0
    """Wall time spent inside the replica (the router subtracts it to get its RPC overhead)."""
    batches: list[tuple[BatchPlan, float, float, int]] = field(default_factory=list)
    """Batch observations since the last reply: `Observer.batch` arguments."""
    decisions: list[tuple[float, bool]] = field(default_factory=list)
    """The scheduler's decisions since the last reply: `Observer.decided` arguments."""


class _Relay(Observer):
    """Keeps batch and decision observations for the router (request outcomes are counted there)."""

    def __init__(self) -> None:
        self.events: list[tuple[BatchPlan, float, float, int]] = []
        self.decisions: list[tuple[float, bool]] = []

    def decided(self, ms: float, planned: bool) -> None:
        self.decisions.append((ms, planned))
        if len(self.decisions) > MAX_RELAYED:
            del self.decisions[: len(self.decisions) - MAX_RELAYED]

    def drain_decisions(self) -> list[tuple[float, bool]]:
        out, self.decisions = self.decisions, []
        return out

    def batch(self, plan: BatchPlan, measured_ms: float, runner_ms: float, queued: int) -> None:
        # policy diagnostics are not relayed, but for how the floor held the batch (`otas_floor_batches_total`)
        plan = replace(plan, meta={k: plan.meta[k] for k in ("cap", "follow") if k in plan.meta})
        self.events.append((plan, measured_ms, runner_ms, queued))
        if len(self.events) > MAX_RELAYED:
            del self.events[: len(self.events) - MAX_RELAYED]

    def drain(self) -> list[tuple[BatchPlan, float, float, int]]:
        out, self.events = self.events, []
        return out


class ReplicaCore:
    """Engine + scheduler + runner of one replica; async methods run on the replica's event loop."""

    def __init__(self, spec: ReplicaSpec, index: int, runner=None):
        self.spec, self.index = spec, index
        self.runner = runner if runner is not None else build_runner(spec)
        self.profile = self.runner.served_profile(Profile.from_dict(spec.profile))  # read at its batch buckets
        self.relay = _Relay()
        self.engine, self.info = make_engine(
            self.runner,
            self.profile,
            spec.apps,
            spec.policy,
            spec.scheduler,
            observer=self.relay,
            engine_cfg=EngineConfig(decode_workers=1),
        )
        self.started_at = time.time()

    async def start(self) -> None:
        await self.engine.start()

    async def stop(self, timeout_s: float = 30.0) -> None:
        await self.engine.stop(timeout_s)

    @property
    def healthy(self) -> bool:
        return self.engine.ready

    async def submit(self, app: str, image: np.ndarray, arrival_epoch_ms: float) -> Reply:
        """Queue one decoded image; the deadline runs from `arrival_epoch_ms`, the wall-clock time
        the router received the HTTP request (so routing and transit count against the SLO)."""
        t0 = time.perf_counter()
        e = self.engine
        slo = self.spec_slo(app)
        age = min(max(time.time() * 1000.0 - arrival_epoch_ms, 0.0), slo)  # clamp: clocks of two hosts
        try:
            served = await e.submit(app, image, e.now_ms() - age)
            reply = Reply(served)
        except NotServed as ns:
            reply = Reply(None, ns.outcome, ns.reason, ns.detail)
        reply.queued = e.scheduler.queued()
        reply.batches = self.relay.drain()
        reply.decisions = self.relay.drain_decisions()
        reply.replica_ms = (time.perf_counter() - t0) * 1e3
        return reply

    def spec_slo(self, app: str) -> float:
        a = self.engine.apps.get(app)
        if a is None:
            raise ValueError(f"unknown application {app!r}; known: {sorted(self.engine.apps)}")
        return a.slo_ms

    def stats(self, delivered: Sequence[float] = ()) -> dict[str, Any]:
        """Health probe: liveness, queue depth, process identity, relayed batch and decision
        observations. `delivered`: the router's delivery times since the last probe (its answers'
        time from arriving there to leaving its HTTP layer), which this replica's engine plans
        deadlines short by (`Engine.delivered`)."""
        for ms in reported(list(delivered)):
            self.engine.delivered(ms)
        return {
            "index": self.index,
            "healthy": self.healthy,
            "queued": self.engine.scheduler.queued(),
            "batches_run": self.engine.batches,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started_at": self.started_at,
            "batches": self.relay.drain(),
            "decisions": self.relay.drain_decisions(),
        }

    def describe(self) -> dict[str, Any]:
        """What the router needs to serve the same API as one process: image size, classes, and
        the `/v1/config` document (policy, scheduler config, applications, profile, device)."""
        return {
            "image_size": self.runner.image_size,
            "preprocess": pre.to_dict() if (pre := getattr(self.runner, "preprocess", None)) else None,
            "max_batch": self.runner.max_batch,
            "classes": self.runner.classes,
            "info": self.info,
        }
