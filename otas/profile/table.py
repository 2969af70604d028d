"""Offline profiles: accuracy per (task, gamma), latency and memory per (gamma, batch size).

Pure Python (no torch): the scheduler and the simulator read profiles through this module, the
profiler (`otas.profile.measure`) writes them through it.

File format (JSON, ``schema: "otas.profile/1"``)::

    {
      "schema": "otas.profile/1",
      "model": "vit_tiny_p2_c5",            # model name in the registry
      "device": "NVIDIA H100 80GB HBM3",     # torch's device name, or the CPU's
      "dtype": "bfloat16",
      "gammas": [-20, -16, ..., 16],         # the configured set, ascending
      "batch_sizes": [1, 8, 64],             # ascending
      "tasks": {"novel": {"num_classes": 5, "test_images": 5000}},
      "accuracy": {"novel": {"-20": 0.81, "0": 0.86, ...}},    # fraction in [0, 1]
      "latency_ms": {"-20": {"1": 3.1, "8": 9.5, ...}, ...},    # median per batch
      "latency_p90_ms": {... same shape ...},                     # spread, for noisy simulation
      "memory_mb": {"-20": {"1": 210.5, ...}, ...} | null,       # peak device memory, GPU only
      "gflops": {"-20": 0.61, ...},                              # per image, forward pass
      "model_load_ms": 120.0,                # a model swap: weights onto the device, then ready at γ = 0
      "buckets": [1, 2, 4, ..., 256],        # optional: the served path pads a batch to the smallest of
                                             # these >= it (CUDA graphs); latency and memory are read there
      "meta": {"commit": "...", "command": "...", "created": "...", "torch": "...", ...}
    }

JSON object keys are strings; this module converts them to ints once, at load time.
"""

from __future__ import annotations

import bisect
import json
import math
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from otas import jsonio

SCHEMA = "otas.profile/1"


def _key(field: str, k: Any, lo: int | None = None) -> int:
    """A γ or batch size of a profile: an integer (or its decimal string, as JSON keys are), >= `lo`."""
    try:
        if isinstance(k, bool) or not isinstance(k, (int, str)):
            raise ValueError
        v = int(k)
    except ValueError:
        raise ValueError(f"profile field {field}: key {str(k)[:40]!r} is not an integer") from None
    if abs(v) > 1 << 20 or (lo is not None and v < lo):
        raise ValueError(f"profile field {field}: {v} is out of range")
    return v


LATENCY_MS = (1e-6, False, 1e9)
"""A batch's latency in ms lies in [1 ns, 11.6 days]: beyond, the number is a mistake, and a huge one
overflowed the optimizer's time grid (1e20 ms: an IndexError), a tiny one scaled "load 1" without bound."""


def _number(field: str, v: Any, lo: float, positive: bool, hi: float = math.inf) -> float:
    """A finite number in [lo, hi] (> lo with `positive`), or ValueError naming the field."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise ValueError(f"profile field {field}={str(v)[:40]!r}: expected a number")
    try:
        x = float(v)
    except OverflowError:
        raise ValueError(f"profile field {field}: the number is too large") from None
    if not math.isfinite(x) or x < lo or x > hi or (positive and x <= lo):
        raise ValueError(f"profile field {field}={x!r}: expected a finite number {'>' if positive else '>='} {lo:g}"
                         + (f" and <= {hi:g}" if math.isfinite(hi) else ""))  # fmt: skip
    return x


def _object(field: str, v: Any) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise ValueError(f"profile field {field}: expected an object")
    return v


def _merge_every(meta: dict[str, Any]) -> int | None:
    k = meta.get("merge_every")
    if k is not None and (isinstance(k, bool) or not isinstance(k, int) or k < 1):
        raise ValueError(f"profile meta.merge_every={str(k)[:40]!r}: expected an integer >= 1 (blocks per merge step)")
    return k


def _str_keys(d: dict[int, Any]) -> dict[str, Any]:
    return {str(k): v for k, v in sorted(d.items())}


def _interp(xs: list[int], ys: list[float], x: float) -> float:
    """Piecewise-linear in x, linear extrapolation past the last point (batches scale ~linearly). Past
    the last point never below its value, before the first never below its share x / x_0 of it: a noisy
    profile whose last two points fall (a larger batch timed faster) must not extrapolate to 0 ms."""
    if len(xs) == 1:
        return ys[0] * x / xs[0]
    i = bisect.bisect_left(xs, x)
    if i < len(xs) and xs[i] == x:
        return ys[i]
    i = min(max(i, 1), len(xs) - 1)
    x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
    y = y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    if x > xs[-1]:
        return max(y, ys[-1])
    if x < xs[0]:
        return max(y, ys[0] * x / xs[0])
    return y


@dataclass
class Profile:
    """Accuracy, latency and memory of one model on one device, per gamma and batch size."""

    model: str
    device: str
    dtype: str
    gammas: list[int]
    batch_sizes: list[int]
    accuracy: dict[str, dict[int, float]]
    """task -> gamma -> accuracy in [0, 1], for the servable (task, γ) pairs only: a γ missing from
    a task's row cannot be served for that task (the source task has no prompts, so no γ > 0)."""
    latency_ms: dict[int, dict[int, float]]
    """gamma -> batch size -> median latency of one batch, in milliseconds."""
    latency_p90_ms: dict[int, dict[int, float]] | None = None
    memory_mb: dict[int, dict[int, float]] | None = None
    gflops: dict[int, float] | None = None
    tasks: dict[str, dict[str, Any]] = field(default_factory=dict)
    model_load_ms: float | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    buckets: list[int] | None = None
    """The batch sizes the served path pads a batch to (one CUDA graph per (γ, bucket), `FastForward`): a
    batch of b runs, takes and holds as much as the smallest bucket >= b, so latency and memory are read
    there; past the last bucket, at b itself. None: every batch runs at its own size (eager, traced)."""

    def __post_init__(self) -> None:
        if self.buckets is not None and (
            not self.buckets or sorted(set(self.buckets)) != list(self.buckets) or self.buckets[0] < 1
        ):
            got = str(self.buckets)[:80]  # (a hostile list is not echoed whole)
            raise ValueError(f"profile buckets must be ascending, unique batch sizes >= 1, got {got}")
        if sorted(self.gammas) != list(self.gammas) or len(set(self.gammas)) != len(self.gammas):
            raise ValueError(f"profile gammas must be ascending and unique, got {self.gammas}")
        if sorted(set(self.batch_sizes)) != list(self.batch_sizes) or not self.batch_sizes:
            raise ValueError(f"profile batch_sizes must be ascending and unique, got {self.batch_sizes}")
        if self.gflops is not None and set(self.gflops) != set(self.gammas):  # one per γ, as measured
            raise ValueError(
                f"profile gflops has gammas {sorted(self.gflops)}; it needs exactly gammas {self.gammas} (or none)"
            )
        for name, table in (("latency", self.latency_ms), ("latency_p90", self.latency_p90_ms),
                            ("memory", self.memory_mb)):  # fmt: skip
            for g in self.gammas if table is not None else ():
                if g not in table:
                    raise ValueError(f"profile has no {name} for gamma={g}")
                if set(table[g]) != set(self.batch_sizes):  # a missing or extra cell changed results silently
                    raise ValueError(
                        f"profile {name} for gamma={g} has batch sizes {sorted(table[g])}; it needs exactly "
                        f"batch_sizes {self.batch_sizes}"
                    )
            if table is not None and (extra := sorted(set(table) - set(self.gammas))):
                raise ValueError(f"profile {name} has gammas {extra} that are not in gammas {self.gammas}")
        _merge_every(self.meta)  # a bad value fails when the profile is read, not when it is served
        for task, acc in self.accuracy.items():
            if not acc:
                raise ValueError(f"profile task {task!r} has no accuracy at any gamma; it cannot be served")
            extra = sorted(set(acc) - set(self.gammas))
            if extra:
                raise ValueError(f"profile task {task!r} has accuracy for gammas {extra} outside its set {self.gammas}")

    @property
    def merge_every(self) -> int | None:
        """The merge schedule the profile was measured with (`AdaptConfig.merge_every`), or None if
        it does not say (older profiles: the checkpoint's own). ValueError if it is not an integer ≥ 1."""
        return _merge_every(self.meta)

    # -- queries used by the scheduler -------------------------------------------------------

    def padded(self, batch: int) -> int:
        """The batch size a batch of `batch` runs at: its bucket (`buckets`), or itself."""
        b = self.buckets
        if not b or batch > b[-1]:
            return batch
        return b[bisect.bisect_left(b, batch)]

    def for_max_batch(self, max_batch: int) -> Profile:
        """This profile as served with batches of at most `max_batch`: the served path's largest
        bucket is `max_batch` itself (`otas.engine.runner.buckets_for`), the buckets below it are
        kept. Itself where that changes nothing (no buckets, or `max_batch` is one of them)."""
        if not self.buckets:
            return self
        kept = [b for b in self.buckets if b < max_batch] + [max_batch]
        return self if kept == self.buckets else replace(self, buckets=kept)

    def with_buckets(self, buckets: list[int] | tuple[int, ...] | None) -> Profile:
        """The same measurements on a path that pads to `buckets` (None: to nothing)."""
        new = None if buckets is None else list(buckets)
        return self if new == self.buckets else replace(self, buckets=new)

    def lat(self, gamma: int, batch: int) -> float:
        """Latency in ms of one batch of `batch` images at `gamma` (interpolated in batch size, at the
        size the batch runs at: `padded`)."""
        return self._read(self.latency_ms, gamma, batch)

    def lat_p90(self, gamma: int, batch: int) -> float:
        if self.latency_p90_ms is None:
            return self.lat(gamma, batch)
        return self._read(self.latency_p90_ms, gamma, batch)

    def acc(self, task: str, gamma: int) -> float:
        if gamma not in self.servable(task):
            raise ValueError(f"task {task!r} is not served at gamma={gamma}; it is served at {self.servable(task)}")
        return self.accuracy[task][gamma]

    def servable(self, task: str) -> list[int]:
        """The γ at which `task` can be served (the keys of its accuracy row), ascending."""
        if task not in self.accuracy:
            raise ValueError(f"profile {self.model!r} has no task {task!r}; it has {sorted(self.accuracy)}")
        return sorted(self.accuracy[task])

    def mem(self, gamma: int, batch: int) -> float:
        """Peak device memory in MB, or 0.0 where the profile has none (CPU)."""
        if self.memory_mb is None:
            return 0.0
        return self._read(self.memory_mb, gamma, batch)

    def throughput(self, gamma: int, max_batch: int, max_lat_ms: float | None = None) -> float:
        """Best images per second at `gamma` over batch sizes 1..max_batch whose batch latency is
        within `max_lat_ms` (batch size 1 if none is): the sustainable rate of one device."""
        p = self.for_max_batch(max_batch)
        best = 1000.0 / p.lat(gamma, 1)
        for b in range(2, max_batch + 1):
            lat = p.lat(gamma, b)
            if max_lat_ms is not None and lat > max_lat_ms:
                break
            best = max(best, 1000.0 * b / lat)
        return best

    def restrict(self, gammas: list[int]) -> Profile:
        """The same profile served with only `gammas` (a subset of its set that includes 0)."""
        keep = sorted(set(gammas))
        if 0 not in keep or not set(keep) <= set(self.gammas):
            raise ValueError(f"gammas {keep} must include 0 and be a subset of the profile's set {self.gammas}")

        def sub(t: dict[int, Any] | None) -> dict[int, Any] | None:
            return None if t is None else {g: t[g] for g in keep}

        return replace(
            self,
            gammas=keep,
            accuracy={task: {g: v for g, v in a.items() if g in keep} for task, a in self.accuracy.items()},
            latency_ms=sub(self.latency_ms),  # type: ignore[arg-type]
            latency_p90_ms=sub(self.latency_p90_ms),
            memory_mb=sub(self.memory_mb),
            gflops=sub(self.gflops),
        )

    def timing_warnings(self, tolerance: float = 0.10) -> list[str]:
        """One line per γ whose latency row falls with the batch size by more than `tolerance` (a larger
        batch timed faster than a smaller one): the host was busy while the smaller batch was timed, and
        the scheduler would take batching to cost less than it does. Empty for a sound profile."""
        out = []
        for g in self.gammas:
            row = self.latency_ms[g]
            slowest = self.batch_sizes[0]
            for b in self.batch_sizes[1:]:
                if row[b] < (1 - tolerance) * row[slowest]:
                    out.append(
                        f"profile {self.model!r} ({self.device}): at gamma={g} a batch of {b} is timed at "
                        f"{row[b]:.3g} ms, faster than a batch of {slowest} ({row[slowest]:.3g} ms); the host was "
                        "likely busy while the smaller batch was timed: re-profile on an idle host"
                    )
                    break
                if row[b] > row[slowest]:
                    slowest = b
        return out

    def _read(self, table: dict[int, dict[int, float]], gamma: int, batch: int) -> float:
        """`table` at `gamma`, interpolated in batch size at the size the batch runs at (`padded`)."""
        row = self._row(table, gamma)
        xs = sorted(row)
        return _interp(xs, [row[b] for b in xs], self.padded(batch))

    def _row(self, table: dict[int, Any], gamma: int) -> Any:
        try:
            return table[gamma]
        except KeyError:
            raise ValueError(f"gamma={gamma} is not in the profile's set {self.gammas}") from None

    # -- files --------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        def table(t: dict[int, dict[int, float]] | None) -> dict[str, Any] | None:
            return None if t is None else {str(g): _str_keys(row) for g, row in sorted(t.items())}

        out = {
            "schema": SCHEMA,
            "model": self.model,
            "device": self.device,
            "dtype": self.dtype,
            "gammas": list(self.gammas),
            "batch_sizes": list(self.batch_sizes),
            "tasks": self.tasks,
            "accuracy": {t: _str_keys(a) for t, a in self.accuracy.items()},
            "latency_ms": table(self.latency_ms),
            "latency_p90_ms": table(self.latency_p90_ms),
            "memory_mb": table(self.memory_mb),
            "gflops": None if self.gflops is None else _str_keys(self.gflops),
            "model_load_ms": self.model_load_ms,
            "meta": self.meta,
        }
        if self.buckets is not None:  # (absent: a path that pads nothing, as files before the field)
            out["buckets"] = list(self.buckets)
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Profile:
        """A profile from its JSON form, every field checked (a profile is a file from anywhere): a
        ValueError names the field and what it must be."""
        if not isinstance(d, dict) or d.get("schema") != SCHEMA:
            got = d.get("schema") if isinstance(d, dict) else type(d).__name__
            raise ValueError(f"not an otas profile: schema={got!r}, expected {SCHEMA!r}")
        required = ("model", "device", "dtype", "gammas", "batch_sizes", "accuracy", "latency_ms")
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(f"profile lacks the fields {missing}; make it with `otas profile`")
        for k in ("model", "device", "dtype"):
            if not isinstance(d[k], str):
                raise ValueError(f"profile field {k}={str(d[k])[:60]!r}: expected a string")

        def table(name: str, lo: float, positive: bool, hi: float = math.inf) -> dict[int, dict[int, float]] | None:
            t = d.get(name)
            if t is None:
                return None
            if not isinstance(t, dict):
                raise ValueError(f"profile field {name}: expected an object gamma -> batch size -> number")
            out = {}
            for g, row in t.items():
                if not isinstance(row, dict) or not row:
                    raise ValueError(f"profile field {name}[{g!r}]: expected a non-empty object batch size -> number")
                out[_key(name, g)] = {
                    _key(name, b, 1): _number(f"{name}[{g}][{b}]", v, lo, positive, hi) for b, v in row.items()
                }
            return out

        def numbers(name: str, lo: float, positive: bool) -> dict[int, float]:
            row = d[name]
            if not isinstance(row, dict):
                raise ValueError(f"profile field {name}: expected an object gamma -> number")
            return {_key(name, g): _number(f"{name}[{g}]", v, lo, positive) for g, v in row.items()}

        acc = d["accuracy"]
        if not isinstance(acc, dict) or not all(isinstance(t, str) and isinstance(a, dict) for t, a in acc.items()):
            raise ValueError("profile field accuracy: expected an object task -> gamma -> accuracy in [0, 1]")
        for k in ("gammas", "batch_sizes"):
            if not isinstance(d[k], list) or len(d[k]) > 4096:
                raise ValueError(f"profile field {k}: expected a list of integers")
        buckets = d.get("buckets")
        if buckets is not None and (
            not isinstance(buckets, list)
            or len(buckets) > 4096
            or not all(isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= 1 << 20 for b in buckets)
        ):
            raise ValueError("profile field buckets: expected a list of batch sizes, integers from 1 (or null)")
        load_ms = d.get("model_load_ms")
        return cls(
            model=d["model"],
            device=d["device"],
            dtype=d["dtype"],
            gammas=[_key("gammas", g) for g in d["gammas"]],
            batch_sizes=[_key("batch_sizes", b, 1) for b in d["batch_sizes"]],
            accuracy={
                t: {_key(f"accuracy[{t}]", g): _number(f"accuracy[{t}][{g}]", v, 0.0, False, 1.0) for g, v in a.items()}
                for t, a in acc.items()
            },
            latency_ms=table("latency_ms", *LATENCY_MS),  # type: ignore[arg-type]
            latency_p90_ms=table("latency_p90_ms", *LATENCY_MS),
            memory_mb=table("memory_mb", 0.0, False),
            gflops=None if d.get("gflops") is None else numbers("gflops", 0.0, True),
            tasks=_object("tasks", d.get("tasks", {})),
            model_load_ms=None if load_ms is None else _number("model_load_ms", load_ms, 0.0, False),
            meta=_object("meta", d.get("meta", {})),
            buckets=buckets,
        )

    def save(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Profile:
        p = Path(path)
        if p.is_dir():
            raise ValueError(f"profile file {p} is a directory; give the profile's JSON file")
        if not p.is_file():
            raise ValueError(f"profile file {p} does not exist; run `otas profile` to make one")
        try:
            d = jsonio.loads_unique(p.read_text())
        except jsonio.DuplicateKeyError as e:
            raise ValueError(f"profile file {p}: {e}") from None
        except (ValueError, RecursionError) as e:
            raise ValueError(f"profile file {p} is not JSON ({str(e)[:200]}); make it with `otas profile`") from None
        try:
            return cls.from_dict(d)
        except ValueError as e:
            raise ValueError(f"profile file {p}: {e}") from None


def config_warnings(apps: Any, profiles: list[Profile]) -> list[str]:
    """What a run on `profiles` should say before it starts: `unmeetable_slos`, and each profile's
    `timing_warnings`."""
    return unmeetable_slos(apps, profiles) + [w for pr in profiles for w in pr.timing_warnings()]


def unmeetable_slos(apps: Any, profiles: list[Profile]) -> list[str]:
    """One line per application whose SLO is below the fastest batch of one of its task in any of
    `profiles` (whose task none of them serves is skipped: the caller refuses it with its own message):
    every request of it would be refused."""
    out = []
    for a in apps:
        try:
            fastest = min(pr.lat(g, 1) for pr in profiles for g in pr.servable(a.task))
        except ValueError:
            continue
        if a.slo_ms < fastest:
            out.append(
                f"application {a.name!r}: SLO {a.slo_ms:g} ms is below the fastest batch of one ({fastest:.3g} ms in "
                "the profile); none of its requests can be served"
            )
    return out
