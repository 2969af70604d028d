from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from otas.config import SchedulerConfig
from otas.sim import workloads as wl
from otas.sim.simulator import run
from otas.sim.traces import at_load, capacity_per_s
from otas.types import Outcome
from tests.factories import make_profile
from tests.torchfree import assert_imports_without_torch

REPO = Path(__file__).resolve().parents[2]
AZURE = REPO / "../shared/data/traces/AzureLLMInferenceTrace_conv.csv"
TASKS = ["blur", "lowlight", "novel", "source"]
DRAWN = [wl.draw(s, TASKS) for s in range(200)]


def test_draw_is_deterministic_per_seed():
    assert [wl.draw(s, TASKS) for s in range(20)] == DRAWN[:20]
    assert len({(w.apps, w.mix) for w in DRAWN}) == len(DRAWN)  # seeds differ
    w = wl.draw(7, TASKS, n_requests=(300, 400))  # seed 7: poisson
    apps = w.apps_for(make_profile())
    a, b = w.base_trace(apps), w.base_trace(apps)
    assert np.array_equal(a.arrival_ms, b.arrival_ms) and a.apps == b.apps


def test_draw_respects_the_ranges():
    ks = Counter(len(w.apps) for w in DRAWN)
    assert set(ks) == {2, 3, 4, 5, 6}
    for w in DRAWN:
        mults = [a.slo_mult for a in w.apps]
        assert mults == sorted(mults) and [a.name for a in w.apps] == [f"a{i}" for i in range(len(w.apps))]
        assert 2.0 - 1e-6 <= w.spread <= 20.0 + 1e-6
        assert 2.0 - 1e-6 <= mults[0] <= 8.0 + 1e-6
        assert all(0.5 - 1e-6 <= a.utility <= 5.0 + 1e-6 for a in w.apps)
        assert {a.task for a in w.apps} <= set(TASKS)
        assert len(w.mix) == len(w.apps) and abs(sum(w.mix) - 1) < 1e-5 and min(w.mix) > 0
        assert 3000 <= w.n <= 6000 and 0 <= w.window <= 1
        assert w.mapping == "random" or w.trace == "azure"
        f = w.features()
        assert 1.0 <= f["min_gap"] <= w.spread and f["n_apps"] == len(w.apps) and f["tight_share"] == w.mix[0]
    assert any(a.task == "source" for w in DRAWN for a in w.apps)
    assert {w.mapping for w in DRAWN if w.trace == "azure"} == {"random", "tokens"}
    assert max(w.spread for w in DRAWN) > 15 and min(w.spread for w in DRAWN) < 2.5
    # every trace kind, equally often in the tuning and the held-out split
    per = Counter((w.trace, w.split) for w in DRAWN)
    assert set(per.values()) == {20} and {t for t, _ in per} == set(wl.TRACE_KINDS)


def test_apps_for_scales_slos_by_the_reference_latency():
    p = make_profile()
    w = DRAWN[3]
    apps = w.apps_for(p)
    assert wl.reference_ms(p) == p.lat(0, 1)
    assert [a.slo_ms for a in apps] == pytest.approx([a.slo_mult * p.lat(0, 1) for a in w.apps])
    assert min(a.slo_ms for a in apps) >= 2 * p.lat(0, 1) - 1e-9  # the tightest is feasible at γ = 0
    with pytest.raises(ValueError, match="serves no task"):
        wl.draw(0, ["nope"]).apps_for(p)


def test_synthetic_trace_follows_the_mix():
    w = next(w for w in DRAWN if w.trace == "mmpp")
    apps = w.apps_for(make_profile())
    tr = w.base_trace(apps)
    share = np.array([tr.apps.count(a.name) for a in apps]) / len(tr)
    assert share == pytest.approx(w.mix, abs=0.03)
    assert abs(len(tr) - w.n) < 0.3 * w.n  # about n: mmpp counts vary with its ~40 dwell periods


@pytest.mark.skipif(not AZURE.is_file(), reason=f"Azure trace not found at {AZURE}")
def test_azure_window_and_mappings():
    from otas.sim.traces import _read_csv

    _, tokens = _read_csv(AZURE.resolve())
    for w in [w for w in DRAWN if w.trace == "azure"][:12]:
        apps = w.apps_for(make_profile())
        tr = w.base_trace(apps, AZURE)
        assert len(tr) == w.n and tr.arrival_ms[0] == 0 and np.all(np.diff(tr.arrival_ms) >= 0)
        share = np.array([tr.apps.count(a.name) for a in apps]) / len(tr)
        assert share == pytest.approx(w.mix, abs=0.03 if w.mapping == "random" else 2 / w.n)
        if w.mapping == "tokens":  # shortest prompts to the tightest application
            start = int(tr.name.split("[")[1].split(":")[0])
            tok = tokens[start : start + w.n]
            first = np.array([a == "a0" for a in tr.apps])
            assert tok[first].max() <= tok[~first].min()


def test_every_policy_ends_every_query_once():
    from otas.bench.workloads import policy_list
    from otas.sim.cli import online_profiles

    profs = [make_profile(), make_profile("vit_small_handmade", (200.0, 1200.0, 8500.0), acc_shift=0.04)]
    for seed in (2, 5, 6):  # poisson, mmpp, diurnal
        w = wl.draw(seed, TASKS, n_requests=(300, 400))
        apps = w.apps_for(profs[0])
        cap = capacity_per_s(profs[0], apps, 64)
        tr = at_load(w.base_trace(apps), 2.0, cap)
        names = policy_list(profs, None, ("otas", "otas-paper"))
        assert "otas" in names and "oracle" not in names
        assert {"model-switch", "model-switch:resident"} <= set(names)
        for name in names:
            res = run(tr, apps, online_profiles(name, profs), name, SchedulerConfig())
            counts = Counter(res.outcome)
            assert None not in counts and sum(counts.values()) == len(tr)
            assert sum(b for _, b, _, _ in res.batches) == counts[Outcome.SERVED]


def test_imports_without_torch():
    assert_imports_without_torch(
        "otas.sim.workloads",
        "otas.bench.workloads",
        "otas.bench.workloads_report",
        "otas.bench.workloads_plot",
        "otas.bench.cli",
    )
