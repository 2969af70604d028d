"""bench/host_speed.py times the cells asked for as `otas profile` does and sets each beside the profile's latency."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import host_speed  # noqa: E402


def test_cells_are_gamma_batch_pairs_within_the_profile():
    assert host_speed.cells("0:1,-32:64", 64) == [(0, 1), (-32, 64)]
    for bad, says in (("0", "GAMMA:BATCH"), ("0:x", "GAMMA:BATCH"), ("0:0", "1..64"), ("0:65", "1..64")):
        with pytest.raises(ValueError, match=says):
            host_speed.cells(bad, 64)


def test_one_row_per_cell_over_the_profile(tmp_path):
    out = tmp_path / "speed.json"
    host_speed.main(["--cells", "0:1,-48:2", "--min-time-s", "0.01", "--out", str(out)])
    doc = json.loads(out.read_text())
    assert [(r["gamma"], r["batch"]) for r in doc["rows"]] == [(0, 1), (-48, 2)]
    for r in doc["rows"]:
        assert r["median_ms"] > 0 and r["over_profile"] == pytest.approx(r["median_ms"] / r["profile_ms"])
    assert doc["over_profile"]["min"] <= doc["over_profile"]["median"] <= doc["over_profile"]["max"]
    meta = doc["meta"]
    assert meta["command"].startswith("python bench/host_speed.py --cells 0:1,-48:2")
    assert meta["profile_created"] and meta["torch"] and meta["threads"] >= 1


def test_a_bad_cell_a_gamma_the_profile_lacks_or_another_model_is_refused(tmp_path, capsys):
    cases = [
        (["--cells=0:x"], "GAMMA:BATCH"),
        (["--cells=-7:1"], "no such γ"),
        (["--cells=0:1", "--profile", str(tmp_path / "none.json")], "none.json"),
        (["--cells=0:1", "--model", str(tmp_path / "vit_small_p2_c5.safetensors")], "give its --model"),
    ]
    for args, says in cases:
        with pytest.raises(SystemExit):
            host_speed.main([*args, "--out", str(tmp_path / "s.json")])
        assert says in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()
