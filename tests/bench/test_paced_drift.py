"""bench/paced_drift.py reads a live run's latency correction from its decision log and simulates the replay's window
on a device as profiled and that much slower, for the replay's policy and any others asked for."""

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import paced_drift  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def test_the_correction_is_the_median_ratio_and_others_are_simulated_alike(tmp_path):
    meta = {"load": 1.5, "duration_s": 0.05, "repeat": 1, "coalesce_ms": 5.0, "policy": "otas",
            "scheduler": {"max_batch": 256}}  # fmt: skip
    replay = {"meta": meta, "live": {"all": {"utility_expected": 100.0, "mean_gamma": -20.0}}}
    (tmp_path / "replay.json").write_text(json.dumps(replay))
    log = [{"predicted_ms": p, "meta": {"profiled_ms": 1.0}} for p in (1.1, 1.2, 1.5)]
    log.append({"predicted_ms": 1.0, "meta": {}})  # a batch without its profiled time is not a ratio
    (tmp_path / "dl.jsonl").write_text("\n".join(json.dumps(x) for x in log) + "\n")
    paced_drift.main(["--replay", str(tmp_path / "replay.json"), "--decision-log", str(tmp_path / "dl.jsonl"),
                      "--profile", str(REPO / "profiles/vit_tiny_p2_c5__h100-graphs.json"),
                      "--apps", str(REPO / "otas/configs/apps-h100.yaml"), "--trace", "poisson",
                      "--out", str(tmp_path / "out"), "--others", "fixed:-20"])  # fmt: skip
    out = json.loads((tmp_path / "out/paced_drift.json").read_text())
    assert out["live_factor"] == 1.2 and out["live_batches"] == 4
    assert out["sim"]["as_measured"]["device_scale"] == 1.2 and out["sim"]["as_profiled"]["device_scale"] == 1.0
    assert set(out["others"]) == {"fixed:-20"} and out["others"]["fixed:-20"]["as_measured"]["device_scale"] == 1.2
    assert out["live_over_sim"]["as_profiled"] == 100.0 / out["sim"]["as_profiled"]["utility"]
