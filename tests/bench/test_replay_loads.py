"""bench/replay_loads.py simulates the replay's window at every load, device speed and policy asked for, and writes
one row for each beside a plot."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import replay_loads  # noqa: E402


def test_one_row_per_load_device_and_policy(tmp_path):
    args = "--trace poisson --loads 0.5,2 --scales 1,1.5 --policies fixed:-20,otas --seconds 0.05 --repeat 1"
    replay_loads.main([*args.split(), "--buckets", "1,8,64,256", "--out", str(tmp_path)])
    out = json.loads((tmp_path / "replay_loads.json").read_text())
    got = {(r["load"], r["scale"], r["policy"]) for r in out["rows"]}
    assert got == {(x, s, p) for x in (0.5, 2.0) for s in (1.0, 1.5) for p in ("fixed:-20", "otas")}
    assert all(r["utility"] > 0 and 0 <= r["slo"] <= 1 for r in out["rows"])
    fixed = {(r["load"], r["scale"]): r for r in out["rows"] if r["policy"] == "fixed:-20"}
    assert fixed[(0.5, 1.0)]["mean_gamma"] == -20 and fixed[(2.0, 1.5)]["slo"] <= fixed[(2.0, 1.0)]["slo"]
    assert "replay_loads.py" in out["meta"]["command"] and (tmp_path / "replay_loads.png").stat().st_size > 0
