"""bench/live_timelines.py reads one round's replays from the A/B tarballs and counts, per arm, load and application,
the queries not answered within the SLO in the replay's first tenth and after."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import live_timelines  # noqa: E402

from tests.bench.tarballs import pack  # noqa: E402


def _replay(load: float, policy: str, sent: list[int], on_time: list[int], timeline: bool = True) -> dict:
    tl = {"start_ms": [10.0 * k for k in range(len(sent))], "sent": {"a": sent}, "on_time": {"a": on_time}}
    return {"meta": {"load": load, "policy": policy}, "apps": [{"name": "a"}],
            "live": {"all": {"timeline": tl} if timeline else {}}}  # fmt: skip


def test_losses_at_the_start_and_after_per_arm_of_one_round(tmp_path):
    sent = [10] * 20  # the first tenth: the first 2 bins
    pack(tmp_path / "pad_7.tar.xz", {
        "pad/aware-r7/raw/replay_T_otas_x1.json": _replay(1.0, "otas", sent, [4, 10] + [10] * 17 + [7]),
        "pad/f20-r7/raw/replay_T_fixed-20_x1.json": _replay(1.0, "fixed:-20", sent, sent),
        "pad/aware-r7/live.json": {"not": "read"},
    })  # fmt: skip
    pack(tmp_path / "pad_8.tar.xz", {"pad/aware-r8/raw/replay_T_otas_x1.json": _replay(1.0, "otas", sent, [0] * 20)})
    rows = live_timelines.read_replays(tmp_path, 7)
    assert [(r["arm"], r["load"]) for r in rows] == [("aware", 1.0), ("f20", 1.0)]
    lost = {r["arm"]: live_timelines.lost(r)["a"] for r in rows}
    assert lost["aware"] == {"sent": 200, "on_time": 191, "lost_first": 6, "lost_after": 3}
    assert lost["f20"] == {"sent": 200, "on_time": 200, "lost_first": 0, "lost_after": 0}
    live_timelines.main([str(tmp_path), "--round", "7"])
    out = json.loads((tmp_path / "timelines_r7.json").read_text())
    assert [r["lost"]["a"]["lost_first"] for r in out["rows"]] == [6, 0] and out["meta"]["first"] == 0.1
    assert (tmp_path / "timelines_r7.png").stat().st_size > 0


def test_a_round_without_timelines_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no replay of round 3"):
        live_timelines.read_replays(tmp_path, 3)
    pack(tmp_path / "old_3.tar.xz", {"pad/f20-r3/raw/replay_T_x1.json": _replay(1, "fixed:-20", [1], [1], False)})
    with pytest.raises(SystemExit, match="has no timeline"):
        live_timelines.read_replays(tmp_path, 3)
