"""Launching ahead against one batch at a time, from the files of `scripts/gpu_pipeline_ab.sh` and
`scripts/gpu_launch_ab.sh` in one results folder: served images per second of each arm per (γ, batch) and machine
(`model_overhead_ab*.json`, and any `hold_raw.tgz` of arms run by hand), and live `otas` utility per load and
round (`launch_*.tar.xz`), each as the ratio of launching ahead to one batch at a time.

    python bench/launch_ab_summary.py bench/results/pipeline/h100_run43

Writes summary.json (every ratio with its two figures) and summary.png into the folder.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tarfile
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from otas.provenance import run_meta  # noqa: E402


def served(folder: Path) -> list[dict]:
    """Per file of `gpu_pipeline_ab.sh` (one machine each): ahead / serial images per second per (γ, b)."""
    rows = []
    for k, path in enumerate(sorted(folder.glob("model_overhead_ab*.json")), 1):
        arms = json.loads(path.read_text())
        for name, res in arms.items():
            m = re.fullmatch(r"g(-?\d+)_ahead", name)
            serial = arms.get(name.replace("_ahead", "_serial"))
            if m is None or serial is None:
                continue
            base = {r["batch"]: r for r in serial["rows"]}
            for r in res["rows"]:
                if r["batch"] in base:
                    rows.append(_ratio(f"{path.name}", k, int(m.group(1)), r, base[r["batch"]]))
    return rows


def by_hand(folder: Path) -> list[dict]:
    """Arms of `hold_raw.tgz` (`<arm>_r<round>/model_overhead.json`, γ = 0): each arm against `serial` of its round."""
    tgz = folder / "hold_raw.tgz"
    if not tgz.exists():
        return []
    rows = []
    with tempfile.TemporaryDirectory() as tmp, tarfile.open(tgz) as tar:
        tar.extractall(tmp, filter="data")
        runs = {p.parent.name: json.loads(p.read_text()) for p in Path(tmp).glob("*/*/model_overhead.json")}
        for name, res in sorted(runs.items()):
            arm, rnd = name.rsplit("_r", 1)
            serial = runs.get(f"serial_r{rnd}")
            if arm == "serial" or serial is None:
                continue
            base = {r["batch"]: r for r in serial["rows"]}
            mine = [r for r in res["rows"] if r["batch"] in base]
            rows += [_ratio(f"hold_raw.tgz:{name}", 0, 0, r, base[r["batch"]]) for r in mine]
    return rows


def _ratio(source: str, machine: int, gamma: int, ahead: dict, serial: dict) -> dict:
    return {"source": source, "machine": machine, "gamma": gamma, "batch": ahead["batch"],
            "images_per_s": [ahead["images_per_s"], serial["images_per_s"]],
            "overhead": [ahead["overhead"], serial["overhead"]],
            "ratio": ahead["images_per_s"] / serial["images_per_s"]}  # fmt: skip


def live(folder: Path) -> list[dict]:
    """Per round of `gpu_launch_ab.sh` (`launch_<round>.tar.xz`): ahead / serial live `otas` utility per load."""
    rows = []
    for tgz in sorted(folder.glob("launch_*.tar.xz")):
        with tempfile.TemporaryDirectory() as tmp, tarfile.open(tgz) as tar:
            tar.extractall(tmp, filter="data")
            util: dict[tuple[str, float], dict] = {}
            for p in Path(tmp).glob("launch/*-r*/live.json"):
                arm = p.parent.name.split("-r")[0]
                for r in json.loads(p.read_text())["rows"]:
                    util[arm, float(r["load"])] = r
            for (arm, load), r in sorted(util.items()):
                if arm == "ahead" and ("serial", load) in util:
                    s = util["serial", load]
                    rows.append({"source": tgz.name, "load": load,
                                 "utility": [r["utility_live"], s["utility_live"]],
                                 "live_over_sim": [r["live_over_sim"], s["live_over_sim"]],
                                 "ratio": r["utility_live"] / s["utility_live"]})  # fmt: skip
    return rows


def plot(rows: list[dict], hand: list[dict], lv: list[dict], path: Path) -> None:
    from otas.plotting import pyplot, save

    plt = pyplot()
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 3.8), gridspec_kw={"width_ratios": [2.2, 1]})
    cases = sorted({(r["gamma"], r["batch"]) for r in rows + hand}, key=lambda c: (-c[0] != 0, c[0], c[1]))
    x = {c: i for i, c in enumerate(cases)}
    for k in sorted({r["machine"] for r in rows}):
        mine = [r for r in rows if r["machine"] == k]
        a.plot([x[r["gamma"], r["batch"]] for r in mine], [r["ratio"] for r in mine], "o", label=mine[0]["source"])
    for r in hand:
        if r["source"].split(":")[1].startswith("ahead"):
            a.plot(x[r["gamma"], r["batch"]], r["ratio"], "s", color="grey", mfc="none")
    if hand:
        a.plot([], [], "s", color="grey", mfc="none", label="hold_raw.tgz (ahead)")
    a.axhline(1, color="k", lw=0.8)
    a.set_xticks(range(len(cases)), [f"γ {g}\nb {bb}" for g, bb in cases])
    a.set_ylabel("images/s, ahead / one at a time")
    a.set_title("Served, closed loop (model_overhead.py)")
    a.legend(fontsize=8)
    for src in sorted({r["source"] for r in lv}):
        mine = [r for r in lv if r["source"] == src]
        b.plot([r["load"] for r in mine], [r["ratio"] for r in mine], "o", label=src)
    b.axhline(1, color="k", lw=0.8)
    b.set_xlabel("load (× γ = 0 capacity)")
    b.set_ylabel("live otas utility, ahead / one at a time")
    b.set_title("Live replay (gpu_launch_ab.sh)")
    b.legend(fontsize=8)
    save(fig, path)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    args = ap.parse_args(argv)
    rows, hand, lv = served(args.folder), by_hand(args.folder), live(args.folder)
    if not rows and not lv:
        sys.exit(f"{args.folder}: no model_overhead_ab*.json or launch_*.tar.xz here")
    out = {"meta": run_meta(__file__, argv), "served": rows, "by_hand": hand, "live": lv}
    (args.folder / "summary.json").write_text(json.dumps(out, indent=1))
    plot(rows, hand, lv, args.folder / "summary.png")
    for r in rows + hand:
        print(f"{r['source']:<32} γ {r['gamma']:4d} b {r['batch']:4d}: {r['ratio']:.2f}")
    for r in lv:
        print(f"{r['source']:<32} load {r['load']}: {r['ratio']:.2f}")


if __name__ == "__main__":
    main()
