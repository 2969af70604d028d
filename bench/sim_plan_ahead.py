"""Planning ahead in the simulator: the utility of each policy with `plan_ahead` over without, per
trace and load (the simulator has no host, so this is only the cost of planning a batch before the
one ahead of it ends, without the arrivals meanwhile). One JSON file and a plot.

    python bench/sim_plan_ahead.py --out bench/results/plan_ahead/sim
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from otas.bench.replay import window  # noqa: E402
from otas.config import SchedulerConfig, load_apps  # noqa: E402
from otas.profile.table import Profile  # noqa: E402
from otas.provenance import run_meta  # noqa: E402
from otas.sim.simulator import run  # noqa: E402

PROFILE = ROOT / "bench/results/live_h100/8_h100_uint8/vit_tiny_p2_c5__h100-graphs-uint8.json"
APPS = ROOT / "otas/configs/apps-h100.yaml"
AZURE = ROOT.parent / "shared/data/traces/AzureLLMInferenceTrace_conv.csv"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--traces", default=f"{AZURE},poisson,mmpp,diurnal")
    ap.add_argument("--loads", default="0.5,1,1.5,2,3")
    ap.add_argument("--policies", default="otas,fixed:0,fixed:-16,fixed:-32")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("bench/results/plan_ahead/sim"))
    a = ap.parse_args()
    apps, prof = load_apps(APPS), Profile.load(PROFILE)
    cfg = SchedulerConfig(max_batch=256)
    rows = []
    for spec in a.traces.split(","):
        for load in map(float, a.loads.split(",")):
            for seed in range(a.seeds):
                trace, _ = window(spec, apps, prof, 256, load, 20_000, 0, seed)
                for policy in a.policies.split(","):
                    runs = [run(trace, apps, prof, policy, cfg, seed=seed, noise=True, plan_ahead=pa) for pa in (0, 1)]
                    u = [r.summary(apps)["utility"] for r in runs]
                    rows.append({"trace": Path(spec).stem, "load": load, "seed": seed, "policy": policy,
                                 "utility": u[0], "utility_plan_ahead": u[1], "ratio": u[1] / u[0]})  # fmt: skip
                    print(f"{rows[-1]['trace'][:24]:24} {load:4} {seed} {policy:10} {u[1] / u[0]:.3f}", flush=True)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.with_suffix(".json").write_text(json.dumps({"meta": run_meta(), "rows": rows}, indent=1))
    plot(rows, a.out.with_suffix(".png"))
    r = [x["ratio"] for x in rows]
    print(f"plan ahead / not: {min(r):.3f} .. {max(r):.3f} over {len(r)} cells")


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    traces = list(dict.fromkeys(x["trace"] for x in rows))
    policies = list(dict.fromkeys(x["policy"] for x in rows))
    fig, axes = plt.subplots(1, len(traces), figsize=(3.6 * len(traces), 3.2), squeeze=False, sharey=True)
    for ax, t in zip(axes[0], traces, strict=True):
        for p in policies:
            mine = [x for x in rows if x["trace"] == t and x["policy"] == p]
            loads = sorted({x["load"] for x in mine})
            ax.plot(loads, [min(x["ratio"] for x in mine if x["load"] == lo) for lo in loads], "o-", ms=3, label=p)
        ax.axhline(1, color="k", lw=0.5)
        ax.set_title(t[:28], fontsize=9)
        ax.set_xlabel("load × γ=0 capacity")
    axes[0][0].set_ylabel("utility, planned ahead / not (worst seed)")
    axes[0][-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    main()
