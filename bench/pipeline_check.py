"""The pipelined device path (`Runner.launch`) against the one-batch-at-a-time path (`Runner.forward`, what `Runner.run`
runs without launching ahead) on one GPU:
the same answers (two batches in flight, waited for on another thread), and the device thread's time per batch
of each beside the graph's own replay time, per (γ, batch). A CUDA device with graphs is needed.

    python bench/pipeline_check.py --out bench/results/pipeline/h100

Writes pipeline_check.json (machine, commit, command; `check`: the largest difference per case; `timing`: ms per
batch of `run`, of `launch` with the next batch launched before the last is waited for, of the replay alone (its
share of each), and through the engine's device thread one batch at a time and launching ahead) and
pipeline_check.png under --out.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from otas.provenance import run_meta  # noqa: E402

MODEL = REPO / "otas/assets/vit_tiny_p2_c5.safetensors"


def tasks_at(runner, gamma: int, n: int, rng: np.random.Generator) -> list[str]:
    """`n` tasks drawn from those the runner serves at γ."""
    ok = [t for t, gs in runner.servable.items() if gamma in gs]
    return [ok[i] for i in rng.integers(0, len(ok), n)]


def check(runner, cases: list[tuple[int, int]], rng: np.random.Generator) -> list[dict]:
    """Per (γ, b): two batches launched back to back, waited for on another thread, against `forward` of each."""
    rows = []
    with ThreadPoolExecutor(1) as waiter:
        for g, b in cases:
            size = runner.image_size
            batches = [list(rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8)) for _ in range(2)]
            tasks = [tasks_at(runner, g, b, rng) for _ in range(2)]
            want = [runner.forward(x, t, g) for x, t in zip(batches, tasks, strict=True)]
            waits = [runner.launch(x, t, g) for x, t in zip(batches, tasks, strict=True)]  # both in flight
            got = [waiter.submit(w).result().probs for w in waits]
            diff = max(float(np.abs(a - w).max()) for a, w in zip(got, want, strict=True))
            rows.append({"gamma": g, "batch": b, "max_abs_diff": diff})
            print(f"check γ {g:4d} b {b:4d}: max |launch − run| {diff:.2e}", flush=True)
    return rows


def per_batch_ms(step, seconds: float) -> float:
    """ms per call of `step`, called for `seconds`."""
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        step()
        n += 1
    return (time.perf_counter() - t0) * 1e3 / n


def time_case(runner, g: int, b: int, seconds: float, rng: np.random.Generator) -> dict:
    """One (γ, b): ms per batch of `forward` (one batch at a time) in a loop, of `launch` keeping one batch queued
    behind the running one, and of the bare graph replay (the device's own time, as `otas profile` times a cell)."""
    import torch

    size = runner.image_size
    imgs = list(rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8))
    tasks = tasks_at(runner, g, b, rng)
    run_ms = per_batch_ms(lambda: runner.forward(imgs, tasks, g), seconds)
    pending: list = []

    def launched() -> None:
        pending.append(runner.launch(imgs, tasks, g))
        if len(pending) == 2:  # the one before, waited for once the next is queued behind it
            pending.pop(0)()

    launch_ms = per_batch_ms(launched, seconds)
    for w in pending:
        w()
    torch.cuda.synchronize()
    replay_ms = per_batch_ms(runner.fast.replay(g, b), seconds)
    torch.cuda.synchronize()
    # the engine's device thread (`otas.engine.device.Device`) fed as planning ahead feeds it: the next batch
    # handed over while one runs, the one after once the first is answered; one batch at a time, then ahead
    thread_ms = {k: through_device(runner, imgs, tasks, g, replay_ms, seconds, ahead) for k, ahead in
                 (("device_serial_ms", False), ("device_ahead_ms", True))}  # fmt: skip
    return {"gamma": g, "batch": b, "run_ms": run_ms, "launch_ms": launch_ms, "replay_ms": replay_ms, **thread_ms,
            "run_overhead": 1 - replay_ms / run_ms, "launch_overhead": 1 - replay_ms / launch_ms}  # fmt: skip


def through_device(runner, imgs, tasks, g: int, predicted_ms: float, seconds: float, ahead: bool) -> float:
    """ms per batch through a `Device` on `runner` (launching ahead or not), two batches handed over at a time."""
    from collections import deque

    from otas.engine.device import Device

    runner.pipeline = ahead
    t0 = time.perf_counter()
    dev = Device(runner, lambda: (time.perf_counter() - t0) * 1e3)
    futs: deque = deque()

    def step() -> None:
        futs.append(dev.submit(imgs, tasks, g, predicted_ms))
        if len(futs) == 2:
            futs.popleft().result()

    try:
        return per_batch_ms(step, seconds)
    finally:
        for f in futs:
            f.result()
        dev.shutdown()
        runner.pipeline = True


def timing(runner, cases: list[tuple[int, int]], seconds: float, rng: np.random.Generator) -> list[dict]:
    """`time_case` of each (γ, b), printed as it goes."""
    rows = []
    for g, b in cases:
        row = time_case(runner, g, b, seconds, rng)
        rows.append(row)
        print(f"time  γ {g:4d} b {b:4d}: run {row['run_ms']:.3f} ms, launched {row['launch_ms']:.3f} ms, replay "
              f"{row['replay_ms']:.3f} ms (not replay: {row['run_overhead']:.1%} → {row['launch_overhead']:.1%}); "
              f"device thread {row['device_serial_ms']:.3f} → {row['device_ahead_ms']:.3f} ms", flush=True)  # fmt: skip
    return rows


def plot(rows: list[dict], path: Path) -> None:
    from otas.plotting import pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = [f"γ {r['gamma']}\nb {r['batch']}" for r in rows]
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [100 * r["run_overhead"] for r in rows], 0.4, label="one batch at a time (run)")
    ax.bar(x + 0.2, [100 * r["launch_overhead"] for r in rows], 0.4, label="next batch queued behind (launch)")
    ax.set_xticks(x, labels)
    ax.set_ylabel("% of the device thread's time\nnot in the graph's replay")
    ax.axhline(5, color="grey", lw=0.8, ls=":")
    ax.legend(fontsize=8)
    ax.set_title("Device thread per batch against the bare replay")
    save(fig, path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=MODEL)
    ap.add_argument("--merge-every", type=int, default=4, help="the merge schedule served")
    ap.add_argument("--seconds", type=float, default=2.0, help="timing seconds per path and case")
    ap.add_argument("--out", type=Path, default=REPO / "bench/results/pipeline")
    args = ap.parse_args(argv)
    from otas.engine.runner import Runner

    runner = Runner.load(args.model, "cuda", None, 256, "graphs", merge_every=args.merge_every)
    runner.pipeline = True
    if not runner.pipelined:
        sys.exit("this runner cannot launch batches ahead (no CUDA graphs with host I/O here)")
    rng = np.random.default_rng(0)
    gammas = sorted({runner.gammas[0], -32 if -32 in runner.gammas else runner.gammas[0], 0, runner.gammas[-1]})
    t0 = time.perf_counter()
    checked = check(runner, [(g, b) for g in gammas for b in (1, 8, 64, 200, 256)], rng)
    timed = timing(runner, [(0, 1), (0, 8), (0, 64), (0, 256), (-32, 64), (-32, 256)], args.seconds, rng)
    args.out.mkdir(parents=True, exist_ok=True)
    out = {"meta": {**run_meta(__file__, argv), "wall_s": round(time.perf_counter() - t0, 1)},
           "check": checked, "timing": timed}  # fmt: skip
    (args.out / "pipeline_check.json").write_text(json.dumps(out, indent=1))
    plot(timed, args.out / "pipeline_check.png")
    print(f"wrote {args.out}/pipeline_check.json")


if __name__ == "__main__":
    main()
