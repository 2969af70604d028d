"""Measure a model's profile: accuracy per (task, γ), latency and peak memory per (γ, batch size).

Timing follows the usual rules: random inputs (never zeros), warm-up runs first, a device
synchronize around every timed run, the median (and p90) of repeated runs.
"""

from __future__ import annotations

import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from rich.progress import Progress

from otas.adapt import SOURCE, AdaptiveViT
from otas.data.cifar import load_cifar10
from otas.data.tasks import get_task
from otas.models.checkpoint import load_checkpoint, read_header
from otas.profile.table import Profile
from otas.provenance import git_commit
from otas.train.common import corrupt_set, to_device


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
def time_batch(
    model: AdaptiveViT,
    gamma: int,
    batch: int,
    device: torch.device,
    dtype: torch.dtype,
    min_time_s: float = 1.0,
    min_runs: int = 5,
    max_runs: int = 50,
    warmup: int = 3,
    task: str = SOURCE,
    fast=None,
) -> tuple[float, float, float | None]:
    """(median ms, p90 ms, peak MB or None) of one forward of a random batch at γ.

    With `fast` (an `otas.adapt.fast.FastForward`), times that path from uint8 host images instead,
    including the copy to the device: what a served batch costs.
    """
    size = model.vit.patch_embed.img_size
    if fast is not None:
        pin = device.type == "cuda"
        xs = [
            torch.randint(0, 256, (batch, *size, 3), dtype=torch.uint8).pin_memory()
            if pin
            else torch.randint(0, 256, (batch, *size, 3), dtype=torch.uint8)
            for _ in range(2)
        ]
        run = lambda x: fast(x, gamma, task)
    else:
        xs = [torch.randn(batch, 3, *size, device=device, dtype=dtype) for _ in range(2)]
        run = lambda x: model(x, gamma, task)
    for i in range(warmup):
        run(xs[i % 2])
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_runs or (time.perf_counter() - start < min_time_s and len(times) < max_runs):
        t0 = time.perf_counter()
        run(xs[len(times) % 2])
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    times.sort()
    return statistics.median(times), times[int(0.9 * (len(times) - 1))], peak


@torch.inference_mode()
def accuracy(
    model: AdaptiveViT,
    task: str,
    gamma: int,
    images: torch.Tensor,
    labels: torch.Tensor,
    dtype: torch.dtype,
    batch_size: int = 250,
) -> float:
    from otas.data.transforms import normalize, to_float

    correct = 0
    for i in range(0, len(labels), batch_size):
        x = normalize(to_float(images[i : i + batch_size])).to(dtype)
        correct += int((model(x, gamma, task).argmax(-1) == labels[i : i + batch_size]).sum())
    return correct / len(labels)


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
) -> Profile:
    dev = torch.device(device)
    t0 = time.perf_counter()
    model = load_checkpoint(checkpoint, dev, dtype)
    _sync(dev)
    load_ms = (time.perf_counter() - t0) * 1e3
    header = read_header(checkpoint)
    fast = None
    if mode != "eager":
        from otas.adapt.fast import FastConfig, FastForward

        fast = FastForward(model, dev, FastConfig(mode=mode, dtype=dtype, buckets=tuple(batch_sizes)))
    gammas = list(model.config.gammas)
    tasks = tasks or [SOURCE, *model.config.tasks]
    meta = {
        "commit": git_commit(short=True),
        "command": " ".join(["otas", *sys.argv[1:]]),
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "checkpoint": Path(checkpoint).name,
        "mode": mode,
        "threads": torch.get_num_threads(),
        "accuracy_note": "CIFAR-10 JPEG test images (slightly below PNG CIFAR-10 accuracies)",
    }

    acc: dict[str, dict[int, float]] = {}
    task_info: dict[str, dict] = {}
    with Progress() as bar:
        if accuracy_from is not None:
            acc = {t: dict(accuracy_from.accuracy[t]) for t in tasks}
            task_info = accuracy_from.tasks
            meta["accuracy_from"] = f"{accuracy_from.model} on {accuracy_from.device} ({accuracy_from.dtype})"
        else:
            test_all = load_cifar10("test", data, progress=False)
            job = bar.add_task("accuracy", total=len(tasks) * len(gammas))
            for t in tasks:
                spec = get_task(t)
                test = corrupt_set(test_all.subset(list(spec.classes)), spec.corruption, seed=1)
                if accuracy_limit:
                    test = test.head(accuracy_limit)
                x, y = to_device(test, dev)
                task_info[t] = {
                    "num_classes": len(spec.classes),
                    "test_images": len(y),
                    "description": spec.description,
                }
                acc[t] = {}
                for g in gammas:
                    if t == SOURCE and g > 0:
                        acc[t][g] = acc[t][0]  # prompts are trained for downstream tasks only
                    else:
                        acc[t][g] = accuracy(model, t, g, x, y, dtype)
                    bar.advance(job)
        lat: dict[int, dict[int, float]] = {}
        p90: dict[int, dict[int, float]] = {}
        mem: dict[int, dict[int, float]] | None = {} if dev.type == "cuda" else None
        job = bar.add_task("latency", total=len(gammas) * len(batch_sizes))
        for g in gammas:
            lat[g], p90[g] = {}, {}
            if mem is not None:
                mem[g] = {}
            task = SOURCE if g <= 0 else next(iter(model.config.tasks))
            for b in batch_sizes:
                med, hi, peak = time_batch(model, g, b, dev, dtype, min_time_s=min_time_s, task=task, fast=fast)
                lat[g][b], p90[g][b] = round(med, 4), round(hi, 4)
                if mem is not None and peak is not None:
                    mem[g][b] = round(peak, 1)
                bar.advance(job)
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
    )
