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
