"""`otas demo`: the main job on the shipped default model, runnable on a fresh CPU machine.

1. Classify the bundled labelled sample of every task at every γ: accuracy and latency side by side.
2. Schedule a bursty synthetic workload with the shipped CPU profile: OTAS against fixed γ.
"""

from __future__ import annotations

import random
import statistics
import time
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from otas.predict import Predictor, sample_dir


def load_sample(task: str, classes: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """The bundled sample of `task`: uint8 (N, 32, 32, 3) images and labels indexing `classes`."""
    from PIL import Image

    images, labels = [], []
    for c, cls in enumerate(classes):
        for f in sorted((sample_dir() / task / cls).glob("*.png")):
            with Image.open(f) as im:
                images.append(np.asarray(im.convert("RGB")))
            labels.append(c)
    if not images:
        raise ValueError(f"no sample images for task {task!r} under {sample_dir()}")
    return np.stack(images), np.array(labels)


def _time_gammas(pred: Predictor, x: np.ndarray, task: str, gammas: list[int], rounds: int = 5) -> dict[int, float]:
    """Median ms per batch at each γ: every γ warmed up first, then timed in interleaved rounds in a
    fresh random order, so a slow spell of a shared machine lands on every γ alike."""
    for g in gammas:
        pred.probs(x, task, g)  # warm-up: first calls pay allocation and kernel selection
    rng = random.Random(0)
    times: dict[int, list[float]] = {g: [] for g in gammas}
    for _ in range(rounds):
        for g in rng.sample(gammas, len(gammas)):
            t0 = time.perf_counter()
            pred.probs(x, task, g)
            times[g].append((time.perf_counter() - t0) * 1e3)
    return {g: statistics.median(v) for g, v in times.items()}


def run_demo(model_path: Path | None, console: Console) -> None:
    pred = Predictor.load(model_path)
    model = pred.model
    tasks = list(model.config.tasks)
    console.print(
        f"[bold]model[/] {model_path or 'shipped default'}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M "
        f"parameters, {model.num_tokens} tokens, Γ = {list(model.config.gammas)}, tasks {tasks}"
    )
    if model.merge_caps:
        console.print(
            f"[dim]at γ ≤ {max(model.merge_caps)} the last blocks run short of tokens, so fewer than |γ| are merged "
            "there (the profile measures exactly that schedule)[/]"
        )
    samples = {t: load_sample(t, pred.labels(t)) for t in tasks}
    gammas = list(model.config.gammas)
    ms = _time_gammas(pred, samples[tasks[0]][0][:8], tasks[0], gammas)
    table = Table(title="bundled sample: accuracy per task and latency per γ (this CPU, fp32)")
    table.add_column("γ", justify="right")
    table.add_column("what", justify="left")
    for t in tasks:
        table.add_column(f"{t} acc (n={len(samples[t][1])})", justify="right")
    table.add_column("ms / batch of 8 (median)", justify="right")
    for g in model.config.gammas:
        accs = []
        for t in tasks:
            x, y = samples[t]
            accs.append(float((pred.probs(x, t, g).argmax(-1).numpy() == y).mean()))
        what = f"merge {-g}/block" if g < 0 else f"{g} prompts" if g > 0 else "stock"
        table.add_row(str(g), what, *[f"{100 * a:.1f}%" for a in accs], f"{ms[g]:.1f}")
    console.print(table)
    t = tasks[0]
    x, y = samples[t]
    top = pred.topk(pred.probs(x[:1], t, 0), t, 3)[0]
    console.print(f"example ({t}, true label {pred.labels(t)[y[0]]}): " + ", ".join(f"{lab} {p:.2f}" for lab, p in top))
    if model_path is not None:  # the schedule below is the shipped model's: say so, not pass it off as this one's
        console.print(
            "[dim]the schedule below is the shipped model's (its profile and applications); for this model run "
            "`otas profile` on it, then `otas simulate --profile <that profile> --apps <its applications>`[/]"
        )
    _demo_schedule(console)


def _demo_schedule(console: Console) -> None:
    try:
        from otas.sim.demo import run as run_sim
    except ImportError:
        console.print("(simulator not installed in this build)")
        return
    run_sim(console)
