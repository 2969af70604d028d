"""How fast this machine runs the served forward now, against the profile that scales a benchmark's loads.

A live benchmark on a CPU scales its loads to a profile's γ = 0 capacity (`otas bench replay`, `bench/peers/sweep.py`);
a host slower than the one the profile was made on turns "load 1" into more than the model keeps up with, for every
server alike. This times a few (γ, batch) cells of a CPU profile the way `otas profile` timed them (its mode, merge
schedule and dtype, the cells interleaved) and writes each cell's median over the profile's latency, so a sweep's
figures can be read against the machine it ran on.

    python bench/host_speed.py --out bench/results/peers/host_speed.json

Writes one JSON (machine, commit, command; one row per cell) and prints the cells.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from otas.profile.table import Profile  # noqa: E402
from otas.provenance import run_meta  # noqa: E402
from otas.sim.demo import default_profile_path  # noqa: E402


def cells(spec: str, largest: int) -> list[tuple[int, int]]:
    """(γ, batch) pairs from "0:1,0:64,-32:64": [(0, 1), (0, 64), (-32, 64)], each batch in 1..`largest`."""
    out = []
    for part in spec.split(","):
        g, _, b = part.partition(":")
        try:
            cell = (int(g), int(b))
        except ValueError:
            raise ValueError(f"cell {part!r}: write GAMMA:BATCH with integers, e.g. 0:64") from None
        if not 1 <= cell[1] <= largest:
            raise ValueError(f"cell {part!r}: the batch must be in 1..{largest}, the profile's batch sizes")
        out.append(cell)
    return out


def measure(profile: Profile, checkpoint: Path, todo: list[tuple[int, int]], min_time_s: float) -> list[dict]:
    """Each (γ, batch) of `todo` timed as `otas profile` times a cell (`otas.profile.measure.time_cells`: random
    uint8 images through the profile's mode and merge schedule on the CPU, the cells interleaved), beside the
    profile's latency."""
    import torch

    from otas.models.checkpoint import load_checkpoint
    from otas.profile.measure import cell_task, served_path, time_cells

    if missing := sorted({g for g, _ in todo} - set(profile.gammas)):
        raise ValueError(f"γ {missing}: the profile has no such γ (it has {profile.gammas})")
    dev, dtype = torch.device("cpu"), getattr(torch, profile.dtype)
    model = load_checkpoint(checkpoint, dev, dtype, merge_every=profile.merge_every)
    fast = served_path(model, dev, dtype, str(profile.meta.get("mode", "eager")), profile.batch_sizes)
    timed = time_cells(model, todo, dev, dtype, min_time_s, task_of=cell_task(model), fast=fast)
    rows = []
    for g, b in todo:
        ms, prof = timed[g, b][0], profile.lat(g, b)
        rows.append({"gamma": g, "batch": b, "median_ms": ms, "profile_ms": prof, "over_profile": ms / prof})
        print(f"γ = {g:>4} b = {b:>3}: {ms:9.2f} ms here, {prof:9.2f} ms in the profile: {ms / prof:.2f} ×")
    return rows


def main(argv: list[str] | None = None) -> None:
    import torch

    from otas.predict import default_model_path

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", type=Path, default=None, help="a CPU profile (default: the shipped one)")
    ap.add_argument("--model", type=Path, default=None, help="its checkpoint (default: the shipped model)")
    ap.add_argument("--cells", default="0:1,0:8,0:64,-32:64,16:8", help="GAMMA:BATCH,...")
    ap.add_argument("--min-time-s", type=float, default=1.0, help="time per cell at least, as `otas profile`")
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    path = a.profile or default_profile_path()
    checkpoint = a.model or default_model_path()
    try:
        profile = Profile.load(path)
        if profile.model != checkpoint.name.split(".")[0]:
            raise ValueError(f"{path} profiles {profile.model}, not {checkpoint.name}: give its --model")
        rows = measure(profile, checkpoint, cells(a.cells, max(profile.batch_sizes)), a.min_time_s)
    except (OSError, ValueError) as e:
        ap.error(str(e))
    ratios = [r["over_profile"] for r in rows]
    lo, mid, hi = min(ratios), statistics.median(ratios), max(ratios)
    meta = {
        **run_meta(__file__, argv),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "profile": str(path),
        "profile_created": profile.meta.get("created"),
        "profile_machine": profile.meta.get("machine"),
        "profile_torch": profile.meta.get("torch"),
        "profile_threads": profile.meta.get("threads"),
    }
    doc = {"meta": meta, "rows": rows, "over_profile": {"min": lo, "median": mid, "max": hi}}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=1))
    print(f"this machine over the profile: {lo:.2f}-{hi:.2f} × (median {mid:.2f}); wrote {a.out}")


if __name__ == "__main__":
    main()
