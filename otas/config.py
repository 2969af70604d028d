"""Dataclass configs with validation. No torch. (The applications file: `otas.apps`.)

Every field has a docstring; `__post_init__` rejects bad values with the value and the fix.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from otas.apps import default_apps_path, load_apps, parse_apps  # noqa: F401 (callers import them from here too)
from otas.types import App

MAX_WORKERS = 256
"""Processes (or threads) a server starts for one job at most: a typo of 10,000 would start 10,000
processes of ~17 MB each."""


def default_decode_workers() -> int:
    """Decode threads for this host: its cores, at least 2 and at most 8 (Pillow decodes outside
    the GIL, so threads scale with cores; past 8 the event loop is the limit)."""
    return min(8, max(2, os.cpu_count() or 2))


MAX_BATCH = 65_536
"""The largest B_max accepted: every policy keeps per-size tables of B_max + 1 rows."""


@dataclass
class SchedulerConfig:
    """Knobs of `otas.sched.Scheduler`, shared by every policy."""

    lookahead: int = 8
    """n: how many pending batches the optimizer plans over (receding horizon; only the first runs)."""
    delta_ms: float = 0.25
    """δ: time step of the optimizer's grid. Batch latencies are rounded *up* to a multiple of δ, so
    a plan the optimizer counts as on time is on time under the profile."""
    max_grid: int = 512
    """Cap on grid points; δ grows to horizon / max_grid when the horizon is long (bounds cost)."""
    max_batch: int = 64
    """B_max: largest batch; also capped by `memory_limit_mb` at the fastest gamma."""
    max_queue_delay_ms: float = 0.0
    """Triton-style: hold a batch smaller than B_max until its oldest query waited this long.
    0 = work-conserving (run whatever is queued as soon as the device is free)."""
    slo_class_tolerance: float = 0.0
    """Apps whose SLOs are within a factor (1 + tolerance) of the class's tightest share a queue;
    0 batches only apps with equal SLOs together."""
    memory_limit_mb: float | None = None
    """M: device memory for one batch; None = unlimited (CPU profiles have no memory table)."""
    reject_infeasible: bool = True
    """True: reject/expire queries that cannot meet their deadline even alone at the fastest
    setting, with a reason. False: keep them and serve them best-effort (they earn nothing)."""
    max_queue: int = 100_000
    """Backpressure: submissions beyond this many queued queries are rejected (queue_full)."""
    latency_ewma: float = 0.1
    """Weight of each measured batch in the online latency correction (0 disables it)."""
    latency_model: str = "affine"
    """The online latency correction: "affine" (the device's time as a factor × the profile's + an offset
    per batch, `otas.sched.latency_fit`) or "factor" (the factor alone)."""
    rate_window: float = 2.0
    """Time constant of the arrival-rate estimate that prices device time (policy `otas`), in
    multiples of the loosest SLO: the horizon over which work still to come competes for the device."""
    floor_window: float = 20.0
    """Time constant over which policy `otas` compares what it earned with what each fixed γ would have
    (`otas.sched.floor`), in multiples of the loosest SLO. Long enough to hold many batches: at 2 (the
    price's window) the comparison flipped on noise and cost the CPU set of the workload suite 0.01
    of geomean; 20 and an unbounded window measured the same (docs/scheduler.md)."""
    host_gap: bool = True
    """Planning ahead (`Scheduler.pipelined`), add the device's idle time before each batch whose work waited
    for it (the host late with it: `Scheduler.host_gap_ms`) to every predicted batch latency, so that a
    host-bound server plans with the batches' true spacing. Measured either way; off: not planned with. With
    no host time (the simulator's default) the gap is 0 and nothing changes (bench/results/host_gap/)."""

    def __post_init__(self) -> None:
        if not isinstance(self.lookahead, int) or self.lookahead < 1:
            raise ValueError(f"lookahead={self.lookahead!r}: use an integer >= 1 (8 is the default)")
        if not (self.delta_ms > 0 and math.isfinite(self.delta_ms)):
            raise ValueError(f"delta_ms={self.delta_ms!r}: use a positive time step in ms, e.g. 0.25")
        if not isinstance(self.max_grid, int) or self.max_grid < 2:
            raise ValueError(f"max_grid={self.max_grid!r}: use an integer >= 2, e.g. 512")
        if not isinstance(self.max_batch, int) or not 1 <= self.max_batch <= MAX_BATCH:
            raise ValueError(f"max_batch={self.max_batch!r}: use an integer in 1..{MAX_BATCH}, e.g. 64")
        if not (self.max_queue_delay_ms >= 0 and math.isfinite(self.max_queue_delay_ms)):
            raise ValueError(f"max_queue_delay_ms={self.max_queue_delay_ms!r}: use 0 or a finite positive delay in ms")
        if not self.slo_class_tolerance >= 0:
            raise ValueError(f"slo_class_tolerance={self.slo_class_tolerance!r}: use >= 0 (0.25 = SLOs within 25%)")
        if self.memory_limit_mb is not None and not (self.memory_limit_mb > 0 and math.isfinite(self.memory_limit_mb)):
            raise ValueError(f"memory_limit_mb={self.memory_limit_mb!r}: use a positive size or None")
        if not isinstance(self.max_queue, int) or self.max_queue < 1:
            raise ValueError(f"max_queue={self.max_queue!r}: use an integer >= 1")
        if not (self.rate_window > 0 and math.isfinite(self.rate_window)):
            raise ValueError(f"rate_window={self.rate_window!r}: use a positive multiple of the loosest SLO, e.g. 2")
        if not self.floor_window > 0:
            raise ValueError(f"floor_window={self.floor_window!r}: use a positive multiple of the loosest SLO, e.g. 20")
        if not 0.0 <= self.latency_ewma <= 1.0:
            raise ValueError(f"latency_ewma={self.latency_ewma!r}: use a weight in [0, 1] (0 = off)")
        if self.latency_model not in ("affine", "factor"):
            raise ValueError(f"latency_model={self.latency_model!r}: use 'affine' (factor and offset) or 'factor'")
        if not isinstance(self.host_gap, bool):
            raise ValueError(f"host_gap={self.host_gap!r}: use true or false")


@dataclass
class EngineConfig:
    """How the engine runs the model: the local server and every Ray replica alike."""

    device: str = "cpu"
    """cpu or cuda (cuda:N)."""
    dtype: str = ""
    """float32 or bfloat16; "" = bfloat16 on cuda, float32 on cpu."""
    mode: str = ""
    """The fast path the runner takes: eager, traced (TorchScript, the GIL released), graphs (CUDA graphs)
    or compile; "" = graphs on cuda, traced on cpu. Profile the device with the same --mode (traced and
    eager run the same kernels, but traced takes about half eager's time at a batch of 1 on a CPU), so the
    scheduler plans what runs."""
    warmup: bool = True
    """Run every γ (on cuda: every batch bucket, capturing its graph) before serving."""
    noop: bool = False
    """No model: measure HTTP + scheduling + collation only."""
    paced: bool = False
    """With noop and a profile: each batch sleeps the profile's latency (emulates that device)."""
    torch_threads: int = 0
    """Threads of the model's forward on a CPU (torch's intra-op pool); 0 = torch's default, one per core
    this process may run on. Fewer than the cores leaves the rest to the front end and decoding."""
    switch_interval_ms: float = 1.0
    """The interpreter's GIL switch interval while the engine runs (Python's default: 5 ms); 0 leaves it.
    The device thread waits up to this long for the GIL after each call into torch whenever another
    thread runs Python (`otas.engine.engine.SWITCH_INTERVAL_S`, bench/gil.py)."""
    plan_ahead: bool | None = None
    """While a batch runs, plan the next and queue it on the device thread behind the running one (at
    once for a full batch queued, else just before the running one is expected to end): the device
    then does not wait for the event loop (`Engine._may_plan`).
    None: on for a device apart from the host (a GPU, or the paced no-op model of one), off on a CPU,
    whose forward shares the host's cores and whose batches (hundreds of ms) are a large share of an
    SLO to plan ahead by (the 10× burst test's accepted requests met their SLO 83-89 % of the time
    planned ahead, against ≥ 90 % without)."""
    launch_ahead: bool = True
    """On a GPU (CUDA graphs), queue each batch on the device behind the running one (`Runner.launch`, the device
    thread reading each answer near its predicted end: `otas.engine.device`), so the device goes from batch to
    batch without waiting for the host's collation and copy back; False: one batch at a time (`Runner.run`).
    Needs planning ahead. On three H100s (bench/results/pipeline/h100_run43/) it served 1.06-1.13 × the images
    per second where the device bounds the server (γ = 0, batches of 64-256) and 0.99-1.00 × where the host does
    (γ = -32), but 0.82-0.89 × at γ = 0 with batches capped at 8 and the server saturated (not explained yet)."""
    delivery_quantile: float = 0.95
    """Deadlines are planned short by this quantile of the recent delivery times (an answer ready on the
    engine to its response leaving the HTTP layer: `otas.engine.delivery`) and of the recent batches' lateness
    against their plans (`Engine.lateness`), on top of the 2 % margin; 0: not at all."""
    decision_log: str = ""
    """A file to append one JSON line per batch to, as decided (`otas.engine.decision_log`); "" = none."""
    decode_workers: int = 0
    """Threads (or processes) decoding images beside the event loop; 0 = the host's cores, 2 to 8
    (`default_decode_workers`)."""
    decode_processes: bool = False
    """Decode in `decode_workers` processes, payloads handed off in chunks, instead of threads: small
    images decode mostly under the GIL, so only processes use many cores (`otas.engine.decode_pool`)."""
    decode_queue: int = 256
    """Images waiting or being decoded at once; a request that would overflow it is refused at once
    (429 decode_busy)."""
    max_queue: int = 0
    """Backpressure: queued requests before 429; 0 = what the device can finish within the loosest SLO."""
    image_formats: tuple[str, ...] = ("PNG", "JPEG")
    """Encoded image formats decoded (Pillow names); anything else is a 400. WEBP may be added."""
    max_image_side: int = 4096
    """Longest side, in pixels, an encoded image may declare."""
    max_image_pixels: int = 1 << 22
    """Width × height an encoded image may decode to (4 MP; about 10 ms per MP on a CPU core); a JPEG counts
    at its DCT-scaled size (a 12 MP photo for a 32 px model decodes about 0.2 MP)."""
    max_image_aspect: float = 16.0
    """Longer side / shorter side an encoded image may declare."""

    def __post_init__(self) -> None:
        if not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ValueError(f"device={self.device!r}: use cpu or cuda (cuda:N)")
        if self.dtype not in ("", "float32", "bfloat16", "float16"):
            raise ValueError(f"dtype={self.dtype!r}: use float32 or bfloat16 (empty = the device's default)")
        if self.mode not in (
            "",
            "eager",
            "traced",
            "graphs",
            "compile",
            "compiled-graphs",
        ):  # otas.adapt.fast.MODES (torch-free here)
            raise ValueError(
                f"mode={self.mode!r}: use eager, traced, graphs, compile or compiled-graphs "
                "(empty = the device's default)"
            )
        if self.mode in ("graphs", "compiled-graphs") and self.device == "cpu":
            raise ValueError(f"mode={self.mode} needs --device cuda; use traced, eager or compile on a CPU")
        if not isinstance(self.torch_threads, int) or isinstance(self.torch_threads, bool) or self.torch_threads < 0:
            raise ValueError(f"torch_threads={self.torch_threads!r}: use a thread count, or 0 for torch's default")
        if not (isinstance(self.switch_interval_ms, int | float) and 0 <= self.switch_interval_ms <= 100):
            raise ValueError(
                f"switch_interval_ms={self.switch_interval_ms!r}: use milliseconds in [0, 100] (0 = Python's)"
            )
        q = self.delivery_quantile
        if not (isinstance(q, int | float) and not isinstance(q, bool) and 0 <= q <= 1):
            raise ValueError(f"delivery_quantile={q!r}: use a quantile in [0, 1], e.g. 0.95 (0: not planned for)")
        if self.decision_log:
            from otas.engine.decision_log import check_path

            check_path(self.decision_log)
        if not isinstance(self.decode_workers, int) or not 0 <= self.decode_workers <= MAX_WORKERS:
            raise ValueError(f"decode_workers={self.decode_workers!r}: use 1..{MAX_WORKERS}, or 0 for the host's cores")
        self.decode_workers = self.decode_workers or default_decode_workers()
        if not isinstance(self.max_queue, int) or self.max_queue < 0:
            raise ValueError(f"max_queue={self.max_queue!r}: use 0 (from the profile) or a positive count")
        if not isinstance(self.decode_queue, int) or self.decode_queue < 1:
            raise ValueError(f"decode_queue={self.decode_queue!r}: use a positive number of images, e.g. 256")
        self.image_formats = tuple(f.strip().upper() for f in self.image_formats)
        self.decode_limits()  # validates the image limits

    def decode_limits(self):
        """The image limits as the decoder reads them (`otas.engine.images.DecodeLimits`)."""
        from otas.engine.images import DecodeLimits

        return DecodeLimits(self.max_image_side, self.max_image_pixels, self.max_image_aspect, self.image_formats)


MAX_BODY_MB = 1023
"""The largest body limit: gRPC takes messages up to twice it, in a signed 32-bit length."""


@dataclass
class HttpConfig:
    """Where and how the HTTP API (and the gRPC API beside it) listens."""

    host: str = "127.0.0.1"
    port: int = 8000
    max_body_mb: float = 8.0
    """Request bodies (and gRPC messages) above this are refused before being read whole."""
    log_level: str = "info"
    grpc_port: int = 8001
    """The KServe v2 gRPC API's port, on `host` (0 = no gRPC); the local backend only."""
    max_connections: int = 2048
    """Open HTTP connections; a request on a connection beyond this is answered 503 and the connection closed."""
    max_inflight_mb: float = 64.0
    """Request bodies being received or held at once, in MiB (bodies of 64 KiB or less are not counted);
    a body that would go over is answered 503 before it is read."""
    header_timeout_s: float = 10.0
    """A connection must deliver a request's headers within this of connecting (or of starting them)."""
    body_timeout_s: float = 10.0
    """A request's whole body must arrive within this of its headers (408 otherwise)."""
    keep_alive_s: float = 5.0
    """An idle keep-alive connection is closed after this."""
    max_header_kb: int = 32
    """Size of a request's line and headers (431 above)."""
    max_pipelined: int = 16
    """Requests a connection may queue behind the one being answered (HTTP/1.1 pipelining); one more is answered
    503 `too_many_pipelined`, after the answers before it, and the connection closed."""
    drain_s: float = 2.0
    """At SIGTERM: for this long readiness fails and every response says `Connection: close`, while
    requests are still accepted (a load balancer stops sending); then the listener closes."""
    json_workers: int = 1
    """Processes parsing large JSON bodies off the event loop (json holds the GIL); 0 = on the loop. Not used
    with `workers`: each front end is a process and parses on its own loop."""
    workers: int = 0
    """HTTP front-end processes (`otas.server.workers`): they parse, decode and answer requests and hand
    them to the one engine process; 0 = HTTP on the engine process's own event loop."""
    front_budget: float = 0.5
    """Share of the tightest application's SLO an inference request may wait in the host's front end
    (HTTP, JSON, decoding) before the scheduler: requests beyond what the host, at its measured rate,
    finishes within it are refused on arrival (503 `overloaded`, `otas.server.admission`); 0 = off."""

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ValueError(f"port={self.port}: use 0..65535")
        if not 0 <= self.grpc_port < 65536:
            raise ValueError(f"grpc_port={self.grpc_port}: use 1..65535, or 0 for no gRPC")
        if self.grpc_port and self.grpc_port == self.port:
            raise ValueError(f"port and grpc_port are both {self.port}: give the HTTP and gRPC APIs a port each")
        if not 0 < self.max_body_mb <= MAX_BODY_MB:
            raise ValueError(f"max_body_mb={self.max_body_mb}: use a size in MiB in (0, {MAX_BODY_MB}]")
        if not isinstance(self.max_connections, int) or self.max_connections < 1:
            raise ValueError(f"max_connections={self.max_connections!r}: use a positive count, e.g. 2048")
        if not math.isfinite(self.max_inflight_mb):
            raise ValueError(f"max_inflight_mb={self.max_inflight_mb}: use a finite size in MiB, e.g. 64")
        if not self.max_inflight_mb >= self.max_body_mb:
            raise ValueError(
                f"max_inflight_mb={self.max_inflight_mb}: use at least max_body_mb ({self.max_body_mb}), "
                "or no body of the largest size could ever be received"
            )
        for name in ("header_timeout_s", "body_timeout_s", "keep_alive_s"):
            if not 0 < getattr(self, name) < math.inf:
                raise ValueError(f"{name}={getattr(self, name)!r}: use a positive number of seconds")
        if not isinstance(self.max_header_kb, int) or not 1 <= self.max_header_kb <= 1024:
            raise ValueError(f"max_header_kb={self.max_header_kb!r}: use 1..1024 KiB, e.g. 32")
        if not isinstance(self.max_pipelined, int) or not 1 <= self.max_pipelined <= 1024:
            raise ValueError(f"max_pipelined={self.max_pipelined!r}: use 1..1024 requests, e.g. 16")
        if not 0 <= self.drain_s < math.inf:
            raise ValueError(f"drain_s={self.drain_s!r}: use 0 (close at once) or a number of seconds")
        if not isinstance(self.json_workers, int) or not 0 <= self.json_workers <= MAX_WORKERS:
            raise ValueError(
                f"json_workers={self.json_workers!r}: use 0 (parse on the event loop) or a count up to {MAX_WORKERS}"
            )
        if not isinstance(self.workers, int) or not 0 <= self.workers <= 64:
            raise ValueError(f"workers={self.workers!r}: use 0 (HTTP on the engine's process) or 1..64 processes")
        if not 0 <= self.front_budget <= 1:
            raise ValueError(f"front_budget={self.front_budget!r}: use a share of the tightest SLO in [0, 1], e.g. 0.5")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * (1 << 20))

    @property
    def max_inflight_bytes(self) -> int:
        return int(self.max_inflight_mb * (1 << 20))


@dataclass
class RayConfig:
    """Scale-out on Ray Serve (`backend="ray"`)."""

    replicas: int = 1
    """Engine replicas, one per GPU (device cuda) or per CPU slot."""
    address: str = ""
    """Cluster to join (auto, HOST:6379, ray://HOST:10001); "" = a new local Ray instance."""

    def __post_init__(self) -> None:
        if not isinstance(self.replicas, int) or self.replicas < 1:
            raise ValueError(f"replicas={self.replicas!r}: use an integer >= 1")


@dataclass
class ServingConfig:
    """The whole of `otas serve`: what to serve, how to schedule and run it, where to listen."""

    apps: list[App]
    model: Path | None = None
    """Checkpoint; None = the shipped model."""
    profile: Path | None = None
    """Latency/accuracy profile of the model on this device (required unless noop)."""
    policy: str = "otas"
    backend: str = "local"
    """local (one process) or ray (Ray Serve replicas behind an application-aware router)."""
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    admin_token: str = field(default="", repr=False)
    """Bearer token that turns on POST/PUT/DELETE /v1/apps; empty = off."""
    apps_file: Path | None = None
    """Where application changes made over HTTP are persisted (the package's apps.yaml)."""

    def __post_init__(self) -> None:
        if not self.apps and not self.admin_token:
            raise ValueError("no applications to serve: list them in apps.yaml, or register them over HTTP "
                             "(give --admin-token or $OTAS_ADMIN_TOKEN)")  # fmt: skip
        if self.admin_token and self.backend != "local":
            raise ValueError("--admin-token (applications at run time) needs --backend local")
        if self.backend not in ("local", "ray"):
            raise ValueError(f"backend={self.backend!r}: use local (one process) or ray (Ray Serve replicas)")
        if self.backend == "local" and self.ray != RayConfig():
            raise ValueError("--replicas and --address need --backend ray")
        if self.engine.paced and not (self.engine.noop and self.profile is not None):
            raise ValueError("--paced emulates a profiled device with the no-op model: give --noop and --profile P")
        if self.profile is None and not (self.engine.noop and not self.engine.paced):
            raise ValueError(
                "give --profile PATH: the latency/accuracy profile of this model on this device "
                "(make one with `otas profile CHECKPOINT --device ...`)"
            )


def asset_path(name: str) -> Path:
    """A file shipped inside the package, under otas/assets/ (the default model, its profile, the sample)."""
    return Path(__file__).parent / "assets" / name
