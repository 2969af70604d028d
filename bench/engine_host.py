"""Event-loop time per image of the engine alone: no HTTP, no model (the no-op runner), a closed loop.

`--inflight` clients each submit a request of `--n` images (`Engine.submit_many`) for the H100 profile's
applications in turn and await its answer, until `--images` images have ended. The event loop's thread
time per image is the host cost of queueing, deciding, collating and answering that a live server pays
before HTTP. One JSON line per policy is appended to `--out` (with commit, command and machine).

    python bench/engine_host.py --policies otas,fixed:0 --out bench/results/engine_host/engine_host.jsonl
    python bench/engine_host.py --plot bench/results/engine_host/engine_host.jsonl   (bars per line, in file order)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from otas.config import SchedulerConfig, load_apps  # noqa: E402
from otas.engine.engine import Engine  # noqa: E402
from otas.engine.noop import NoopRunner  # noqa: E402
from otas.engine.serving import NotServed  # noqa: E402
from otas.profile.table import Profile  # noqa: E402
from otas.provenance import run_meta  # noqa: E402
from otas.sched.scheduler import Scheduler  # noqa: E402

PROFILE = ROOT / "bench/results/live_h100/8_h100_uint8/vit_tiny_p2_c5__h100-graphs-uint8.json"
APPS = ROOT / "otas/configs/apps-h100.yaml"


async def measure(policy: str, n: int, inflight: int, images: int) -> dict:
    apps, prof = load_apps(APPS), Profile.load(PROFILE)
    runner = NoopRunner(apps, 32, 256)
    sched = Scheduler(apps, prof, policy, SchedulerConfig(max_batch=256, max_queue=100_000))
    eng = Engine(sched, runner, plan_ahead=True)  # as `otas serve` on a GPU
    await eng.start()
    img = np.zeros((32, 32, 3), np.uint8)
    names, ended = [a.name for a in apps], [0, 0]  # served, refused

    async def client(k: int) -> None:
        i = k
        while sum(ended) < images:
            try:
                await eng.submit_many(names[i % len(names)], [img] * n)
                ended[0] += n
            except NotServed:
                ended[1] += n
            i += 1

    t0, c0 = time.perf_counter(), time.thread_time()
    await asyncio.gather(*(client(k) for k in range(inflight)))
    wall, cpu = time.perf_counter() - t0, time.thread_time() - c0
    await eng.stop()
    total = sum(ended)
    return {
        "policy": policy, "images_per_request": n, "inflight": inflight, "images": total, "refused": ended[1],
        "batches": eng.batches, "wall_s": wall, "loop_us_per_image": cpu * 1e6 / total, "images_per_s": total / wall,
    }  # fmt: skip


def plot(path: Path) -> Path:
    """One bar per line of `path` (a policy at a commit; its rounds as dots), grouped by policy, in
    file order; written beside it as .png."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    fig, axes = plt.subplots(1, len(policies), figsize=(4.5 * len(policies), 3.6), squeeze=False)
    for ax, policy in zip(axes[0], policies, strict=True):
        mine = [r for r in rows if r["policy"] == policy]
        x = np.arange(len(mine))
        ax.bar(x, [r["loop_us_per_image"] for r in mine], color="tab:blue", alpha=0.7)
        for i, r in enumerate(mine):
            ax.plot([i] * len(r["rounds_us_per_image"]), r["rounds_us_per_image"], "k.", ms=3)
        ax.set_xticks(x, [r["meta"]["commit"] for r in mine], rotation=45, ha="right", fontsize=8)
        ax.set_title(policy)
        ax.set_ylabel("µs per image")
    fig.suptitle("event-loop time per image, engine alone (bar: median; dots: rounds)", fontsize=10)
    fig.tight_layout()
    out = path.with_suffix(".png")
    fig.savefig(out, dpi=120)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--plot", type=Path, help="plot this result file (no run)")
    ap.add_argument("--policies", default="otas,fixed:0")
    ap.add_argument("--n", type=int, default=40, help="images per request")
    ap.add_argument("--inflight", type=int, default=12)
    ap.add_argument("--images", type=int, default=60_000)
    ap.add_argument("--rounds", type=int, default=3, help="runs per policy; the median is reported")
    ap.add_argument("--out", type=Path, default=Path("bench/results/engine_host/engine_host.jsonl"))
    a = ap.parse_args()
    if a.plot is not None:
        print(f"wrote {plot(a.plot)}")
        return
    a.out.parent.mkdir(parents=True, exist_ok=True)
    for policy in a.policies.split(","):
        runs = [asyncio.run(measure(policy, a.n, a.inflight, a.images)) for _ in range(a.rounds)]
        best = sorted(runs, key=lambda r: r["loop_us_per_image"])[len(runs) // 2]
        row = {**best, "rounds_us_per_image": [r["loop_us_per_image"] for r in runs], "meta": run_meta()}
        print(f"{policy}: {best['loop_us_per_image']:.1f} us of event-loop time per image (median of {a.rounds})")
        with a.out.open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
