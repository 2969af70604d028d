"""The CPU forward beside busy Python threads: eager against traced, measured side by side.

In `otas serve` the model's forward runs on a thread of the process whose other threads run the event
loop, the scheduler and image decoding, all Python. An eager forward gives the GIL back and takes it
again at each of its ~300 ops; while another thread runs Python, each op waits for the interpreter's
switch interval. The traced forward (`FastConfig(mode="traced")`, the CPU default) runs the same ATen
kernels from C++ with the GIL released. Around it, the host work of a batch (collation, the copy of
the result) still makes a few calls into torch, each giving the GIL back and waiting for it; the
engine shortens the switch interval to 1 ms (`otas.engine.engine.SWITCH_INTERVAL_S`) so those waits
stay short. This times both paths, at Python's default 5 ms switch interval and at 1 ms, at a few
(γ, batch), alone and beside one thread that runs:

- `spin`: a pure-Python loop (a handler, the scheduler's dynamic program);
- `json`: `json.loads` of a 256 KB body over and over (a large infer request being parsed).

Cells run in interleaved rounds, so machine drift hits every setting alike. Writes
bench/results/gil/gil.{json,png}. `--device cuda` times the GPU's paths instead and writes
gil_cuda.{json,png}: eager; CUDA graphs with the copies in and out made by torch calls around the
replay (`graphs-io-outside`, ~8 calls into torch per batch, each waiting for the GIL); and CUDA graphs
that capture those copies from and to pinned host buffers (`graphs`, the served path: a replay and a
wait).

    python bench/gil.py [--rounds 5] [--threads 1] [--device cpu] [--out bench/results/gil]
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from otas.engine.runner import Runner
from otas.plotting import pyplot, save
from otas.predict import default_model_path
from otas.profile.measure import device_name
from otas.provenance import run_meta

PATHS = {"cpu": ("eager", "traced"), "cuda": ("eager", "graphs-io-outside", "graphs")}
RUNNER_ARGS = {"graphs-io-outside": {"mode": "graphs", "host_io": False}}
"""Paths that are not a plain `mode`: the Runner's arguments."""
SWITCH_MS = (5.0, 1.0)
LOADS = ("alone", "spin", "json")


class Busy:
    """A thread that keeps the GIL busy with `kind` work until stopped."""

    def __init__(self, kind: str):
        self.kind, self.stop, self.rounds = kind, threading.Event(), 0
        body = json.dumps({"inputs": [{"data": list(range(40_000))}]})  # ~256 KB
        work = {"spin": lambda: sum(i * i for i in range(2_000)), "json": lambda: json.loads(body)}[kind]

        def run() -> None:
            while not self.stop.is_set():
                work()
                self.rounds += 1

        self.thread = threading.Thread(target=run, daemon=True)

    def __enter__(self) -> Busy:
        self.thread.start()
        time.sleep(0.05)  # running before the timed call starts
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1, help="torch intra-op threads (otas serve --torch-threads)")
    ap.add_argument("--gammas", default="0,-20")
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--device", default="cpu", choices=list(PATHS))
    ap.add_argument("--out", type=Path, default=Path("bench/results/gil"))
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    gammas = [int(g) for g in args.gammas.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    paths = PATHS[args.device]
    runners = {
        p: Runner.load(default_model_path(), args.device, max_batch=max(batches), **RUNNER_ARGS.get(p, {"mode": p}))
        for p in paths
    }
    task = next(t for t in runners["eager"].classes if t != "source")
    img = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for r in runners.values():  # traces made, allocations done
        for g, b in itertools.product(gammas, batches):
            r.run([img] * b, [task] * b, g)
    cells = list(itertools.product(paths, SWITCH_MS, gammas, batches, LOADS))
    times: dict[tuple, list[float]] = {c: [] for c in cells}
    for k in range(args.rounds):
        for path, sw, g, b, load in cells:
            sys.setswitchinterval(sw / 1e3)
            if load == "alone":
                times[path, sw, g, b, load].append(runners[path].run([img] * b, [task] * b, g).ms)
            else:
                with Busy(load):
                    times[path, sw, g, b, load].append(runners[path].run([img] * b, [task] * b, g).ms)
        print(f"round {k + 1}/{args.rounds} done", flush=True)
    rows = []
    for path, sw, g, b, load in cells:
        ms = statistics.median(times[path, sw, g, b, load])
        rows.append(
            {
                "path": path, "switch_ms": sw, "gamma": g, "batch": b, "load": load, "median_ms": ms,
                "max_ms": max(times[path, sw, g, b, load]),
                "slowdown": ms / statistics.median(times[path, sw, g, b, "alone"]),
                "vs_eager_alone": ms / statistics.median(times["eager", SWITCH_MS[0], g, b, "alone"]),
            }
        )  # fmt: skip
        print(json.dumps(rows[-1]))
    meta = {**run_meta(), "device": device_name(torch.device(args.device)), "torch_threads": args.threads}
    meta |= {"rounds": args.rounds, "torch": torch.__version__}
    stem = "gil" if args.device == "cpu" else f"gil_{args.device}"
    (args.out / f"{stem}.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1) + "\n")
    plot(rows, paths, gammas, batches, args.out / f"{stem}.png", meta)


def plot(
    rows: list[dict], paths: tuple[str, ...], gammas: list[int], batches: list[int], path: Path, meta: dict
) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(LOADS) - 1, figsize=(5 * (len(LOADS) - 1), 3.6), sharey=True)
    groups = list(itertools.product(gammas, batches))
    for ax, load in zip(axes, LOADS[1:], strict=True):
        series = list(itertools.product(paths, SWITCH_MS))
        w = 0.8 / len(series)
        for j, (p, sw) in enumerate(series):
            ys = [next(r["slowdown"] for r in rows if (r["path"], r["switch_ms"], r["gamma"], r["batch"], r["load"])
                       == (p, sw, g, b, load)) for g, b in groups]  # fmt: skip
            ax.bar(np.arange(len(groups)) + w * (j + 0.5) - 0.4, ys, w, label=f"{p}, switch {sw:g} ms")
        ax.axhline(1, color="k", lw=0.6)
        ax.set_xticks(range(len(groups)), [f"γ={g}\nb={b}" for g, b in groups])
        ax.set_yscale("log")
        ax.set_title(f"beside a busy thread: {load}")
    axes[0].set_ylabel("forward time / alone (median)")
    axes[0].legend(fontsize=7)
    where = "GPU" if "graphs" in paths else "CPU"
    fig.suptitle(
        f"{where} forward beside Python threads ({meta['torch_threads']} torch thread, {meta['commit']})", size=9
    )
    fig.tight_layout()
    save(fig, path)


if __name__ == "__main__":
    main()
