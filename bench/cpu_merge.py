"""Merging speed-up on this CPU, measured side by side: every γ ≤ 0 timed in interleaved rounds
(`otas.profile.measure.time_cells`), so machine drift hits all settings alike; median over rounds.
Writes bench/results/cpu_merge.{json,png}.

    python bench/cpu_merge.py [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from otas.models.checkpoint import load_checkpoint
from otas.predict import default_model_path
from otas.profile.measure import device_name, gflops, time_cells
from otas.profile.report import realised_share
from otas.provenance import run_meta

CASES = [
    ("vit_tiny_p2_c5", default_model_path(), (8, 64)),
    ("vit_small_p2_c5", Path("checkpoints/vit_small_p2_c5.safetensors"), (8,)),
]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    out = {
        "meta": {**run_meta(), "device": device_name(torch.device("cpu")), "rounds": args.rounds},
        "rows": [],
    }
    for name, path, batches in CASES:
        if not path.is_file():
            print(f"skip {name}: {path} missing (see docs/models.md to rebuild it)")
            continue
        model = load_checkpoint(path)
        gammas = [g for g in model.config.gammas if g <= 0]
        for b in batches:
            cells = [(g, b) for g in gammas]
            timed = time_cells(model, cells, torch.device("cpu"), torch.float32, min_time_s=0.0, min_runs=args.rounds)
            base = timed[0, b][0]
            for g in gammas:
                ms = timed[g, b][0]
                f = gflops(model, g) / gflops(model, 0)
                row = {
                    "model": name,
                    "batch": b,
                    "gamma": g,
                    "median_ms": ms,
                    "speedup": base / ms,
                    "flop_speedup": 1 / f,
                    "realised": realised_share(ms, base, f),
                }
                out["rows"].append(row)
                print(json.dumps(row))
    Path("bench/results").mkdir(parents=True, exist_ok=True)
    Path("bench/results/cpu_merge.json").write_text(json.dumps(out, indent=1) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for key in sorted({(r["model"], r["batch"]) for r in out["rows"]}):
        rows = [r for r in out["rows"] if (r["model"], r["batch"]) == key and r["gamma"] < 0]
        ax.plot([r["flop_speedup"] for r in rows], [r["speedup"] for r in rows], "o-", label=f"{key[0]} b={key[1]}")
    lim = max(r["flop_speedup"] for r in out["rows"])
    ax.plot([1, lim], [1, lim], "k--", lw=0.8, label="speed-up = FLOP reduction")
    ax.plot([1, lim], [1, 1 + 0.7 * (lim - 1)], "k:", lw=0.8, label="70 % of it")
    ax.set_xlabel("FLOP reduction of γ (x)")
    ax.set_ylabel("measured speed-up over γ = 0 (x)")
    ax.set_title(f"token merging on {out['meta']['machine']}", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig("bench/results/cpu_merge.png", dpi=120)


if __name__ == "__main__":
    main()
