"""Where in a live replay each server lost its queries: the replays' timelines (`live.all.timeline`, each
application's requests sent and answered within the SLO by arrival time) of every arm of one round of a live A/B,
side by side. Reads the `<arm>-r<round>/raw/replay_*.json` files that the A/B scripts (through
`scripts/replay_one.sh`) pack into `<name>_<round>.tar.xz`, and writes timelines_r<round>.json (per arm, load and
application: sent, answered on time, and the queries lost in the replay's first tenth and in the rest) and
timelines_r<round>.png (a row per load, a column per application, a line per arm) beside the tarballs.

    python bench/live_timelines.py bench/results/live_h100/19_h100_runs37_40/timeline --round 8
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from live_rounds import tarball_json  # noqa: E402 (bench/, beside this script)

from otas.bench.report import draw_timeline  # noqa: E402
from otas.provenance import run_meta  # noqa: E402

_REPLAY = re.compile(r"(?:^|/)(?P<arm>[A-Za-z0-9_.:-]+?)-r(?P<round>\d+)/raw/replay_[^/]*\.json$")
FIRST = 0.1
"""The share of a replay's arrival times counted as its start (the burst each replay begins with)."""


def read_replays(folder: Path, rnd: int) -> list[dict]:
    """One row per (arm, load) of round `rnd`: its replay's meta, and its timeline."""
    rows = []
    for tar, name, hit, r in tarball_json(folder, _REPLAY):
        if int(hit["round"]) != rnd:
            continue
        tl = r["live"]["all"].get("timeline")
        if not tl:
            raise SystemExit(f"{tar}:{name} has no timeline (a replay older than live.all.timeline)")
        meta, apps = r["meta"], [a["name"] for a in r["apps"]]
        if missing := [a for a in apps if a not in tl["sent"] or a not in tl["on_time"]]:
            raise SystemExit(f"{tar}:{name}: its timeline lacks applications {missing}")
        rows.append({"arm": hit["arm"], "load": meta["load"], "policy": meta["policy"], "apps": apps,
                     "timeline": tl, "file": f"{tar.name}:{name}"})  # fmt: skip
    if not rows:
        raise SystemExit(f"no replay of round {rnd} with a timeline in {folder}/*.tar.xz")
    seen = [(r["arm"], r["load"]) for r in rows]
    if len(set(seen)) != len(seen):
        raise SystemExit(f"round {rnd}: some arm has two replays at one load in {folder}/*.tar.xz")
    return sorted(rows, key=lambda r: (r["load"], r["arm"]))


def lost(row: dict) -> dict[str, dict[str, int]]:
    """Per application: sent, on time, and the queries not answered on time in the first `FIRST` of the replay's
    arrival times and after."""
    tl = row["timeline"]
    k = max(1, round(FIRST * len(tl["start_ms"])))
    out = {}
    for a in row["apps"]:
        sent, met = tl["sent"][a], tl["on_time"][a]
        out[a] = {"sent": sum(sent), "on_time": sum(met), "lost_first": sum(sent[:k]) - sum(met[:k]),
                  "lost_after": sum(sent[k:]) - sum(met[k:])}  # fmt: skip
    return out


def plot(rows: list[dict], path: Path, title: str) -> None:
    from otas.plotting import pyplot, save

    plt = pyplot()
    loads = sorted({r["load"] for r in rows})
    apps = rows[0]["apps"]
    arms = sorted({r["arm"] for r in rows})
    fig, axes = plt.subplots(len(loads), len(apps), figsize=(5 * len(apps), 3.2 * len(loads)), squeeze=False)
    for r in rows:
        i, color = loads.index(r["load"]), f"C{arms.index(r['arm'])}"
        for j, a in enumerate(apps):
            draw_timeline(axes[i][j], r["timeline"], a, color=color, label=f"{r['arm']} ({r['policy']})", lw=1)
            axes[i][j].set_title(f"{a} at load {r['load']:g}", fontsize=9)
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    save(fig, path, dpi=110)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="a folder of A/B tarballs (<name>_<round>.tar.xz)")
    ap.add_argument("--round", type=int, required=True, help="the round whose arms are drawn")
    args = ap.parse_args(argv)
    rows = read_replays(args.folder, args.round)
    for r in rows:
        r["lost"] = lost(r)
        each = [f"{a} lost {v['lost_first']} + {v['lost_after']} of {v['sent']}" for a, v in r["lost"].items()]
        print(f"load {r['load']:<4g} {r['arm']:>10s}: " + "  ".join(each))
    out = {"meta": {**run_meta(__file__, argv), "first": FIRST}, "rows": rows}
    (args.folder / f"timelines_r{args.round}.json").write_text(json.dumps(out, indent=1) + "\n")
    title = f"round {args.round}: answered within the SLO, by arrival time"
    plot(rows, args.folder / f"timelines_r{args.round}.png", title)
    print(f"wrote {args.folder}/timelines_r{args.round}.json and .png")


if __name__ == "__main__":
    main()
