"""Measure a model's profile: accuracy per (task, γ), latency and peak memory per (γ, batch size).

Timing follows the usual rules: random inputs (never zeros), warm-up runs first, a device
synchronize around every timed run, the median (and p90) of repeated runs.
"""

from __future__ import annotations

import itertools
import platform
import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from otas.adapt import SOURCE, AdaptiveViT
from otas.data.tasks import TASKS
from otas.models.checkpoint import load_checkpoint, read_header
from otas.profile.table import Profile
from otas.progress import Progress
from otas.provenance import run_meta
from otas.train.common import evaluate, to_device
from otas.train.data import TaskData, TaskSource, load_task, release_cifar


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} x{torch.get_num_threads()} threads"
    except OSError:
        pass
    return platform.processor() or "cpu"


def device_slug(name: str) -> str:
    """Short file-name tag: 'h100', 'h200', or 'cpu-<vendor>'."""
    low = name.lower()
    for tag in ("h100", "h200", "a100", "l4", "a10"):
        if tag in low:
            return tag
    return "cpu-" + ("amd" if "amd" in low else "intel" if "intel" in low else "generic")


def gflops(model: AdaptiveViT, gamma: int) -> float:
    """Forward GFLOPs per image (2 per multiply-add) from the token count entering each block."""
    vit = model.vit
    C = vit.embed_dim
    hidden = vit.blocks[0].mlp.fc1.out_features
    counts = model.token_counts(gamma)
    flops = (
        2
        * vit.patch_embed.num_patches
        * C
        * vit.patch_embed.proj.in_channels
        * vit.patch_embed.patch_size[0]
        * vit.patch_embed.patch_size[1]
    )
    for n in counts[:-1]:
        flops += 2 * n * (4 * C * C + 2 * C * hidden)  # qkv + proj, mlp
        flops += 2 * 2 * n * n * C  # q k^T and attn v
    return flops / 1e9


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def _ready(model, fast, batch_sizes: list[int], device: torch.device, dtype, t0: float) -> tuple[float, float]:
    """(ms from `t0` until the model serves γ = 0, ms of that spent warming up): what a model swap costs.

    Eager: one first batch at the smallest batch size. Graph or compile modes: a first batch at
    every batch size, which captures (or compiles) each γ = 0 graph the server would warm up."""
    t1 = time.perf_counter()
    for b in batch_sizes if fast is not None else batch_sizes[:1]:
        _runner(model, 0, b, device, dtype, SOURCE, fast)()  # the path a timed cell runs
    _sync(device)
    t2 = time.perf_counter()
    return (t2 - t0) * 1e3, (t2 - t1) * 1e3


def _runner(model: AdaptiveViT, gamma: int, batch: int, device: torch.device, dtype: torch.dtype, task: str, fast):
    """A closure running one forward of a random batch at γ (alternating between 2 inputs).

    With `fast` (an `otas.adapt.fast.FastForward`), it runs that path from uint8 host images
    instead, including the copies to the device and back: what a served batch costs.
    """
    size = model.vit.patch_embed.img_size
    if fast is not None:  # (predict_host stages the images in its own pinned buffer)
        xs = [torch.randint(0, 256, (batch, *size, 3), dtype=torch.uint8) for _ in range(2)]
        step = lambda x: fast.predict_host(x, gamma, task)
    else:
        xs = [torch.randn(batch, 3, *size, device=device, dtype=dtype) for _ in range(2)]
        step = lambda x: model(x, gamma, task)
    inputs = itertools.cycle(xs)
    return lambda: step(next(inputs))


def _timed(run, device: torch.device) -> float:
    t0 = time.perf_counter()
    run()
    _sync(device)
    return (time.perf_counter() - t0) * 1e3


@torch.inference_mode()
def time_cells(
    model: AdaptiveViT,
    cells: list[tuple[int, int]],
    device: torch.device,
    dtype: torch.dtype,
    min_time_s: float = 1.0,
    min_runs: int = 5,
    max_runs: int = 200,
    warmup: int = 3,
    task_of=lambda gamma: SOURCE,
    fast=None,
    seed: int = 0,
    on_round=None,
) -> dict[tuple[int, int], tuple[float, float, float | None]]:
    """{(γ, batch): (median ms, p90 ms, peak MB or None)}, timing all cells *interleaved*.

    Cells are timed in rounds; each round visits every cell once, in a fresh random order, and runs
    it a few times in a row (enough for ~equal time per cell, at least once). A slow spell of a
    shared machine (another process, frequency scaling) thus lands on every cell alike instead of
    on whichever cell happened to be timed then, so ratios between cells (the speed-up of a γ)
    are far steadier than with one cell after another. Rounds go on until every cell has
    `min_runs` runs and either `min_time_s` per cell has passed in all or every cell has `max_runs`.
    Peak memory (CUDA) is taken per cell over its warm-up runs.
    """
    runs, peak, est = {}, {}, {}
    for g, b in cells:
        runs[g, b] = _runner(model, g, b, device, dtype, task_of(g), fast)
        if device.type == "cuda":
            _sync(device)
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(max(warmup - 1, 0)):
            runs[g, b]()
        est[g, b] = _timed(runs[g, b], device)  # the last warm-up run, timed: sets the repeats per round
        peak[g, b] = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    slice_ms = max(est.values())
    reps = {c: max(1, min(int(slice_ms / max(est[c], 1e-3)), 50)) for c in cells}
    times: dict[tuple[int, int], list[float]] = {c: [] for c in cells}
    rng, start = random.Random(seed), time.perf_counter()
    while True:
        order = list(cells)
        rng.shuffle(order)
        for c in order:
            for _ in range(reps[c]):
                times[c].append(_timed(runs[c], device))
        if on_round is not None:
            on_round()
        fewest = min(len(t) for t in times.values())
        if fewest >= min_runs and (fewest >= max_runs or time.perf_counter() - start >= min_time_s * len(cells)):
            break
    out = {}
    for c, t in times.items():
        t.sort()
        out[c] = (statistics.median(t), t[int(0.9 * (len(t) - 1))], peak[c])
    return out


def validation_sets(
    model: AdaptiveViT, header: dict, tasks: list[str], folders: dict[str, Path], data: Path | None
) -> dict[str, TaskData]:
    """The images each task's accuracy is measured on: a folder given for it (`--task NAME=DIR`:
    its val/ split, the split recorded at training if it is the folder trained from, else all of
    it); else the folder the task was trained from (its held-out split); else the built-in
    CIFAR-10 task of that name. The backbone's own task of a timm model has none (left out)."""
    unknown = sorted(set(folders) - set(tasks))
    if unknown:
        raise ValueError(f"--task {unknown}: this model serves tasks {tasks}; measure those")
    recorded = header["meta"].get("task_sources", {})
    pre, out = model.preprocess, {}
    for t in tasks:
        rec = recorded.get(t)
        if t in folders:
            out[t] = load_task(TaskSource(t, folders[t]), pre, recorded=rec or {}, need_train=False)
        elif rec and rec.get("kind") == "folder":
            root = Path(rec["path"])
            if not root.is_dir():
                raise ValueError(f"task {t!r} was trained from {root}, which is gone; measure it with --task {t}=DIR")
            out[t] = load_task(TaskSource(t, root), pre, recorded=rec, need_train=False)
        elif t in TASKS and not (t == SOURCE and header["arch"].startswith("timm:")):
            out[t] = load_task(TaskSource(t), pre, data, need_train=False) if t != SOURCE else _source(pre, data)
        elif t != SOURCE:
            raise ValueError(f"task {t!r} has no validation images; give --task {t}=DIR")
    release_cifar()
    return out


def _source(pre, data: Path | None) -> TaskData:
    from otas.data.cifar import load_cifar10

    spec = TASKS[SOURCE]
    val = load_cifar10("test", data, progress=False, preprocess=pre).subset(list(spec.classes))
    info = {"kind": "builtin", "description": spec.description, "note": "CIFAR-10 JPEG test images"}
    return TaskData(None, val, None, info)


def served_path(model: AdaptiveViT, device: torch.device, dtype: torch.dtype, mode: str, batch_sizes: list[int]):
    """The `FastForward` a profile of `mode` times (host copies included, graphs per batch size), or None for eager."""
    from otas.adapt.fast import FastConfig, FastForward

    if mode == "eager":
        return None
    return FastForward(model, device, FastConfig(mode=mode, dtype=dtype, buckets=tuple(batch_sizes), host_io=True))


def cell_task(model: AdaptiveViT) -> Callable[[int], str]:
    """The task a profile's latency cell at γ runs: the backbone's own for γ ≤ 0, the first prompted task above."""
    first = next(iter(model.config.tasks), SOURCE)
    return lambda gamma: SOURCE if gamma <= 0 else first


def measure_profile(
    checkpoint: Path,
    device: str,
    dtype: torch.dtype,
    batch_sizes: list[int],
    tasks: list[str] | None = None,
    data: Path | None = None,
    accuracy_from: Profile | None = None,
    accuracy_limit: int | None = None,
    min_time_s: float = 1.0,
    mode: str = "eager",
    gammas: list[int] | None = None,
    folders: dict[str, Path] | None = None,
    merge_every: int | None = None,
) -> Profile:
    """Profile `checkpoint` on `device`. `gammas`: a subset of the model's Γ (default: all of it).

    `accuracy_from`: reuse the accuracy of another profile of the same model; the γ it lacks are
    measured here (and listed in `meta["accuracy_measured"]`). Latency cells are timed
    interleaved (`time_cells`). `folders`: task -> validation folder to measure accuracy on
    (`validation_sets`). `merge_every`: the merge schedule to measure (default: the checkpoint's;
    recorded in the profile's meta, and the server runs the schedule its profile names).
    """
    from otas.adapt.fast import DEFAULT_BUCKETS, PER_SHAPE_MODES

    dev = torch.device(device)
    t0 = time.perf_counter()
    model = load_checkpoint(checkpoint, dev, dtype, merge_every=merge_every)  # raises for a missing or foreign file
    _sync(dev)
    weights_ms = (time.perf_counter() - t0) * 1e3
    header = read_header(checkpoint)
    if accuracy_from is not None:  # accuracies of another schedule are other accuracies
        theirs = accuracy_from.merge_every or header["adapt"].get("merge_every", 1)
        if theirs != model.config.merge_every:
            raise ValueError(
                f"--accuracy-from profile was measured with merge_every={theirs}, this one with "
                f"{model.config.merge_every}: its accuracies are another schedule's; measure them here"
            )
    fast = served_path(model, dev, dtype, mode, batch_sizes)
    load_ms, warm_ms = _ready(model, fast, batch_sizes, dev, dtype, t0)
    gammas = sorted({model.config.check_gamma(g) for g in gammas}) if gammas else list(model.config.gammas)
    if 0 not in gammas:
        raise ValueError(f"gammas must include 0 (the stock model), got {gammas}")
    tasks = tasks or [SOURCE, *model.config.tasks]
    meta = {
        **run_meta(),
        "torch": torch.__version__,
        "checkpoint": Path(checkpoint).name,
        "mode": mode,
        "merge_impl": fast.merge_impl if fast is not None else "reference",
        "fused_norm": fast.fused_norm if fast is not None else False,
        "merge_every": model.config.merge_every,
        "threads": torch.get_num_threads(),
        # model_load_ms = weights from disk onto the device + ready to serve γ = 0 (below)
        "model_load_parts_ms": {"weights": round(weights_ms, 1), "warmup": round(warm_ms, 1)},
    }

    acc: dict[str, dict[int, float]] = {t: {} for t in tasks}
    task_info: dict[str, dict] = {}
    todo = list(gammas)
    if accuracy_from is not None:
        for t in tasks:
            if t not in accuracy_from.accuracy:
                raise ValueError(f"--accuracy-from profile has no task {t!r} (it has {sorted(accuracy_from.accuracy)})")
            acc[t] = {g: a for g, a in accuracy_from.accuracy[t].items() if g in gammas and g in model.servable(t)}
        task_info = {t: accuracy_from.tasks[t] for t in tasks if t in accuracy_from.tasks}
        todo = [g for g in gammas if g not in accuracy_from.gammas]
        meta["accuracy_from"] = f"{accuracy_from.model} on {accuracy_from.device} ({accuracy_from.dtype})"
        meta["accuracy_measured"] = todo  # the γ measured here rather than taken from there
    with Progress() as bar:
        if todo:
            sets = validation_sets(model, header, tasks, folders or {}, data)
            tasks = [t for t in tasks if t in sets]  # a timm backbone's own head has no data here
            acc = {t: acc[t] for t in tasks}
            job = bar.add_task("accuracy", total=len(tasks) * len(todo))
            for t in tasks:
                test = sets[t].val
                if accuracy_limit:
                    test = test.head(accuracy_limit)
                x, y = to_device(test, dev)
                info = {"num_classes": len(test.classes), "test_images": len(y), **sets[t].info}
                task_info.setdefault(t, info)
                for g in todo:
                    if g in model.servable(t):  # only servable pairs have an accuracy
                        acc[t][g] = evaluate(model, x, y, g, t, batch_size=250, dtype=dtype)
                    bar.advance(job)
        acc = {t: {g: acc[t][g] for g in gammas if g in model.servable(t)} for t in tasks}
        cells = [(g, b) for g in gammas for b in batch_sizes]
        job = bar.add_task("latency (interleaved rounds)", total=None)
        timed = time_cells(
            model,
            cells,
            dev,
            dtype,
            min_time_s=min_time_s,
            task_of=cell_task(model),
            fast=fast,
            on_round=lambda: bar.advance(job),
        )
    lat = {g: {b: round(timed[g, b][0], 4) for b in batch_sizes} for g in gammas}
    p90 = {g: {b: round(timed[g, b][1], 4) for b in batch_sizes} for g in gammas}
    mem = {g: {b: round(timed[g, b][2], 1) for b in batch_sizes} for g in gammas} if dev.type == "cuda" else None
    return Profile(
        model=Path(checkpoint).name.split(".")[0],
        device=device_name(dev),
        dtype=str(dtype).replace("torch.", ""),
        gammas=gammas,
        batch_sizes=batch_sizes,
        accuracy=acc,
        latency_ms=lat,
        latency_p90_ms=p90,
        memory_mb=mem,
        gflops={g: round(gflops(model, g), 4) for g in gammas},
        tasks=task_info,
        model_load_ms=round(load_ms, 1),
        meta={**meta, "arch": header["arch"], "source_test_acc": header["meta"].get("source_test_acc")},
        # the server runs this path with a graph per (γ, bucket) and pads every batch to its bucket (the
        # cells above timed exact buckets); eager and traced run any batch at its own size
        buckets=list(DEFAULT_BUCKETS) if mode in PER_SHAPE_MODES else None,
    )
