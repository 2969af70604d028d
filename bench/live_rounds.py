"""Rounds of a live A/B side by side: each server's utility per load and round, from the `<arm>-r<round>/live.json`
files that `scripts/gpu_pad_ab.sh` (and the other A/B scripts through `scripts/replay_one.sh`) pack into
`<name>_<round>.tar.xz`. Writes rounds.json (every row, with the ratio of each arm to a reference arm in the same
round) and rounds.png (utility by round, one panel per load) beside the tarballs.

    python bench/live_rounds.py bench/results/live_h100/18_h100_run36_buckets --ref f20
"""

from __future__ import annotations

import argparse
import json
import re
import tarfile
from collections.abc import Iterator
from pathlib import Path

from otas.plotting import pyplot, save
from otas.provenance import run_meta

_TAG = re.compile(r"(?:^|/)(?P<arm>[A-Za-z0-9_.:-]+?)-r(?P<round>\d+)/live\.json$")


def tarball_json(folder: Path, pattern: re.Pattern) -> Iterator[tuple[Path, str, re.Match, dict]]:
    """(tarball, member name, the match, its JSON) for every file in `folder`'s *.tar.xz whose name `pattern`
    matches (searched), tarballs in name order: what an A/B script packed."""
    for tar in sorted(folder.glob("*.tar.xz")):
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                if m.isfile() and (hit := pattern.search(m.name)):
                    yield tar, m.name, hit, json.load(t.extractfile(m))


def read_rounds(folder: Path) -> list[dict]:
    """One row per (arm, round, load) from every tarball's `<arm>-r<round>/live.json`."""
    rows = []
    for tar, _, hit, data in tarball_json(folder, _TAG):
        for r in data["rows"]:
            rows.append({"arm": hit["arm"], "round": int(hit["round"]), "load": float(r["load"]),
                         "utility_live": r["utility_live"], "utility_sim": r["utility_sim"],
                         "slo_live": r["slo_live"], "rejected": r["rejected"], "tarball": tar.name,
                         "commit": data["meta"].get("commit", "")})  # fmt: skip
    if not rows:
        raise SystemExit(f"no <arm>-r<round>/live.json in the tarballs under {folder}")
    seen: dict[tuple, str] = {}
    for r in rows:
        key = (r["arm"], r["round"], r["load"])
        if key in seen:
            raise SystemExit(
                f"{r['arm']} round {r['round']} at load {r['load']:g} is in both {seen[key]} and {r['tarball']}"
            )
        seen[key] = r["tarball"]
    return rows


def with_ratios(rows: list[dict], ref: str) -> list[dict]:
    """Each row with `over_ref`: its live utility over the reference arm's in the same round and load (None: absent)."""
    base = {(r["round"], r["load"]): r["utility_live"] for r in rows if r["arm"] == ref}
    for r in rows:
        b = base.get((r["round"], r["load"]))
        r["over_ref"] = r["utility_live"] / b if b else None
    return rows


def plot(rows: list[dict], path: Path, ref: str) -> None:
    plt = pyplot()
    loads = sorted({r["load"] for r in rows})
    arms = sorted({r["arm"] for r in rows})
    fig, axes = plt.subplots(1, len(loads), figsize=(5 * len(loads), 3.6), squeeze=False)
    for ax, load in zip(axes[0], loads, strict=True):
        for k, arm in enumerate(arms):
            pts = sorted((r["round"], r["utility_live"]) for r in rows if r["arm"] == arm and r["load"] == load)
            if pts:
                ax.plot([p[0] + 0.08 * (k - len(arms) / 2) for p in pts], [p[1] for p in pts], "o-", label=arm)
        for u in {r["utility_sim"] for r in rows if r["load"] == load}:  # each arm's simulated utility
            ax.axhline(u, lw=0.6, ls=":", color="grey")
        ax.set_title(f"load {load:g} (dotted: the simulator)")
        ax.set_xticks(sorted({r["round"] for r in rows}))
        ax.set_xlabel("round")
        ax.set_ylabel("utility, live")
        ax.legend(fontsize=8)
    fig.suptitle(f"live utility per round (reference arm: {ref})", fontsize=10)
    save(fig, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path, help="a run's folder holding the <name>_<round>.tar.xz files")
    ap.add_argument("--ref", default="f20", help="the arm the others are compared with, round by round")
    args = ap.parse_args()
    rows = with_ratios(read_rounds(args.folder), args.ref)
    for r in sorted(rows, key=lambda r: (r["load"], r["arm"], r["round"])):
        ratio = "" if r["over_ref"] is None else f"  {r['over_ref']:.3f} × {args.ref}"
        print(f"load {r['load']:g}  {r['arm']:>10} r{r['round']}: {r['utility_live']:10.1f}{ratio}")
    meta = run_meta()
    (args.folder / "rounds.json").write_text(json.dumps({"meta": meta, "ref": args.ref, "rows": rows}, indent=1))
    plot(rows, args.folder / "rounds.png", args.ref)


if __name__ == "__main__":
    main()
