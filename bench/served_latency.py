"""Served latency against the profile: the runner the server runs (`otas.engine.runner.Runner`, the
fast path), timed per batch (collation, upload, forward, copy back) beside the profile's prediction.

    python bench/served_latency.py --device cuda --profile profiles/vit_tiny_p2_c5__h100-graphs.json

Writes bench/results/served_latency_<device>.json (median and p90 per γ and batch, ratio to profile).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", type=Path, default=None, help="checkpoint (default: the shipped model)")
    ap.add_argument("--profile", type=Path, required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--mode", default="", help="eager|graphs|compile (default: graphs on cuda, eager on cpu)")
    ap.add_argument("--batch-sizes", default="1,8,64")
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--out", type=Path, default=Path("bench/results"))
    args = ap.parse_args()

    import torch

    from otas.engine.runner import Runner
    from otas.predict import default_model_path
    from otas.profile.table import Profile
    from otas.provenance import run_meta

    batches = [int(b) for b in args.batch_sizes.split(",")]
    prof = Profile.load(args.profile)
    runner = Runner.load(args.model or default_model_path(), args.device, None, max(batches), args.mode)
    prof = runner.served_profile(prof).for_max_batch(max(batches))  # read at the runner's buckets, as served
    t0 = time.perf_counter()
    runner.warmup()
    warm_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    size = runner.image_size
    task = next(t for t in runner.classes if t != "source")
    rows = []
    cells = [(g, b) for g in prof.gammas for b in batches]
    times: dict[tuple[int, int], list[float]] = {c: [] for c in cells}
    for _ in range(args.reps):  # interleaved rounds, random order: drift lands on every cell alike
        for i in rng.permutation(len(cells)):
            g, b = cells[i]
            imgs = list(rng.integers(0, 256, (b, size, size, 3), dtype=np.uint8))
            t = time.perf_counter()
            runner.run(imgs, [task] * b, g)
            times[g, b].append((time.perf_counter() - t) * 1e3)
    for g, b in cells:
        v = sorted(times[g, b])
        med, p90 = statistics.median(v), v[int(0.9 * (len(v) - 1))]
        pred = prof.lat(g, b)
        rows.append({"gamma": g, "batch": b, "served_ms": med, "served_p90_ms": p90, "profile_ms": pred,
                     "ratio": med / pred})  # fmt: skip
        print(f"γ={g:4d} b={b:3d}  served {med:8.3f} ms (p90 {p90:8.3f})  profile {pred:8.3f} ms  x{med / pred:.2f}")
    out = {
        "meta": {**run_meta(), "torch": torch.__version__, "device": str(runner.device), "mode": runner.mode,
                 "profile": args.profile.name, "reps": args.reps, "warmup_s": warm_s,
                 "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None},
        "rows": rows,
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    dev = "h100" if "H100" in str(out["meta"]["gpu"]) else runner.device.type
    path = args.out / f"served_latency_{dev}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
