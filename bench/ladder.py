"""The model-size ladder: accuracy per size, and model-switch over it, before and after.

Writes bench/results/ladder/ladder.{json,png}:
  - accuracy per model and task at γ = 0 and at the best γ (from the ladder's profiles), and each
    task's gain from Tiny to Small (the ladder holds when every gain is > 0; the target margin is 3);
  - per profile set and load, simulated side by side on the Azure trace (loads down to 0.1, where a
    slower model can keep up): model-switch's utility, its switches and batches per model, and OTAS's
    utility over model-switch's, with the ladder before (the first Small, below Tiny) and after;
    model-switch both paying each swap's `model_load_ms` and with both models resident (free swaps).

    python bench/ladder.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from otas.apps import load_apps
from otas.bench.workloads import DEFAULT_SETS
from otas.profile.table import Profile
from otas.provenance import run_meta
from otas.sched.scheduler import SchedulerConfig
from otas.sim.cli import sweep

LADDER = {p.name: list(p.paths) for p in DEFAULT_SETS}  # the ladder as it stands: the workload suite's sets
SETS = {  # set -> (apps, B_max, {when: profiles, the served Tiny model first})
    "cpu": ("otas/configs/apps.yaml", 64, {
        "before": ["profiles/vit_tiny_p2_c5__cpu.json", "profiles/vit_small_p2_c5__cpu.json"],
        "after": LADDER["cpu"],
    }),
    "gpu": ("otas/configs/apps-h100.yaml", 256, {
        # (the H100 Tiny profile of that time: profiles/ holds one re-measured with merge_every = 4 since)
        "before": ["bench/results/workloads/h100_profile/vit_tiny_p2_c5__h100-graphs_da7acf6.json",
                   "profiles/vit_small_p2_c5__h100-graphs.json"],
        "after": LADDER["h200"],
    }),
}  # fmt: skip
LOADS = (0.1, 0.2, 0.3, 0.5, 1.0, 1.5, 2.0)
SWITCH = ("model-switch", "model-switch:resident")  # paying each swap's model_load_ms, or both models resident
MARGIN = 3.0  # points Small must gain over Tiny on every task at γ = 0


def accuracy_rows(profiles: list[Profile]) -> list[dict]:
    rows = []
    for p in profiles:
        for task, acc in p.accuracy.items():
            best = max(acc, key=lambda g: acc[g])
            rows.append(
                {"model": p.model, "device": p.device, "dtype": p.dtype, "task": task, "gamma0": 100 * acc[0],
                 "best_gamma": best, "best": 100 * acc[best], "per_gamma": {str(g): 100 * a for g, a in acc.items()}}
            )  # fmt: skip
    return rows


def ladder_holds(rows: list[dict], models: list[str]) -> dict:
    """Per task: the gain of each model over the one below it, at γ = 0 and at the best γ."""
    out = {}
    for task in sorted({r["task"] for r in rows}):
        by = {r["model"]: r for r in rows if r["task"] == task}
        gains = [by[b]["gamma0"] - by[a]["gamma0"] for a, b in zip(models, models[1:], strict=False)]
        best = [by[b]["best"] - by[a]["best"] for a, b in zip(models, models[1:], strict=False)]
        out[task] = {"gain_gamma0": gains, "gain_best": best, "monotone": all(g > 0 for g in gains),
                     "margin_met": all(g >= MARGIN for g in gains)}  # fmt: skip
    return out


def switch_rows(runs: list[dict]) -> list[dict]:
    rows = []
    for load in sorted({r["load"] for r in runs}):
        at = {r["policy"]: r for r in runs if r["load"] == load}
        ms, rs, ot = at["model-switch"], at["model-switch:resident"], at["otas"]
        rows.append(
            {"load": load, "otas": ot["utility"], "model_switch": ms["utility"],
             "otas_over_model_switch": ot["utility"] / ms["utility"] if ms["utility"] > 0 else None,
             "model_switches": ms["model_switches"], "batches_per_model": ms["batches_per_model"],
             "resident": rs["utility"],
             "otas_over_resident": ot["utility"] / rs["utility"] if rs["utility"] > 0 else None,
             "resident_switches": rs["model_switches"], "resident_batches_per_model": rs["batches_per_model"]}
        )  # fmt: skip
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path("bench/results/ladder"))
    ap.add_argument("--loads", default=",".join(map(str, LOADS)))
    args = ap.parse_args()
    loads = [float(x) for x in args.loads.split(",")]
    result: dict = {"meta": {**run_meta(), "trace": "azure", "seed": 0, "loads": loads}, "margin_points": MARGIN}
    result["sets"] = {}
    for name, (apps_path, bmax, whens) in SETS.items():
        apps = load_apps(apps_path)
        entry: dict = {"apps": apps_path, "max_batch": bmax}
        for when, paths in whens.items():
            profs = [Profile.load(p) for p in paths]
            rows = accuracy_rows(profs)
            out, _ = sweep("azure", apps, profs, ["otas", *SWITCH], loads, SchedulerConfig(max_batch=bmax))
            entry[when] = {"profiles": paths, "accuracy": rows, "ladder": ladder_holds(rows, [p.model for p in profs]),
                           "runs": switch_rows(out["runs"])}  # fmt: skip
        result["sets"][name] = entry
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ladder.json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, args.out / "ladder.png")
    for name, s in result["sets"].items():
        for when in ("before", "after"):
            print(f"## {name} {when}: {', '.join(s[when]['profiles'])}")
            for task, v in s[when]["ladder"].items():
                print(f"  {task:9s} Small - Tiny: γ=0 {v['gain_gamma0'][0]:+.2f}, best γ {v['gain_best'][0]:+.2f}")
            for r in s[when]["runs"]:
                ratio = r["otas_over_model_switch"]
                ratio = ratio if ratio is None else round(ratio, 3)
                res = r["otas_over_resident"]
                res = res if res is None else round(res, 3)
                print(f"  load {r['load']:<4} switches {r['model_switches']:<4} otas/model-switch {ratio}  "
                      f"{r['batches_per_model']} | resident: switches {r['resident_switches']:<4} otas/resident {res}  "
                      f"{r['resident_batches_per_model']}")  # fmt: skip
    print(f"wrote {args.out / 'ladder.json'} and ladder.png")


def plot(result: dict, path: Path) -> None:
    from otas.plotting import pyplot, save

    plt = pyplot()
    sets = list(result["sets"])
    fig, axes = plt.subplots(2, len(sets), figsize=(6 * len(sets), 8), squeeze=False)
    for col, name in enumerate(sets):
        s = result["sets"][name]
        ax = axes[0][col]
        acc = s["after"]["accuracy"]
        tasks = sorted({r["task"] for r in acc})
        models = list(dict.fromkeys(r["model"] for r in acc))
        width = 0.8 / (2 * len(models))
        for i, m in enumerate(models):
            by = {r["task"]: r for r in acc if r["model"] == m}
            xs = [k + (2 * i) * width for k in range(len(tasks))]
            ax.bar(xs, [by[t]["gamma0"] for t in tasks], width, label=f"{m} γ=0")
            ax.bar([x + width for x in xs], [by[t]["best"] for t in tasks], width, label=f"{m} best γ", alpha=0.6)
        ax.set_xticks([k + 0.4 - width / 2 for k in range(len(tasks))], tasks)
        ax.set_ylim(50, 95)
        ax.set_ylabel("accuracy %")
        ax.set_title(f"{name}: accuracy per model and task")
        ax.legend(fontsize=7)
        ax = axes[1][col]
        for when, style in (("before", "--"), ("after", "-")):
            rows = [r for r in s[when]["runs"] if r["otas_over_model_switch"]]
            ax.plot([r["load"] for r in rows], [r["otas_over_model_switch"] for r in rows], style, marker="o",
                    label=f"{when} the ladder")  # fmt: skip
        rows = [r for r in s["after"]["runs"] if r["otas_over_resident"]]
        ax.plot([r["load"] for r in rows], [r["otas_over_resident"] for r in rows], ":", marker="s",
                label="after, both models resident (free swaps)")  # fmt: skip
        ax.axhline(1.0, color="grey", lw=0.8)
        ax.set_yscale("log")
        ax.set_xlabel("load (× capacity of γ = 0)")
        ax.set_ylabel("OTAS utility / model-switch utility")
        ax.set_title(f"{name}: OTAS over model-switch (Azure trace)")
        ax.legend(fontsize=8)
    save(fig, path)


if __name__ == "__main__":
    main()
