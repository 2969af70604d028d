"""bench/host_speed.py times the served forward at the cells asked for and sets each beside the profile's latency."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import host_speed  # noqa: E402


def test_cells_are_gamma_batch_pairs():
    assert host_speed.cells("0:1,-32:64") == [(0, 1), (-32, 64)]
    with pytest.raises(ValueError, match="GAMMA:BATCH"):
        host_speed.cells("0")


def test_one_row_per_cell_over_the_profile(tmp_path):
    out = tmp_path / "speed.json"
    host_speed.main(["--cells", "0:1,-48:2", "--repeats", "2", "--out", str(out)])
    doc = json.loads(out.read_text())
    assert [(r["gamma"], r["batch"]) for r in doc["rows"]] == [(0, 1), (-48, 2)]
    for r in doc["rows"]:
        assert r["median_ms"] > 0 and r["over_profile"] == pytest.approx(r["median_ms"] / r["profile_ms"])
    assert doc["over_profile"]["min"] <= doc["over_profile"]["median"] <= doc["over_profile"]["max"]
    assert "host_speed.py" in doc["meta"]["command"] and doc["meta"]["profile_created"]


def test_a_bad_cell_or_a_gamma_the_profile_lacks_is_refused(tmp_path, capsys):
    for cell, says in (("0:x", "invalid literal"), ("-7:1", "no such γ")):
        with pytest.raises(SystemExit):
            host_speed.main([f"--cells={cell}", "--out", str(tmp_path / "s.json")])
        assert says in capsys.readouterr().err
    assert not (tmp_path / "s.json").exists()
