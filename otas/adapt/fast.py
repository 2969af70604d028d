"""The fast path: on a GPU bf16, static shapes per (γ, batch bucket), CUDA graphs or torch.compile; on
a CPU the forward at each γ traced once (TorchScript), so it runs in C++ with the GIL released.

A batch of b images is padded to the smallest bucket >= b and copied (as uint8: 4x fewer bytes than
float) into a static input buffer; normalisation, the forward at γ and every task head run inside
one captured graph, and the first b rows of the output are returned. Tasks are an index tensor, so
one graph per (γ, bucket) serves any mix of applications.

Why "traced" on a CPU: an eager forward is ~300 Python-dispatched ops, each giving the GIL back and
taking it again. In a server the event loop, the scheduler and decoding are Python threads of the
same process; while any of them runs Python, every op of the forward waits up to the interpreter's
switch interval for the GIL. One busy Python thread made ViT-Tiny's forward 3-76× slower
(`bench/gil.py`); the traced forward runs the same ATen kernels from C++ and is not held up.
"""

from __future__ import annotations

import bisect
import importlib.util
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from otas.adapt.ops import check_merge_impl, merge_ops
from otas.adapt.vit import AdaptiveViT
from otas.data.transforms import Normalize

DEFAULT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MODES = ("eager", "traced", "graphs", "compile", "compiled-graphs")
GRAPH_MODES = ("graphs", "compiled-graphs")
PER_SHAPE_MODES = ("compile", *GRAPH_MODES)
"""Modes that build one graph or compiled function per (γ, batch bucket); eager and traced serve any size."""


class TraceFallbackWarning(UserWarning):
    """A γ whose traced forward could not be made or did not match the eager one: it runs eager."""


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

    def __post_init__(self) -> None:
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
        x[:b].copy_(images, non_blocking=True)
        i[:b].copy_(idx, non_blocking=True)
        graph.replay()
        return out[:b]

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

    def _graph(self, gamma: int, B: int):
        if (gamma, B) not in self._graphs:
            x = torch.randint(0, 256, (B, *self._shape), dtype=torch.uint8, device=self.device)
            i = torch.full((B,), 1 if gamma > 0 else 0, dtype=torch.long, device=self.device)
            s = torch.cuda.Stream(self.device)
            s.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(s):
                for _ in range(2):  # warm-up outside the graph (cuBLAS handles, autotuning, compiling)
                    self._fn(x, gamma, i)
            torch.cuda.current_stream(self.device).wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                out = self._fn(x, gamma, i)
            self._graphs[(gamma, B)] = (graph, x, i, out)
        return self._graphs[(gamma, B)]


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
