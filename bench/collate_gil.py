"""Collating a batch on the device thread, alone and beside a thread that runs Python.

`np.stack(images, out=buf)` against `otas.collate.collate` (what the runner and the no-op runner do),
for batches of 32 × 32 and 224 × 224 RGB images, at the engine's 1 ms switch interval. NumPy releases
the GIL around each image's copy, so beside a busy thread each image waits for the lock again;
`collate` copies with the lock held. Cells run in interleaved rounds. Writes
bench/results/gil/collate.{json,png}.

    python bench/collate_gil.py [--rounds 5] [--out bench/results/gil]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

from otas.collate import collate
from otas.plotting import pyplot, save
from otas.provenance import run_meta

CELLS = [(32, 64), (32, 256), (224, 64)]  # (image side, batch)
PATHS = {"np.stack": lambda ims, out: np.stack(ims, out=out[: len(ims)]), "collate": collate}


def time_ms(fn, ims, out, reps: int) -> float:
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn(ims, out)
        ts.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", type=Path, default=Path("bench/results/gil"))
    args = ap.parse_args()
    sys.setswitchinterval(0.001)
    rng = np.random.default_rng(0)
    data = {
        (side, b): (list(rng.integers(0, 256, (b, side, side, 3), np.uint8)), np.empty((b, side, side, 3), np.uint8))
        for side, b in CELLS
    }
    times: dict[tuple, list[float]] = {}
    stop = threading.Event()

    def spin() -> None:
        x = 0
        while not stop.is_set():
            x += 1

    for _ in range(args.rounds):
        for load in ("alone", "spin"):
            th = threading.Thread(target=spin, daemon=True) if load == "spin" else None
            if th:
                stop.clear()
                th.start()
                time.sleep(0.01)
            for (side, b), (ims, out) in data.items():
                for name, fn in PATHS.items():
                    times.setdefault((name, side, b, load), []).append(time_ms(fn, ims, out, args.reps))
            if th:
                stop.set()
                th.join()
    rows = [
        {"path": n, "side": s, "batch": b, "load": ld, "median_ms": statistics.median(v)}
        for (n, s, b, ld), v in times.items()
    ]
    for r in rows:
        print(json.dumps(r))
    args.out.mkdir(parents=True, exist_ok=True)
    meta = run_meta() | {"switch_interval_s": 0.001, "rounds": args.rounds, "reps": args.reps}
    (args.out / "collate.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    labels = [f"{s}px b{b}" for s, b in CELLS]
    x = np.arange(len(CELLS))
    for k, (name, load) in enumerate([(n, ld) for n in PATHS for ld in ("alone", "spin")]):
        ms = [next(r["median_ms"] for r in rows if (r["path"], r["side"], r["batch"], r["load"]) == (name, s, b, load))
              for s, b in CELLS]  # fmt: skip
        ax.bar(x + (k - 1.5) * 0.2, ms, 0.2, label=f"{name}, {load}")
    ax.set_xticks(x, labels)
    ax.set_yscale("log")
    ax.set_ylabel("collation, ms (median)")
    ax.set_title("Collating a batch beside a busy Python thread (1 ms switch interval)")
    ax.legend(fontsize=7)
    save(fig, args.out / "collate.png")
    print(f"wrote {args.out}/collate.json and .png")


if __name__ == "__main__":
    main()
