"""The router front end's contracts: the replica client it calls, its failure-handling config, its
Prometheus series, and the latency table its wait predictions use. No ray import."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from otas.scale.replica import Reply

_RPC_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25)


class ReplicaClient(Protocol):
    name: str

    async def submit(self, app: str, image: np.ndarray, arrival_epoch_ms: float) -> Reply: ...

    async def stats(self, delivered: Sequence[float] = ()) -> dict[str, Any]:
        """The replica's health and relayed observations; `delivered`: the router's delivery times
        since the last probe (`ReplicaCore.stats`)."""
        ...


@dataclass
class FrontendConfig:
    """Failure handling of the router; validated at construction."""

    grace_s: float = 5.0
    """A call still unanswered this long past its request's deadline counts as a replica failure."""
    max_retries: int = 1
    """Re-sends of a request whose replica failed, to another replica, while its deadline allows."""
    probe_s: float = 0.5
    """Period of the health probe (it readmits restarted replicas and relays idle replicas' metrics)."""
    probe_timeout_s: float = 2.0
    """A probe unanswered this long is a miss: a failed replica stays out, and two misses in a row
    take a replica out (e.g. one that died idle while Serve holds its calls until the restart)."""
    drain_s: float = 30.0
    """On shutdown, wait this long for in-flight requests before failing them."""

    def __post_init__(self) -> None:
        if not self.grace_s > 0:
            raise ValueError(f"grace_s={self.grace_s!r}: use a positive number of seconds, e.g. 5")
        if not isinstance(self.max_retries, int) or self.max_retries < 0:
            raise ValueError(f"max_retries={self.max_retries!r}: use an integer >= 0 (0 = fail fast only)")
        if not (self.probe_s > 0 and self.probe_timeout_s > 0):
            raise ValueError(
                f"probe_s={self.probe_s!r}, probe_timeout_s={self.probe_timeout_s!r}: use positive seconds, e.g. 0.5, 2"
            )


class RouterMetrics:
    """The router's own series, beside the server's (same registry, so one /metrics has both)."""

    def __init__(self, registry: CollectorRegistry, names: Sequence[str]):
        self.routed = Counter(
            "otas_router_requests", "Images sent to a replica, by how the replica was chosen (home/spill/retry)",
            ["replica", "kind"], registry=registry,
        )  # fmt: skip
        self.failures = Counter(
            "otas_router_replica_failures", "Calls that failed because the replica died or went silent",
            ["replica"], registry=registry,
        )  # fmt: skip
        self.up = Gauge("otas_router_replica_up", "1 while the router sends to it", ["replica"], registry=registry)
        self.rpc = Histogram(
            "otas_router_rpc_overhead_seconds", "Router-to-replica call time minus time inside the replica",
            buckets=_RPC_BUCKETS, registry=registry,
        )  # fmt: skip
        for n in names:
            self.up.labels(n).set(1)
            self.failures.labels(n)


def fastest_latency(profile, max_batch: int) -> list[float]:
    """[0, lat(1), ..., lat(B_max)]: per batch size the profile's fastest setting, made
    nondecreasing (as the scheduler's own feasibility check), for the router's wait predictions."""
    profile = profile.for_max_batch(max_batch)
    lat = [0.0] + [min(profile.lat(g, b) for g in profile.gammas) for b in range(1, max_batch + 1)]
    for b in range(1, len(lat)):
        lat[b] = max(lat[b], lat[b - 1])
    return lat
