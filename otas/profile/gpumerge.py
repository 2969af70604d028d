"""What merging costs on a GPU, per merge implementation, against the cost of its token counts alone.

Per model, γ < 0 and batch size, one group of cells is timed *interleaved* (rounds in a fresh
random order, so drift hits every cell alike): the served forward (`FastForward`, CUDA graphs, bf16)
at γ with each merge implementation (`otas.adapt.ops`), with and without proportional attention;
the same path at γ = 0 (stock); and the limit, `merge_impl="limit"`: timm's own attention and MLP
at exactly γ's token counts, the merge replaced by dropping tokens, captured the same way. Every
measurement is one JSON line (`Recorder`), so a run cut short keeps what it measured;
`otas.profile.gpumerge_report` turns the lines into rows, tables and a plot.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import random
import re
import statistics
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from otas.adapt import DEFAULT_GAMMAS, SOURCE, AdaptConfig, AdaptiveViT, MergeCapWarning
from otas.adapt.fast import GRAPH_MODES, FastConfig, FastForward
from otas.profile.measure import device_name, gflops
from otas.provenance import run_meta

TIMM_GAMMAS = (-16, -12, -8, -4, 0)  # ViT-B/16 at 224 px: 197 tokens; r <= 98 in the first block
TOP_KERNELS = 25  # kernels listed by device time in a "kernels" record
ATTENTION_KERNEL = re.compile(r"flash|fmha|cudnn|sdpa|attention|attn|efficient|softmax", re.I)


@dataclass(frozen=True)
class Variant:
    impl: str
    """`FastConfig.merge_impl`."""
    prop: bool = True
    """Proportional attention (`AdaptConfig.proportional_attn`)."""
    every: int = 1
    """`AdaptConfig.merge_every`."""
    mode: str = ""
    """`FastConfig.mode` when not the group's (e.g. "compiled-graphs"); its stock and limit run in it too."""
    fused_norm: bool = False
    """`FastConfig.fused_norm` (Triton LayerNorms); its stock and limit use them too."""

    @property
    def label(self) -> str:
        return (
            self.impl
            + ("" if self.prop else "/noprop")
            + ("" if self.every == 1 else f"/every{self.every}")
            + ("/fusednorm" if self.fused_norm else "")
            + (f"@{self.mode}" if self.mode else "")
        )


VARIANTS = (  # most telling first: a phase cut short loses the tail
    Variant("reference"),
    Variant("matmul+column"),
    Variant("matmul+column+compile"),
    Variant("matmul"),
    Variant("column"),
    Variant("compile"),
    Variant("reference", prop=False),
    Variant("matmul", prop=False),
    Variant("matmul+compile", prop=False),
    Variant("matmul+column", every=2),
)
COMPILED = (  # the whole forward compiled per shape, inside the CUDA graphs; stock and limit compiled too
    Variant("matmul+column", mode="compiled-graphs"),
    Variant("reference", mode="compiled-graphs"),
    Variant("matmul+column", every=2, mode="compiled-graphs"),
)


def limit_of(v: Variant) -> Variant:
    """The cost floor a variant is compared with: its own token counts (merge_every), no merge work, its mode."""
    return Variant("limit", every=v.every, mode=v.mode, fused_norm=v.fused_norm)


def stock_label(v: Variant) -> str:
    """The γ = 0 cell a variant is compared with: the group's mode, or the variant's own (and its norms)."""
    return "stock" + ("/fusednorm" if v.fused_norm else "") + (f"@{v.mode}" if v.mode else "")


class Recorder:
    """Appends one JSON object per line to `path` (flushed at once) and echoes a short line."""

    def __init__(self, path: Path, echo: Callable[[str], None] = print):
        self.path, self.echo = Path(path), echo
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def __call__(self, kind: str, **record) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps({"kind": kind, **record}) + "\n")
        self.echo(f"[{kind}] " + ", ".join(f"{k}={v}" for k, v in record.items() if not isinstance(v, dict | list)))

    def meta(self, device: torch.device, **extra) -> None:
        self("meta", **run_meta(), device=device_name(device), torch=torch.__version__, **extra)


def load_model(spec: str, gammas: tuple[int, ...] | None = None) -> tuple[str, AdaptiveViT]:
    """ "tiny" (the shipped model), a checkpoint path, "timm:<name>" (random weights at its own size) or
    "arch:<name>" (an `otas.models.registry.ARCHS` architecture with random weights, e.g. arch:vit_small_p2);
    `gammas` (with 0): the γ to run, a subset of a checkpoint's."""
    from otas.models.checkpoint import load_checkpoint
    from otas.models.registry import build_vit
    from otas.predict import default_model_path

    if gammas is not None:
        gammas = tuple(sorted({*gammas, 0}))  # γ = 0 is the stock every γ is compared with
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MergeCapWarning)
        if spec.startswith("timm:"):
            torch.manual_seed(0)
            model = AdaptiveViT(build_vit(spec, 1000), AdaptConfig(gammas=gammas or TIMM_GAMMAS)).eval()
            return spec[5:], model
        if spec.startswith("arch:"):  # one of the project's own architectures, random weights (speed only)
            torch.manual_seed(0)
            merging = tuple(g for g in DEFAULT_GAMMAS if g <= 0)
            return spec[5:], AdaptiveViT(build_vit(spec[5:], 5), AdaptConfig(gammas=gammas or merging)).eval()
        path = default_model_path() if spec == "tiny" else Path(spec)
        model = load_checkpoint(path)
        return path.name.split(".")[0], with_config(model, gammas=gammas) if gammas else model


def with_config(model: AdaptiveViT, **changes) -> AdaptiveViT:
    """The same modules under another AdaptConfig (a shallow copy: weights shared, config replaced)."""
    variant = copy.copy(model)
    variant.config = dataclasses.replace(model.config, **changes)
    return variant


def _timer(device: torch.device) -> Callable[[Callable[[], object], int], float]:
    """ms per call of fn, over `n` calls back to back (CUDA events on a GPU)."""

    def cuda(fn, n):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(n):
            fn()
        b.record()
        b.synchronize()
        return a.elapsed_time(b) / n

    def host(fn, n):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        return (time.perf_counter() - t0) * 1e3 / n

    return cuda if device.type == "cuda" else host


def time_interleaved(cells: dict[str, Callable[[], object]], device: torch.device, rounds: int) -> dict[str, float]:
    """Median ms per cell; each round runs every cell (enough calls for >= 1 ms), in a fresh random order."""
    timed = _timer(device)
    est = {k: timed(fn, 1) for k, fn in cells.items()}  # after the caller's warm-up
    reps = {k: max(1, min(20, round(1.0 / max(ms, 1e-3)))) for k, ms in est.items()}
    samples: dict[str, list[float]] = {k: [] for k in cells}
    rng = random.Random(0)
    for _ in range(rounds):
        order = list(cells)
        rng.shuffle(order)
        for k in order:
            samples[k].append(timed(cells[k], reps[k]))
    return {k: statistics.median(v) for k, v in samples.items()}


def _cell(fast: FastForward, gamma: int, batch: int, device: torch.device) -> Callable[[], object]:
    """One served forward, warmed up (captured, compiled): a graph replay, or an eager call on a CPU."""
    if fast.cfg.mode in GRAPH_MODES:
        run = fast.replay(gamma, batch)
    else:
        size = fast.model.vit.patch_embed.img_size
        x = torch.randint(0, 256, (batch, *size, 3), dtype=torch.uint8, device=device)
        run = lambda: fast(x, gamma, SOURCE)
    for _ in range(2):
        run()
    return run


def kernel_profile(fast: FastForward, gamma: int, batch: int) -> dict:
    """Kernels of one eager forward on CUDA (`torch.profiler`): count, the attention kernels by name, the
    total device time and the `TOP_KERNELS` kernels by device time (where a variant's time goes)."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    size = fast.model.vit.patch_embed.img_size
    x = torch.randint(0, 256, (batch, *size, 3), dtype=torch.uint8, device=fast.device)
    fast(x, gamma, SOURCE)
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fast(x, gamma, SOURCE)
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type == DeviceType.CUDA]
    attention = sorted({e.key[:120] for e in events if ATTENTION_KERNEL.search(e.key)})
    us = {e.key: _device_us(e) for e in events}
    top = sorted(events, key=lambda e: -us[e.key])[:TOP_KERNELS]
    return {
        "kernels": sum(e.count for e in events),
        "attention": attention,
        "device_us": round(sum(us.values()), 1),
        "top": [{"name": e.key[:100], "count": e.count, "us": round(us[e.key], 1)} for e in top],
    }


def _device_us(event) -> float:
    """Total device time of a profiler kernel entry, µs (the attribute's name moved across torch releases)."""
    for name in ("self_device_time_total", "device_time_total", "self_cuda_time_total", "cuda_time_total"):
        if hasattr(event, name):
            return float(getattr(event, name))
    return 0.0


def time_group(
    model: AdaptiveViT, gamma: int, batch: int, device: torch.device, variants, mode: str, rounds: int, profile: bool
) -> dict:
    """One interleaved group at (γ, batch): stock, each variant and each variant's limit. Returns the
    "time" record's fields and, with `profile`, each variant's kernel listing (`kernel_profile`)."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    cells, fasts, errors, flops, build_s = {}, {}, {}, {}, {}
    base = gflops(model, 0)
    stocks = {}  # stock label -> the FastForward whose γ = 0 it times
    for v in dict.fromkeys([Variant("reference"), *variants, *(limit_of(v) for v in variants)]):
        m = with_config(model, proportional_attn=v.prop, merge_every=v.every)
        try:
            t0 = time.monotonic()
            cfg = FastConfig(v.mode or mode, (batch,), dtype, fused_norm=v.fused_norm, merge_impl=v.impl)
            fasts[v.label] = FastForward(m, device, cfg)
            cells[v.label] = _cell(fasts[v.label], gamma, batch, device)
            build_s[v.label] = round(time.monotonic() - t0, 2)  # capture (and compile) of this cell
            flops[v.label] = gflops(m, gamma) / base
            if v.impl != "limit":  # (at γ = 0 nothing merges: any variant's model is the stock one)
                stocks.setdefault(stock_label(v), fasts[v.label])
        except Exception as e:  # one impl failing (e.g. a compile error) must not lose the others
            fasts.pop(v.label, None)
            errors[v.label] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    for label, fast in stocks.items():
        try:
            cells[label] = _cell(fast, 0, batch, device)
        except Exception as e:
            errors[label] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    out = {"ms": time_interleaved(cells, device, rounds), "flops_ratio": flops, "errors": errors, "build_s": build_s}
    out["kernels"] = {}
    if profile:
        for label, f in [*fasts.items(), ("stock", fasts["reference"])]:
            if "@" in label:  # the eager kernels of a compiled cell are its uncompiled twin's
                continue
            # f.model already has the variant's norms: the eager twin must not change them
            eager = FastForward(
                f.model, device, FastConfig("eager", (batch,), dtype, fused_norm=False, merge_impl=f.merge_impl)
            )
            try:
                out["kernels"][label] = kernel_profile(eager, 0 if label == "stock" else gamma, batch)
            except Exception as e:  # a listing that fails must not lose the group's timings
                out["errors"][f"kernels {label}"] = f"{type(e).__name__}: {str(e)[:200]}"
    return out


def time_model(
    name: str,
    model: AdaptiveViT,
    rec: Recorder,
    device: torch.device,
    batches: list[int],
    variants: tuple[Variant, ...] = VARIANTS,
    mode: str = "graphs",
    rounds: int = 10,
    deadline: float = float("inf"),
    profile_batches: tuple[int, ...] = (256, 8),
) -> None:
    """`time_group` for every (batch, γ < 0), batches in the given order (a run cut short keeps the first);
    kernels are listed at the middle γ and `profile_batches`."""
    gammas = [g for g in model.config.gammas if g < 0]
    for b in batches:
        for g in gammas:
            if time.monotonic() > deadline:
                rec("skipped", model=name, batch=b, gamma=g, reason="time budget")
                continue
            profile = g == gammas[len(gammas) // 2] and b in profile_batches and device.type == "cuda"
            group = time_group(model, g, b, device, variants, mode, rounds, profile)
            kernels = group.pop("kernels")
            rec("time", model=name, batch=b, gamma=g, mode=mode, **group)
            if any("capture" in e for e in group["errors"].values()):
                # a failed CUDA-graph capture leaves the process's CUDA state unusable for later captures
                rec("skipped", model=name, batch=b, gamma=g, reason="a graph capture failed: phase stopped")
                return
            for label, k in kernels.items():
                rec("kernels", model=name, batch=b, gamma=0 if label == "stock" else g, variant=label, **k)
            if device.type == "cuda":
                torch.cuda.empty_cache()  # the group's graphs are gone with its FastForwards
