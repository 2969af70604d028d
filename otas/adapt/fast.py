"""The fast path: on a GPU bf16, static shapes per (γ, batch bucket), CUDA graphs or torch.compile; on
a CPU the forward at each γ traced once (TorchScript), so it runs in C++ with the GIL released.

A batch of b images is padded to the smallest bucket >= b and copied (as uint8: 4x fewer bytes than
float) into a static input buffer; normalisation, the forward at γ and every task head run inside
one captured graph, and the first b rows of the output are returned. Tasks are an index tensor, so
one graph per (γ, bucket) serves any mix of applications.

With `host_io` (what `otas serve` and `otas profile` run), each graph also holds the copies in from
pinned host buffers and the copy out to one, and `predict_host` writes the images and task indices
into those buffers with NumPy: a batch then calls into torch twice (replay, wait) instead of eight
times. Each call into torch gives the GIL back and must take it again, waiting up to the switch
interval while the server's event loop runs Python; on one H200 the eight waits made a 1-2 ms batch
take 7-19 ms beside one busy thread (`bench/gil.py --device cuda`).

Why "traced" on a CPU: an eager forward is ~300 Python-dispatched ops, each giving the GIL back and
taking it again. In a server the event loop, the scheduler and decoding are Python threads of the
same process; while any of them runs Python, every op of the forward waits up to the interpreter's
switch interval for the GIL. One busy Python thread made ViT-Tiny's forward 3-76× slower
(`bench/gil.py`); the traced forward runs the same ATen kernels from C++ and is not held up.
"""

from __future__ import annotations

import bisect
import importlib.util
import queue
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np
import torch

from otas.adapt.ops import check_merge_impl, merge_ops
from otas.adapt.vit import AdaptiveViT
from otas.collate import collate
from otas.data.transforms import Normalize

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MODES = ("eager", "traced", "graphs", "compile", "compiled-graphs")
GRAPH_MODES = ("graphs", "compiled-graphs")
PER_SHAPE_MODES = ("compile", *GRAPH_MODES)
"""Modes that build one graph or compiled function per (γ, batch bucket); eager and traced serve any size."""


class TraceFallbackWarning(UserWarning):
    """A γ whose traced forward could not be made or did not match the eager one: it runs eager."""


class HostIOFallbackWarning(UserWarning):
    """CUDA graphs that capture their host copies could not be made, or answered other than the forward:
    each batch copies in and out with torch calls around the replay instead."""


def default_merge_impl(device: torch.device) -> str:
    """The merge implementation `merge_impl="auto"` picks: on a GPU the fused Triton merge and proportional
    attention as one Triton kernel with a per-key log(size) bias (two kernels per merge step, attention at
    the model's own head dim; faster than the log(size) column in every cell measured on an H200,
    docs/gpu.md), or the one-hot matmul merge and the column where triton is not installed; on a CPU the
    reference gathers and scatter-add, which the CPU profile was measured with."""
    if device.type != "cuda":
        return "reference"
    return "triton+bias" if importlib.util.find_spec("triton") is not None else "matmul+column"


def default_fused_norm(device: torch.device) -> bool:
    """What `fused_norm=None` picks: the Triton LayerNorm on a GPU where triton is installed (on one
    H200 it made ViT-Tiny's γ = 0 forward 1.38× faster at batch 256 and 1.08× at 8, docs/gpu.md),
    PyTorch's elsewhere."""
    return device.type == "cuda" and importlib.util.find_spec("triton") is not None


@dataclass
class FastConfig:
    mode: str = "graphs"
    """"eager", "traced" (the forward at each γ traced once with TorchScript, any batch size: the same
    kernels as eager, run from C++ with the GIL released), "graphs" (CUDA graphs per (γ, bucket)),
    "compile" (torch.compile per shape) or "compiled-graphs" (torch.compile per shape, captured in CUDA
    graphs: fused kernels, no launch cost)."""
    buckets: tuple[int, ...] = DEFAULT_BUCKETS
    """Batch sizes graphs are captured for; a batch is padded to the next one."""
    dtype: torch.dtype = torch.bfloat16
    fused_norm: bool | None = None
    """Run every LayerNorm as one Triton kernel over blocks of rows (`otas.adapt.triton_norm`; CUDA,
    needs triton). The same function up to rounding. None: on where it runs (`default_fused_norm`)."""
    merge_impl: str = "auto"
    """How merged blocks attend and merge (`otas.adapt.ops`): "reference", or any of "matmul", "column",
    "compile", "triton", "bias" joined by "+" (e.g. "matmul+column", "triton+bias"; "triton" excludes "matmul"
    and "compile", "bias" excludes "column", and both need CUDA). All compute the same function; "limit" is
    for benchmarks.
    "auto": the fastest measured on the device type (`default_merge_impl`)."""
    host_io: bool = False
    """Graph modes: each captured graph copies its input from pinned host buffers and its output to one,
    so a batch through `predict_host` is one replay and one wait, with no other call into torch (the
    served path). Off, a graph holds the device work only (kernel benchmarks)."""
    launch_timing: str = "events"
    """How `launch` times a batch on the device: "events", two timing events around its replay; "chain", one
    after it, a batch queued behind the one before timed from that one's event (a start event only where the
    device was idle at its launch). Each event record gives the GIL back and waits to take it again while other
    threads run Python, so "chain" saves one such wait a batch (not yet measured on a GPU: a lead for the loss
    of launching ahead at batches of 8, bench/results/pipeline/h100_run43/)."""

    def __post_init__(self) -> None:
        if self.launch_timing not in ("events", "chain"):
            raise ValueError(f"launch_timing must be 'events' or 'chain'; got {self.launch_timing!r}")
        if self.merge_impl != "auto":
            check_merge_impl(self.merge_impl)
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        if not self.buckets or sorted(self.buckets) != list(self.buckets) or self.buckets[0] < 1:
            raise ValueError(f"buckets must be ascending positive batch sizes, got {self.buckets}")


class FastForward:
    """Callable `(uint8 images (B, H, W, 3) on the host or device, γ, tasks) -> probabilities (B, K)`."""

    def __init__(
        self,
        model: AdaptiveViT,
        device: torch.device | str,
        config: FastConfig | None = None,
        normalize: Normalize | None = None,
    ):
        self.cfg = config or FastConfig()
        self.device = torch.device(device)
        if self.cfg.mode in GRAPH_MODES and self.device.type != "cuda":
            raise ValueError("CUDA graphs need a CUDA device; use mode='eager' or 'compile' on a CPU")
        self.model = model.to(self.device, self.cfg.dtype).eval()
        self.fused_norm = default_fused_norm(self.device) if self.cfg.fused_norm is None else self.cfg.fused_norm
        if self.fused_norm:
            self.model = _fused_norms(self.model, self.device)
        self.merge_impl = default_merge_impl(self.device) if self.cfg.merge_impl == "auto" else self.cfg.merge_impl
        self.ops = merge_ops(self.merge_impl, self.model.vit)  # after the move: it may copy weights
        self.tasks = model.tasks  # index order of task ids
        size = model.vit.patch_embed.img_size
        self._shape = (*size, 3)
        # made once on the device: a host-to-device copy is not allowed inside graph capture
        self._normalize = (normalize or Normalize.of(model.preprocess)).to(self.device)
        self._graphs: dict[tuple[int, int], tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._traced: dict[int, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]] = {}
        self._host_graphs = self.cfg.host_io and self.cfg.mode in GRAPH_MODES
        self._host_io_checked = False  # the first graph's copies are checked once (`_host_io_differs`)
        # the host side of a batch, made at first use (pinned on CUDA: the copies are asynchronous, and
        # graphs capture them): images (B_max, H, W, 3) uint8, task indices (B_max,), output (B_max, K)
        self._in = self._idx = self._out = None
        self._in_np = self._idx_np = self._out_np = None
        self._extra_slots: list[tuple] = []  # `launch`'s further sets of those buffers (`_slot`)
        self._free: queue.SimpleQueue[int] | None = None  # the slots no launched batch holds (`launch`)
        self._slot_events: list[tuple[torch.cuda.Event, torch.cuda.Event]] = []  # per slot (`launch`)
        self._ring: list[torch.cuda.Event] = []  # launch_timing "chain": batch n's end event is _ring[n % 3]
        self._launches = 0
        self._last_done: tuple[torch.cuda.Event, torch.cuda.Stream] | None = None  # the last batch's end ("chain")
        self._fn = self._forward
        if self.cfg.mode in ("compile", "compiled-graphs"):
            self._fn = torch.compile(self._forward, dynamic=False)

    def bucket(self, batch: int) -> int:
        i = bisect.bisect_left(self.cfg.buckets, batch)
        if i == len(self.cfg.buckets):
            raise ValueError(f"batch of {batch} exceeds the largest bucket {self.cfg.buckets[-1]}")
        return self.cfg.buckets[i]

    def _forward(self, images: torch.Tensor, gamma: int, task_idx: torch.Tensor) -> torch.Tensor:
        x = self._normalize(images).to(self.cfg.dtype)  # (B, 3, H, W)
        return self.model.forward_indexed(x, gamma, task_idx, self.ops).float().softmax(-1)

    @torch.inference_mode()
    def __call__(self, images: torch.Tensor, gamma: int, tasks: str | Sequence[str]) -> torch.Tensor:
        b = images.shape[0]
        idx = self.model.task_index(tasks, b, gamma)  # raises on an unknown or unservable (task, γ)
        gamma = int(gamma)
        if self.cfg.mode == "eager":
            return self._forward(images.to(self.device, non_blocking=True), gamma, idx.to(self.device))
        if self.cfg.mode == "traced":
            fn = self._trace(gamma)  # made outside the context below: freezing needs the optimiser on
            # unoptimised: the plain interpreter, no profiling runs that re-specialise on a new batch size
            with torch.jit.optimized_execution(False):
                return fn(images.to(self.device, non_blocking=True), idx.to(self.device))
        B = self.bucket(b)
        if self.cfg.mode == "compile":
            x = torch.zeros((B, *self._shape), dtype=torch.uint8, device=self.device)
            x[:b].copy_(images, non_blocking=True)
            i = torch.zeros(B, dtype=torch.long, device=self.device)
            i[:b].copy_(idx, non_blocking=True)
            if gamma > 0:
                i[b:] = 1  # padding rows use a task that has prompts
            return self._fn(x, gamma, i)[:b]
        graph, x, i, out = self._graph(gamma, B)
        if self._host_graphs:  # the graph copies its inputs in from the pinned host buffers
            x, i = self._in, self._idx
        x[:b].copy_(images, non_blocking=True)
        i[:b].copy_(idx, non_blocking=True)
        graph.replay()
        if self._host_graphs:  # no replay is left pending that could still read the host buffers
            torch.cuda.current_stream(self.device).synchronize()
        return out[:b]

    def predict_host(
        self, images: Sequence[np.ndarray] | np.ndarray | torch.Tensor, gamma: int, tasks: str | Sequence[str]
    ) -> np.ndarray:
        """Host images (a sequence of (H, W, 3) uint8 arrays, or one (B, H, W, 3) uint8 array or tensor), γ and
        the tasks -> probabilities (B, K) float32, a new NumPy array: the served path, waiting for the device.

        With `host_io` in a graph mode, the images and task indices are written into the graph's pinned
        buffers with NumPy, and the batch is one replay and one wait: two calls into torch, so two waits
        for the GIL at most, whatever else the process runs."""
        b = len(images)
        if not self._host_graphs:
            x = self._stage(images, b)
            with torch.inference_mode():
                return self(x, gamma, tasks).float().cpu().numpy()  # .cpu(): a copy, and the wait
        B = self.bucket(b)  # raises for a batch past the largest bucket
        idx = self.model.task_indices(tasks, b, gamma)  # raises on an unknown or unservable (task, γ)
        gamma = int(gamma)
        # OPTIMIZATION: a captured graph straight from the dict, without `_graph`'s inference-mode wrapper
        graph = (self._graphs.get((gamma, B)) or self._graph(gamma, B))[0]
        if not self._host_graphs:  # the first capture's check fell back
            return self.predict_host(images, gamma, tasks)
        self._stage_np(images, b)
        self._idx_np[:b] = idx
        graph.replay()
        torch.cuda.current_stream(self.device).synchronize()
        return self._out_np[:b].copy()

    SLOTS = 2
    """Batches `launch` may hold on the device at once: one running, the next queued behind it."""

    @property
    def launches_ahead(self) -> bool:
        """Whether `launch` queues a batch behind the running one (graphs with host I/O) or runs it now."""
        return self._host_graphs

    def captures(self, gamma: int, b: int) -> bool:
        """Whether `launch` of a batch of `b` at γ would first capture graphs, which it does with no batch in
        flight: it waits until every launched batch is read (warm-up captures them all before serving)."""
        return self._host_graphs and any(
            _graph_key(int(gamma), self.bucket(b), k) not in self._graphs for k in range(self.SLOTS)
        )

    def launch(
        self, images: Sequence[np.ndarray] | np.ndarray | torch.Tensor, gamma: int, tasks: str | Sequence[str]
    ) -> Launch[tuple[np.ndarray, float]]:
        """`predict_host` in two halves: stage the batch and queue it on the device, returning at once; the
        returned handle says whether the device is done with it (`ready`, never blocking) and, called once,
        waits for it and gives its probabilities (B, K), a new array, and the device's ms on it (CUDA events
        around its replay: from when the device took it up, after the batch before, to its answer copied
        out). While one batch runs the next is staged in the other slot's pinned buffers and queued behind
        it, so the device goes from one to the next without waiting for the host (its collation, the
        answer's copy, the thread's turn). Each slot has its own graphs (captured at first use: `_graph`,
        `captures`); a launch waits for a free slot, so at most `SLOTS` batches are in flight. Called from
        one thread; the waits, in launch order, from any (the same, or another). Without host I/O graphs
        (other modes, or their check fell back): `predict_host` now, its wall time as the device's. Not to
        be mixed with `predict_host` while a launched batch is unread: slot 0 is its buffers too."""
        if not self._host_graphs:
            t0 = time.perf_counter()
            probs = self.predict_host(images, gamma, tasks)
            ms = (time.perf_counter() - t0) * 1e3
            return Launch(lambda: True, lambda: (probs, ms))
        b = len(images)
        B = self.bucket(b)
        idx = self.model.task_indices(tasks, b, gamma)
        gamma = int(gamma)
        if self._free is None:
            self._free = queue.SimpleQueue()
            for k in range(self.SLOTS):
                self._free.put(k)
            # each slot's batch taken up by the device and done with (timed: `elapsed_time` between them)
            self._slot_events = [
                (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(self.SLOTS)
            ]
            if self.cfg.launch_timing == "chain":  # (waits in launch order: n is read before n + 2 launches, so
                # n - 1's end event is not yet reused)
                self._ring = [torch.cuda.Event(enable_timing=True) for _ in range(self.SLOTS + 1)]
        if self.captures(gamma, b):
            # a capture while a thread waits on the device is refused (global capture mode): first every batch
            # in flight is waited for (by whoever launched it: the caller reads them first, `captures`), then
            # each slot's graph captured (warm-up does this early)
            held = [self._free.get() for _ in range(self.SLOTS)]
            try:
                for k in range(self.SLOTS):
                    self._graph(gamma, B, k)
            finally:
                for k in held:
                    self._free.put(k)
            if not self._host_graphs:  # the copies' check fell back
                return self.launch(images, gamma, tasks)
        k = self._free.get()  # blocks while every slot holds a batch not yet waited for
        try:
            graph = self._graphs[_graph_key(gamma, B, k)][0]
            _, _, _, h_in, h_idx, h_out = self._slot(k)
            self._stage_np(images, b, h_in)
            h_idx[:b] = idx
            start, done = self._slot_events[k]
            stream = torch.cuda.current_stream(self.device)
            since = start
            if self.cfg.launch_timing == "chain":
                prev, on = self._last_done or (None, None)
                if prev is not None and on == stream and not prev.query():  # it starts when that one ends
                    since = prev
                else:
                    start.record(stream)
                graph.replay()  # (had prev ended just before this, the time counts the gap: an upper bound)
                done = self._ring[self._launches % len(self._ring)]
                done.record(stream)
                self._launches, self._last_done = self._launches + 1, (done, stream)
            else:
                start.record(stream)
                graph.replay()
                done.record(stream)
        except BaseException:
            self._last_done = None  # ("chain": the next batch times itself from its own start)
            self._free.put(k)
            raise
        waited = False

        def wait() -> tuple[np.ndarray, float]:
            nonlocal waited
            if waited:  # a second wait would free the slot twice, and two batches would share it
                raise RuntimeError("this launched batch was already waited for")
            waited = True
            try:
                done.synchronize()
                return h_out[:b].copy(), since.elapsed_time(done)
            finally:
                self._free.put(k)

        return Launch(done.query, wait)

    def _host_buffers(self) -> None:
        if self._in is None:
            pin = self.device.type == "cuda"
            self._in = torch.zeros((self.cfg.buckets[-1], *self._shape), dtype=torch.uint8, pin_memory=pin)
            self._idx = torch.zeros(self.cfg.buckets[-1], dtype=torch.long, pin_memory=pin)
            self._in_np, self._idx_np = self._in.numpy(), self._idx.numpy()

    def _stage_np(
        self, images: Sequence[np.ndarray] | np.ndarray | torch.Tensor, b: int, into: np.ndarray | None = None
    ) -> None:
        """`images` into the pinned staging buffer (slot 0's, or `into`) with NumPy alone (no torch call: the
        served graph path)."""
        self._host_buffers()
        if isinstance(images, torch.Tensor):
            images = images.cpu().numpy()
        collate(images, self._in_np if into is None else into)  # (b, H, W, 3), no allocation, the GIL held

    def _stage(self, images: Sequence[np.ndarray] | np.ndarray | torch.Tensor, b: int) -> torch.Tensor:
        """`images` as a uint8 (b, H, W, 3) host tensor, in the staging buffer where it fits."""
        if b > self.cfg.buckets[-1]:  # eager and traced serve any size
            if isinstance(images, torch.Tensor):
                images = images.cpu().numpy()
            return torch.from_numpy(np.stack(images).astype(np.uint8, casting="same_kind", copy=False))
        self._stage_np(images, b)
        return self._in[:b]

    def replay(self, gamma: int, batch: int):
        """The captured forward of (γ, `batch`'s bucket) as a call without arguments, for benchmarks: it
        replays on whatever the input buffers hold (random images at capture), with no host work."""
        if self.cfg.mode not in GRAPH_MODES:
            raise ValueError(f"replay needs mode='graphs', this FastForward runs mode={self.cfg.mode!r}")
        with torch.inference_mode():  # captured as a served call is
            return self._graph(int(gamma), self.bucket(batch))[0].replay

    def _trace(self, gamma: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """The forward at γ, traced on one image and frozen (weights as constants). Nothing in it depends
        on the batch size (`forward_indexed`), so the trace serves every batch. The trace is checked
        once against the eager forward on a batch of another size; a model whose trace fails or
        differs (a forward that branches on its input in Python) keeps the eager forward at that γ,
        with a warning."""
        if gamma not in self._traced:
            self._traced[gamma] = self._checked_trace(gamma)
        return self._traced[gamma]

    def _checked_trace(self, gamma: int) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, 256, (3, *self._shape), dtype=torch.uint8, generator=g).to(self.device)
        i = torch.full((3,), 1 if gamma > 0 else 0, dtype=torch.long, device=self.device)
        eager = _AtGamma(self, gamma).eval()  # traced below, and kept where the trace fails or differs
        try:
            # TorchScript is deprecated in favour of torch.compile/export, but it is still the one way to run a
            # whole forward from C++, GIL released, with no compiler toolchain on the host: keep its warnings quiet
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                warnings.simplefilter("ignore", FutureWarning)
                traced = torch.jit.freeze(torch.jit.trace(eager, (x[:1], i[:1]), check_trace=False))
            with torch.jit.optimized_execution(False):
                same = torch.allclose(traced(x, i), eager(x, i), rtol=1e-4, atol=1e-5)
            why = "" if same else "its answers differ from the eager forward's"
        except Exception as e:  # noqa: BLE001 (any failure to trace leaves the eager forward, with the reason)
            why = f"tracing failed ({str(e).splitlines()[0][:200]})"
        if why:
            warnings.warn(
                f"gamma={gamma}: {why}; this gamma runs the eager forward", TraceFallbackWarning, stacklevel=3
            )
            return eager
        return traced

    @torch.inference_mode()
    def _graph(self, gamma: int, B: int, slot: int = 0):
        if slot:  # `launch`'s second set: the same forward, copying through that slot's buffers
            key = _graph_key(gamma, B, slot)
            if key not in self._graphs:
                self._graph(gamma, B)  # slot 0 first: its capture checks the copies and may fall back
                if self._host_graphs:
                    self._graphs[key] = self._capture(gamma, B, slot)
            return self._graphs.get(key) or self._graphs[(gamma, B)]
        if (gamma, B) not in self._graphs:
            if self._host_graphs and not self._host_io_checked:
                self._host_io_checked = True
                try:
                    entry = self._capture(gamma, B)
                    why = self._host_io_differs(entry[0], gamma, B)
                except RuntimeError as e:  # a capture CUDA refuses leaves the copies to torch calls
                    why = f"capturing the copies failed ({str(e).splitlines()[0][:200]})"
                if why:
                    warnings.warn(
                        f"{why}; each batch copies in and out with torch calls around the replay",
                        HostIOFallbackWarning,
                        stacklevel=3,
                    )
                    self._host_graphs = False
                    self._graphs.clear()
                else:
                    self._graphs[(gamma, B)] = entry
            if (gamma, B) not in self._graphs:
                self._graphs[(gamma, B)] = self._capture(gamma, B)
        return self._graphs[(gamma, B)]

    def _capture(self, gamma: int, B: int, slot: int = 0):
        """(graph, device input, device task indices, device output) at (γ, bucket B); with host I/O the
        graph also copies the pinned host buffers of `slot` (`launch`) in first and its output out last."""
        x = torch.randint(0, 256, (B, *self._shape), dtype=torch.uint8, device=self.device)
        i = torch.full((B,), 1 if gamma > 0 else 0, dtype=torch.long, device=self.device)
        s = torch.cuda.Stream(self.device)
        s.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(s):
            for _ in range(2):  # warm-up outside the graph (cuBLAS handles, autotuning, compiling)
                y = self._fn(x, gamma, i)
        torch.cuda.current_stream(self.device).wait_stream(s)
        io = self._host_graphs
        if io and self._out is None:  # (B_max, K): K the most classes of any task
            self._host_buffers()
            self._out = torch.zeros((self.cfg.buckets[-1], y.shape[1]), dtype=y.dtype, pin_memory=True)
            self._out_np = self._out.numpy()
        if io:
            h_in, h_idx, h_out = self._slot(slot)[:3]
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            if io:  # pinned host -> device, captured: each replay reads what the host wrote before it
                x.copy_(h_in[:B], non_blocking=True)
                i.copy_(h_idx[:B], non_blocking=True)
            out = self._fn(x, gamma, i)
            if io:
                h_out[:B].copy_(out, non_blocking=True)
        return graph, x, i, out

    def _slot(self, k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
        """The pinned host buffers of batch slot `k` (images, task indices, output) and their NumPy views; slot 0
        is `predict_host`'s, the others `launch`'s second set (made at first use, shaped as slot 0)."""
        if k == 0:
            return self._in, self._idx, self._out, self._in_np, self._idx_np, self._out_np
        while len(self._extra_slots) < k:
            bufs = [torch.zeros_like(t, pin_memory=True) for t in (self._in, self._idx, self._out)]
            self._extra_slots.append((*bufs, *(t.numpy() for t in bufs)))
        return self._extra_slots[k - 1]

    def _host_io_differs(self, graph: torch.cuda.CUDAGraph, gamma: int, B: int) -> str:
        """Why the graph's captured copies do not carry what the host wrote ("" if they do): two batches of
        other images and task mixes, replayed, against the forward run directly on the same inputs (a
        copy captured as a no-op would answer with the capture's inputs)."""
        g = torch.Generator().manual_seed(0)
        for shift in (0, 1):
            x = torch.randint(0, 256, (B, *self._shape), dtype=torch.uint8, generator=g)
            i = (torch.arange(B) + shift) % len(self.tasks)  # every task index is valid at every γ
            self._in_np[:B], self._idx_np[:B] = x.numpy(), i.numpy()
            graph.replay()
            torch.cuda.current_stream(self.device).synchronize()
            want = self._fn(x.to(self.device), gamma, i.to(self.device)).float().cpu().numpy()
            err = float(np.abs(self._out_np[:B] - want).max())
            if not err <= 2e-2:
                return f"the graph at gamma={gamma}, batch {B} answered {err:.3g} away from the direct forward"
        return ""


T = TypeVar("T")


@dataclass(frozen=True)
class Launch(Generic[T]):
    """A batch queued on the device (`FastForward.launch`: its result (probs (B, K), the device's ms on it);
    `Runner.launch`: a `RunResult`)."""

    ready: Callable[[], bool]
    """Whether the device is done with it; never blocks."""
    wait: Callable[[], T]
    """Once, from any thread, in launch order: waits for it, frees its slot and gives its result."""

    def __call__(self) -> T:
        return self.wait()


def _graph_key(gamma: int, B: int, slot: int) -> tuple[int, ...]:
    """The key of (γ, bucket B)'s graph copying through batch slot `slot` in `FastForward._graphs` (slot 0's is
    `predict_host`'s, (γ, B))."""
    return (gamma, B, slot) if slot else (gamma, B)


class _AtGamma(torch.nn.Module):
    """`FastForward._forward` at one γ, as a module for `torch.jit.trace` (the model its submodule)."""

    def __init__(self, fast: FastForward, gamma: int):
        super().__init__()
        self.model = fast.model
        self._fast = [fast]  # in a list: not a submodule
        self.gamma = gamma

    def forward(self, images: torch.Tensor, task_idx: torch.Tensor) -> torch.Tensor:
        return self._fast[0]._forward(images, self.gamma, task_idx)


def _fused_norms(model: AdaptiveViT, device: torch.device) -> AdaptiveViT:
    """`model` with its LayerNorms as Triton kernels (a copy sharing the parameters)."""
    from otas.adapt.ops import triton_kernels

    return triton_kernels("triton_norm", device, "fused_norm", "leave it off").with_fused_norms(model)
