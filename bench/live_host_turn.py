"""The host's part of each batch in the live A/B replays: per server and load, from the server's metrics (after less
before each load: decisions and their mean time, batches, the mean turn and device time per batch) and, for `otas`,
its decision log (how much later than the batch before it was predicted to end each batch was decided, by the
queue then), read from the `<name>_<round>.tar.xz` files an A/B script packed (`scripts/replay_one.sh`).

    python bench/live_host_turn.py bench/results/live_h100/22_h100_run44
Writes host_turn.json (with machine, commit, command) beside the tarballs.
"""

from __future__ import annotations

import argparse
import json
import re
import tarfile
from collections import defaultdict
from pathlib import Path

import numpy as np

from otas.provenance import run_meta

_METRICS = re.compile(r"^[^/]+/(?P<arm>[^/]+)/raw/metrics_.+_x(?P<load>[0-9.]+)_(?P<when>before|after)\.txt$")
_LOG = re.compile(r"^[^/]+/dl_(?P<arm>[^/]+)\.jsonl$")
QUEUE_BANDS = (0, 250, 1000, 2500)


def _total(text: str, name: str) -> float:
    """The sum over every label set of metric `name` in a Prometheus text exposition."""
    return sum(float(m[1]) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def _during(after: str, before: str, name: str) -> float:
    """How much metric `name` grew between two expositions of one server."""
    return _total(after, name) - _total(before, name)


def metrics_rows(files: dict[tuple[str, str, str], str]) -> list[dict]:
    """One row per (server, load) with both metrics files: what the server did during that load."""
    rows = []
    for arm, load in sorted({(a, lo) for a, lo, _ in files}):
        if (arm, load, "before") not in files or (arm, load, "after") not in files:
            continue
        got = {
            k: _during(files[(arm, load, "after")], files[(arm, load, "before")], f"otas_{k}")
            for k in ("decision_seconds_count", "decision_seconds_sum", "batch_measured_seconds_count",
                      "batch_measured_seconds_sum", "batch_device_seconds_sum")
        }  # fmt: skip
        n, nb = got["decision_seconds_count"], got["batch_measured_seconds_count"]
        turn, device = got["batch_measured_seconds_sum"], got["batch_device_seconds_sum"]
        rows.append({
            "server": arm, "load": float(load), "decisions": int(n), "batches": int(nb),
            "decision_ms": 1e3 * got["decision_seconds_sum"] / max(n, 1),
            "turn_ms": 1e3 * turn / max(nb, 1), "device_ms": 1e3 * device / max(nb, 1),
            "host_ms": 1e3 * (turn - device) / max(nb, 1),
        })  # fmt: skip
    return rows


def spacing_rows(arm: str, lines: list[dict]) -> list[dict]:
    """How much later than the batch before it was predicted to end each batch was decided (ms), by the queries
    queued then, over the whole log (every load: a gap of over 1 s between decisions starts the next)."""
    late: dict[int, list[float]] = defaultdict(list)
    for a, b in zip(lines, lines[1:], strict=False):
        if b["decided_ms"] - a["decided_ms"] > 1000:
            continue
        band = max(q for q in QUEUE_BANDS if a["queued"] >= q)
        late[band].append(b["decided_ms"] - a["decided_ms"] - a["predicted_ms"])
    return [{"server": arm, "queued_from": q, "batches": len(v), "later_ms_mean": float(np.mean(v))}
            for q, v in sorted(late.items())]  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("folder", type=Path)
    args = ap.parse_args(argv)
    files: dict[tuple[str, str, str], str] = {}
    spacing = []
    for tar in sorted(args.folder.glob("*.tar.xz")):
        with tarfile.open(tar) as t:
            for m in t.getmembers():
                if not m.isfile():
                    continue
                if hit := _METRICS.search(m.name):
                    files[(hit["arm"], hit["load"], hit["when"])] = t.extractfile(m).read().decode()
                elif hit := _LOG.search(m.name):
                    lines = [json.loads(x) for x in t.extractfile(m).read().decode().splitlines() if x.strip()]
                    spacing += spacing_rows(hit["arm"], lines)
    rows = metrics_rows(files)
    for r in rows:
        print(f"{r['server']:>14} load {r['load']:g}: {r['decisions']} decisions of {r['decision_ms']:.2f} ms, "
              f"{r['batches']} batches, turn {r['turn_ms']:.2f} ms, device {r['device_ms']:.2f}, "
              f"host {r['host_ms']:.2f}")  # fmt: skip
    for r in spacing:
        print(f"{r['server']:>14} queued ≥ {r['queued_from']:4d}: {r['batches']:4d} batches decided "
              f"{r['later_ms_mean']:.2f} ms after the one before was predicted to end")  # fmt: skip
    out = args.folder / "host_turn.json"
    out.write_text(json.dumps({"meta": run_meta(__file__, argv), "metrics": rows, "spacing": spacing}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
