"""bench/live_rounds.py reads every arm's rounds from the A/B tarballs and compares each with the reference arm of
the same round and load."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import live_rounds  # noqa: E402

from tests.bench.tarballs import pack  # noqa: E402


def _live(rows: list[tuple[float, float]]) -> dict:
    return {"meta": {"commit": "abc"}, "rows": [
        {"load": x, "utility_live": u, "utility_sim": 2 * u, "slo_live": 1.0, "rejected": 0} for x, u in rows
    ]}  # fmt: skip


def test_each_arm_over_the_reference_of_its_own_round(tmp_path):
    pack(tmp_path / "pad_1.tar.xz", {"pad/f20-r1/live.json": _live([(1.0, 100.0), (1.5, 80.0)]),
                                      "pad/aware-r1/live.json": _live([(1.0, 90.0), (1.5, 88.0)]),
                                      "pad/aware-r1/raw/other.json": {"not": "read"}})  # fmt: skip
    pack(tmp_path / "pad_2.tar.xz", {"pad/f20-r2/live.json": _live([(1.0, 50.0)]),
                                      "pad/aware-r2/live.json": _live([(1.0, 60.0), (1.5, 70.0)])})  # fmt: skip
    rows = live_rounds.with_ratios(live_rounds.read_rounds(tmp_path), "f20")
    got = {(r["arm"], r["round"], r["load"]): r["over_ref"] for r in rows}
    assert got == {
        ("f20", 1, 1.0): 1.0, ("f20", 1, 1.5): 1.0, ("aware", 1, 1.0): 0.9, ("aware", 1, 1.5): 1.1,
        ("f20", 2, 1.0): 1.0, ("aware", 2, 1.0): 1.2, ("aware", 2, 1.5): None,
    }  # fmt: skip
    live_rounds.plot(rows, tmp_path / "rounds.png", "f20")
    assert (tmp_path / "rounds.png").stat().st_size > 0


def test_a_folder_without_rounds_is_a_clear_error(tmp_path):
    with pytest.raises(SystemExit, match="no <arm>-r<round>/live.json"):
        live_rounds.read_rounds(tmp_path)


def test_one_round_in_two_tarballs_is_a_clear_error(tmp_path):
    for name in ("pad_1.tar.xz", "again_1.tar.xz"):
        pack(tmp_path / name, {"pad/f20-r1/live.json": _live([(1.0, 100.0)])})
    with pytest.raises(SystemExit, match="f20 round 1 at load 1 is in both"):
        live_rounds.read_rounds(tmp_path)
