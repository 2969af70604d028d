import json
from datetime import datetime

import pytest

from otas.bench import live_summary


def _replay(policy: str, load: float, live_u: float, sim_u: float) -> dict:
    every = {"utility_expected": live_u, "slo_attainment": 0.9, "answered": 9, "rejected": 1, "errors": 0,
             "latency_ms": {"p50": 5.0, "p99": 20.0}, "send_lag_ms": {"p99": 1.0}, "mean_gamma": -4.0}  # fmt: skip
    sim = {"utility": sim_u, "slo_attainment": 1.0}
    return {
        "meta": {"policy": policy, "load": load, "requests": 10, "duration_s": 2.0, "wall_s": 2.5},
        "live": {"all": every},
        "sim": {"noise_free": sim, "noisy": sim},
    }


def test_summary_reads_replays_metrics_and_gpu_samples(tmp_path):
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    (work / "replay_trace_fixed0_x0.5.json").write_text(json.dumps(_replay("fixed:0", 0.5, 80.0, 100.0)))
    # nvidia-smi writes local time, `date +%s` epoch seconds: the same clock either way
    t0 = datetime.strptime("2025/11/24 16:00:00.000", "%Y/%m/%d %H:%M:%S.%f").timestamp()
    (work / "t_fixed0_x0.5.txt").write_text(f"{t0}\n{t0 + 4}\n")
    (work / "metrics_fixed0_x0.5_before.txt").write_text("# HELP x\notas_batch_measured_seconds_sum 1.5\n")
    (work / "metrics_fixed0_x0.5_after.txt").write_text("otas_batch_measured_seconds_sum 3.5\n")
    (work / "gpu_util.csv").write_text(
        "2025/11/24 16:00:01.000, 40\n2025/11/24 16:00:02.000, 60\n2025/11/24 16:00:09.000, 99\nbad line\n"
    )
    live_summary.main([str(work), "--out", str(out)])
    rows = json.loads((out / "live.json").read_text())["rows"]
    (row,) = rows
    assert row["policy"] == "fixed:0" and row["live_over_sim"] == pytest.approx(0.8)
    assert row["busy_share_server"] == pytest.approx(2.0 / 4.0)  # 2 s of batches over a 4 s replay
    assert row["rate_per_s"] == pytest.approx(5.0)
    assert "| fixed:0 | 0.5 |" in (out / "live.md").read_text()
    assert (out / "live.png").stat().st_size > 0


def test_gpu_util_is_none_without_samples(tmp_path):
    assert live_summary.gpu_util(tmp_path / "missing.csv", 0, 1) is None
    (tmp_path / "u.csv").write_text("2025/11/24 16:00:01.000, 40\n")
    assert live_summary.gpu_util(tmp_path / "u.csv", 0, 1) is None  # no sample inside the window


def test_busy_share_is_over_the_replay_alone_when_it_records_its_start(tmp_path):
    """The command around a replay also loads images and simulates: with the replay's own start and
    wall time, the busy share and the device's samples are taken over the replay alone."""
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    t0 = datetime.strptime("2025/11/24 16:00:00.000", "%Y/%m/%d %H:%M:%S.%f").timestamp()
    rep = _replay("otas", 2.0, 90.0, 100.0)
    rep["meta"].update(started_unix=t0 + 3, wall_s=2.0)  # the replay: 3 s into a 10 s command
    (work / "replay_trace_otas_x2.json").write_text(json.dumps(rep))
    (work / "t_otas_x2.txt").write_text(f"{t0}\n{t0 + 10}\n")
    (work / "metrics_otas_x2_before.txt").write_text("otas_batch_measured_seconds_sum 0\n")
    (work / "metrics_otas_x2_after.txt").write_text("otas_batch_measured_seconds_sum 1.8\n")
    (work / "gpu_util.csv").write_text("2025/11/24 16:00:01.000, 0\n2025/11/24 16:00:04.000, 95\n")
    live_summary.main([str(work), "--out", str(out)])
    (row,) = json.loads((out / "live.json").read_text())["rows"]
    assert row["busy_share_server"] == pytest.approx(0.9) and row["gpu_util_smi"] == pytest.approx(95)


def test_busy_share_is_the_devices_own_time_where_the_server_reports_it(tmp_path):
    """Batches planned ahead overlap their measured turns (device start to the loop taking the result
    up), which can sum past the wall time: the device's own time is what the busy share counts."""
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    t0 = datetime.strptime("2025/11/24 16:00:00.000", "%Y/%m/%d %H:%M:%S.%f").timestamp()
    (work / "replay_trace_otas_x2.json").write_text(json.dumps(_replay("otas", 2.0, 90.0, 100.0)))
    (work / "t_otas_x2.txt").write_text(f"{t0}\n{t0 + 2}\n")
    (work / "metrics_otas_x2_before.txt").write_text(
        "otas_batch_measured_seconds_sum 0\notas_batch_device_seconds_sum 0\n"
    )
    (work / "metrics_otas_x2_after.txt").write_text(
        "otas_batch_measured_seconds_sum 2.6\notas_batch_device_seconds_sum 1.5\n"
    )
    live_summary.main([str(work), "--out", str(out)])
    (row,) = json.loads((out / "live.json").read_text())["rows"]
    assert row["busy_share_server"] == pytest.approx(0.75)


def test_rounds_of_one_policy_are_rows_of_their_own(tmp_path):
    """ROUNDS > 1 tags each round's replay `<policy>-r<k>`: one row each, named apart."""
    work, out = tmp_path / "work", tmp_path / "out"
    work.mkdir()
    for k, u in ((1, 90.0), (2, 80.0)):
        (work / f"replay_trace_otas-r{k}_x1.json").write_text(json.dumps(_replay("otas", 1.0, u, 100.0)))
    (work / "replay_trace_fixed-20_x1.json").write_text(json.dumps(_replay("fixed:-20", 1.0, 95.0, 95.0)))
    live_summary.main([str(work), "--out", str(out)])
    rows = json.loads((out / "live.json").read_text())["rows"]
    assert [(r["run"], r["utility_live"]) for r in rows] == [("fixed-20", 95.0), ("otas-r1", 90.0), ("otas-r2", 80.0)]
    text = (out / "live.md").read_text()
    assert "| fixed:-20 | 1 |" in text and "| otas (otas-r1) | 1 |" in text and "| otas (otas-r2) | 1 |" in text
