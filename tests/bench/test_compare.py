"""The comparison over servers: each (server, variant, load) at its best run, otas over the best peer."""

import pytest

from otas.bench.compare import GAMMA0, HINDSIGHT, best_runs, markdown, plot, ratios, run_record


def live(utility: float, slo: float = 0.9) -> dict:
    lat = {"p50": 100.0, "p90": 200.0, "p99": 300.0, "max": 400.0}
    row = {"sent": 10, "answered": 9, "rejected": 1, "errors": 0, "lost": 0, "utility_expected": utility,
           "slo_attainment": slo, "goodput_per_s": 2.0, "latency_ms": lat}  # fmt: skip
    return {"all": row, "novel": {"slo_attainment": slo}, "blur": {"slo_attainment": 1.0}}


RUNS = [
    run_record("otas", "policy otas", "B_max 64", None, 1.0, live(12.0)),
    run_record("triton", GAMMA0, "batch 4", 0, 1.0, live(5.0)),
    run_record("triton", HINDSIGHT, "batch 4", -20, 1.0, live(10.0)),
    run_record("triton", HINDSIGHT, "batch 4", -48, 1.0, live(8.0)),  # a worse candidate γ: not reported
    run_record("ray", GAMMA0, "batch 16", 0, 1.0, live(4.0)),
    run_record("otas", "policy otas", "B_max 64", None, 2.0, live(9.0)),
    run_record("ray", HINDSIGHT, "batch 16", -48, 2.0, live(9.5)),
]


def test_best_run_per_server_variant_load():
    best = best_runs(RUNS)
    assert len(best) == 6 and best["triton", HINDSIGHT, 1.0]["gamma"] == -20


def test_ratio_against_the_best_peer_at_each_load():
    q = ratios(RUNS)
    assert q[1.0]["best_peer"] == f"triton {HINDSIGHT}" and q[1.0]["ratio"] == pytest.approx(1.2)
    assert q[2.0]["ratio"] == pytest.approx(9.0 / 9.5)  # a loss is reported as one


def test_table_and_plot(tmp_path):
    table = markdown(RUNS)
    rows = [line for line in table.splitlines() if line.startswith("| otas") or line.startswith("| triton")]
    assert rows[0].startswith("| otas | policy otas |") and "| adaptive |" in rows[0]
    assert "| 1 | 12.0 | triton best fixed γ | 10.0 | 1.20 |" in table
    assert not any("| -48 | 1 |" in r for r in table.split("\n\n")[0].splitlines())  # the worse candidate
    assert "SLO novel" in table and "SLO blur" in table
    plot(RUNS, tmp_path / "u.png")
    assert (tmp_path / "u.png").stat().st_size > 1000
