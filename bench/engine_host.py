"""Event-loop time per image of the engine alone: no HTTP, no model (the no-op runner), a closed loop.

`--inflight` clients each submit a request of `--n` images (`Engine.submit_many`) for the H100 profile's
applications in turn and await its answer, until `--images` images have ended. The event loop's thread
time per image is the host cost of queueing, deciding, collating and answering that a live server pays
before HTTP. One JSON line per policy is appended to `--out` (with commit, command and machine).

    python bench/engine_host.py --policies otas,fixed:0 --out bench/results/engine_host/engine_host.jsonl
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
    eng = Engine(sched, runner)
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policies", default="otas,fixed:0")
    ap.add_argument("--n", type=int, default=40, help="images per request")
    ap.add_argument("--inflight", type=int, default=12)
    ap.add_argument("--images", type=int, default=60_000)
    ap.add_argument("--rounds", type=int, default=3, help="runs per policy; the median is reported")
    ap.add_argument("--out", type=Path, default=Path("bench/results/engine_host/engine_host.jsonl"))
    a = ap.parse_args()
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
