"""How fast this machine runs the served forward now, against the profile that scales a benchmark's loads.

A live benchmark on a CPU scales its loads to a profile's γ = 0 capacity (`otas bench replay`, `bench/peers/sweep.py`);
a host slower than the one the profile was made on turns "load 1" into more than the device keeps up with, for every
server alike. This times the profile's own path (its `meta.mode`, the shipped model on this machine's device) at a
few (γ, batch) cells and writes each cell's median over the profile's latency, so a sweep's figures can be read
against the machine it ran on.

    python bench/host_speed.py --out bench/results/peers/host_speed.json

Writes one JSON (machine, commit, command; one row per cell) and prints the cells.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from otas.profile.table import Profile  # noqa: E402
from otas.provenance import run_meta  # noqa: E402
from otas.sim.demo import default_profile_path  # noqa: E402


def cells(spec: str) -> list[tuple[int, int]]:
    """(γ, batch) pairs from "0:1,0:64,-32:64": [(0, 1), (0, 64), (-32, 64)]."""
    out = []
    for part in spec.split(","):
        g, _, b = part.partition(":")
        if not b:
            raise ValueError(f"cell {part!r}: write GAMMA:BATCH, e.g. 0:64")
        out.append((int(g), int(b)))
    return out


def measure(profile: Profile, todo: list[tuple[int, int]], repeats: int, device: str = "cpu") -> list[dict]:
    """Each (γ, batch) of `todo` timed `repeats` times through the profile's path, beside the profile's latency."""
    import numpy as np
    import torch

    from otas.adapt.fast import FastConfig, FastForward
    from otas.models.checkpoint import load_checkpoint
    from otas.predict import default_model_path

    missing = [(g, b) for g, b in todo if g not in profile.gammas]
    if missing:
        raise ValueError(f"cells {missing}: the profile has no such γ (it has {profile.gammas})")
    model = load_checkpoint(default_model_path(), device, torch.float32, merge_every=profile.merge_every)
    mode = str(profile.meta.get("mode", "traced"))
    fast = FastForward(model, torch.device(device), FastConfig(mode=mode, dtype=torch.float32))
    size = model.preprocess.size
    task = next(iter(model.config.tasks))
    rows = []
    for g, b in todo:
        x = np.zeros((b, size, size, 3), np.uint8)
        for _ in range(2):  # traces, allocations
            fast.predict_host(x, g, task)
        t = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fast.predict_host(x, g, task)
            t.append((time.perf_counter() - t0) * 1e3)
        ms, prof = statistics.median(t), profile.lat(g, b)
        rows.append({"gamma": g, "batch": b, "median_ms": ms, "profile_ms": prof, "over_profile": ms / prof})
        print(f"γ = {g:>4} b = {b:>3}: {ms:9.2f} ms here, {prof:9.2f} ms in the profile: {ms / prof:.2f} ×")
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", type=Path, default=None, help="default: the shipped profile of this device type")
    ap.add_argument("--cells", default="0:1,0:8,0:64,-32:64,16:8", help="GAMMA:BATCH,...")
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    if a.repeats < 1:
        ap.error(f"--repeats {a.repeats}: use 1 or more")
    try:
        todo = cells(a.cells)
    except ValueError as e:
        ap.error(str(e))
    path = a.profile or default_profile_path()
    profile = Profile.load(path)
    try:
        rows = measure(profile, todo, a.repeats)
    except ValueError as e:
        ap.error(str(e))
    ratios = [r["over_profile"] for r in rows]
    doc = {
        "meta": {
            **run_meta(),
            "profile": str(path),
            "profile_created": profile.meta.get("created"),
            "profile_machine": profile.meta.get("machine"),
        },
        "rows": rows,
        "over_profile": {"min": min(ratios), "median": statistics.median(ratios), "max": max(ratios)},
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=1))
    lo, mid, hi = min(ratios), statistics.median(ratios), max(ratios)
    print(f"this machine over the profile: {lo:.2f}-{hi:.2f} × (median {mid:.2f}); wrote {a.out}")


if __name__ == "__main__":
    main()
