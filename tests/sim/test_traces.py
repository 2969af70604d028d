from pathlib import Path

import numpy as np
import pytest

from otas.sim.traces import load_csv, make_trace, scale_to_rate, synthetic
from tests.factories import make_apps

APPS = make_apps()
AZURE = Path(__file__).resolve().parents[2] / "../shared/data/traces/AzureLLMInferenceTrace_conv.csv"


@pytest.mark.skipif(not AZURE.is_file(), reason=f"Azure trace not found at {AZURE}")
def test_azure_trace_and_token_mapping():
    tr = load_csv(AZURE, APPS)
    assert len(tr) == 19_366 and tr.arrival_ms[0] == 0.0 and np.all(np.diff(tr.arrival_ms) >= 0)
    assert 3.5e6 < tr.duration_ms < 3.7e6  # one hour
    counts = {a.name: tr.apps.count(a.name) for a in APPS}
    assert max(counts.values()) - min(counts.values()) <= 1  # equal-count token bins
    assert load_csv(AZURE, APPS).apps == tr.apps  # deterministic


def test_time_scaling_sets_rate():
    tr = synthetic("poisson", APPS, n=2000, seed=0)
    fast = scale_to_rate(tr, 50.0)
    rate = (len(fast) - 1) / fast.duration_ms * 1000.0
    assert rate == pytest.approx(50.0)
    assert fast.apps == tr.apps


@pytest.mark.parametrize("kind", ["poisson", "step", "diurnal", "mmpp"])
def test_synthetic_shapes(kind):
    tr = synthetic(kind, APPS, n=6000, seed=1)
    assert 4000 < len(tr) < 8000 and np.all(np.diff(tr.arrival_ms) >= 0)
    if kind == "step":  # middle third runs three times as fast as the first
        t = tr.arrival_ms / tr.duration_ms
        assert ((t > 1 / 3) & (t < 2 / 3)).sum() > 2.3 * (t < 1 / 3).sum()


def test_bad_trace_names():
    with pytest.raises(ValueError, match="does not exist"):
        make_trace("nope.csv", APPS, 1.0, 10.0)
    with pytest.raises(ValueError, match="load="):
        make_trace("poisson", APPS, 0.0, 10.0)


@pytest.mark.parametrize("tz", ["UTC", "America/New_York", "Asia/Kolkata"])
def test_csv_times_are_utc_whatever_the_hosts_time_zone(tmp_path, tz, monkeypatch):
    """Naive TIMESTAMPs are UTC: a trace crossing a daylight-saving change has the same arrivals on
    every host (read in local time, New York lost the hour between 02:00 and 03:00)."""
    import time

    rows = ["2023-03-12 01:58:00.0", "2023-03-12 01:59:00.0", "2023-03-12 01:59:30.0", "2023-03-12 03:00:00.0",
            "2023-03-12 03:00:30.25"]  # fmt: skip
    path = tmp_path / f"dst_{tz.replace('/', '_')}.csv"
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + "".join(f"{r},10,1\n" for r in rows))
    monkeypatch.setenv("TZ", tz)
    time.tzset()
    try:
        got = load_csv(path, APPS).arrival_ms
    finally:
        monkeypatch.undo()
        time.tzset()
    assert got.tolist() == [0.0, 60_000.0, 90_000.0, 3_720_000.0, 3_750_250.0]


def test_a_trace_at_one_instant_has_no_rate_to_scale():
    tr = synthetic("poisson", APPS, n=5, seed=0)
    tr.arrival_ms[:] = 0.0
    with pytest.raises(ValueError, match="one instant"):
        scale_to_rate(tr, 10.0)


def test_a_short_csv_row_is_a_clear_error(tmp_path):
    """A row with fewer fields than the header (DictReader fills them with None) names the row."""
    p = tmp_path / "short.csv"
    p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:46.6\n2023-11-16 18:15:47.6,3,1\n")
    with pytest.raises(ValueError, match="bad row .*fields missing"):
        load_csv(p, APPS)


def test_iso_times_with_a_fraction_and_a_zone_are_read(tmp_path):
    """A fraction of a second then a zone (`...46.5Z`, `...46.25+01:00`) is ISO 8601 as it is without
    either; each row's own zone counts."""
    rows = ["2023-11-16T18:15:46Z", "2023-11-16T18:15:46.5Z", "2023-11-16T19:15:47.25+01:00", "2023-11-16 18:15:48"]
    path = tmp_path / "iso.csv"
    path.write_text("TIMESTAMP,ContextTokens\n" + "".join(f"{r},10\n" for r in rows))
    assert load_csv(path, APPS).arrival_ms.tolist() == [0.0, 500.0, 1250.0, 2000.0]
