import json
import math
from pathlib import Path

import pytest
from rich.console import Console

from otas.bench import workloads_report as rep
from otas.bench.workloads import ProfileSet, available, main, policy_list
from otas.sched.policies import POLICY_NAMES
from tests.factories import make_profile

DATA = Path(__file__).resolve().parents[1] / "data"


def _cell(seed: int, load: float, utils: dict[str, float], oracle: float, slo_a0: float = 0.5) -> dict:
    return {
        "seed": seed,
        "split": "tuning" if seed % 2 == 0 else "held-out",
        "set": "dev",
        "load": load,
        "tightest_app": "a0",
        "oracle": oracle,
        "policies": {p: {"utility": u, "slo_per_app": {"a0": slo_a0, "a1": 1.0}} for p, u in utils.items()},
    }


# (seed, load): otas, fixed:0, edf; ratios otas / best other in the comments
CELLS = [
    _cell(0, 0.5, {"otas": 10, "fixed:0": 8, "edf": 5, "otas-greedy": 4}, 12),  # 1.25 (fixed:0), greedy 0.5
    _cell(0, 2.0, {"otas": 6, "fixed:0": 3, "edf": 4}, 8),  # 1.5 (edf)
    _cell(1, 0.5, {"otas": 9, "fixed:0": 10, "edf": 2}, 10),  # 0.9
    _cell(1, 2.0, {"otas": 2, "fixed:0": 8, "edf": 1}, 16),  # 0.25
    _cell(2, 2.0, {"otas": 0, "fixed:0": 0, "edf": 0}, 0),  # 1 (nothing to earn)
    _cell(3, 2.0, {"otas": 5, "fixed:0": 0, "edf": 0}, 5),  # inf
]


def test_ratios_and_best_other():
    views = [rep.cell_view(c, ["otas", "otas-greedy", "otas-paper"]) for c in CELLS]
    assert [v["best_other"] for v in views[:4]] == ["fixed:0", "edf", "fixed:0", "fixed:0"]
    assert [v["ratio"]["otas"] for v in views] == pytest.approx([1.25, 1.5, 0.9, 0.25, 1.0, math.inf])
    assert views[0]["ratio"]["otas-greedy"] == 0.5 and "otas-greedy" not in views[1]["ratio"]
    assert "otas-paper" not in views[0]["ratio"]  # not run: left out, not an error
    assert views[0]["ratio"]["oracle"] == 1.5 and views[3]["vs_oracle"]["otas"] == 2 / 16
    assert views[1]["vs_oracle"]["edf"] == 0.5 and views[0]["tight_slo"] == {
        "otas": 0.5,
        "otas-greedy": 0.5,
        "fixed:0": 0.5,
    }


def test_stats_and_geometric_mean():
    s = rep.stats([1.5, 0.25, 1.0, math.inf])
    assert s["n"] == 3 and s["n_inf"] == 1 and s["min"] == 0.25 and s["median"] == 1.0
    assert s["p10"] == pytest.approx(0.25 + 0.2 * 0.75)  # linear between the two lowest
    assert s["geomean"] == pytest.approx(0.375 ** (1 / 3), rel=1e-5) and s["wins"] == pytest.approx(2 / 3, rel=1e-5)
    assert rep.geomean([2.0, 8.0]) == pytest.approx(4.0) and rep.geomean([0.0, 3.0]) == 0.0
    assert rep.stats([math.inf]) == {"n": 0, "n_inf": 1}


def test_summary_by_split_and_load():
    views = [rep.cell_view(c, ["otas"]) for c in CELLS]
    summ = rep.summarise(views, ["otas"], [0.5, 2.0, 3.0])["dev"]
    assert set(summ) == {"all", "tuning", "held-out"} and set(summ["all"]) == {"0.5", "2", "3", "≥1"}
    assert summ["all"]["2"]["otas"]["geomean"] == pytest.approx(0.375 ** (1 / 3), rel=1e-5)
    assert summ["all"]["≥1"]["otas"] == summ["all"]["2"]["otas"]  # no cell at load 3
    assert summ["tuning"]["2"]["otas"]["geomean"] == pytest.approx(1.5**0.5, rel=1e-5)  # seeds 0, 2
    assert summ["held-out"]["2"]["otas"]["n"] == 1 and summ["held-out"]["2"]["otas"]["n_inf"] == 1  # seeds 1, 3
    assert summ["held-out"]["0.5"]["otas"]["median"] == 0.9 and summ["tuning"]["0.5"]["otas"]["min"] == 1.25
    assert summ["all"]["0.5"]["oracle"]["median"] == pytest.approx((1.5 + 1.0) / 2)
    assert summ["all"]["0.5"]["otas"]["vs_oracle_median"] == pytest.approx((10 / 12 + 0.9) / 2, rel=1e-5)
    feats = {s: {"trace": "poisson" if s < 2 else "step"} | dict.fromkeys(rep.FEATURES[2:], 1.0) for s in range(4)}
    by = rep.by_feature(views, "otas", feats)["dev"]
    assert by["all"]["trace"]["poisson"]["n"] == 4 and by["all"]["trace"]["step"]["n"] == 1
    assert by["all"]["load"]["2"]["n_inf"] == 1 and by["≥1"]["trace"]["poisson"]["median"] == pytest.approx(0.875)
    assert by["<1"]["trace"]["poisson"]["geomean"] == pytest.approx((1.25 * 0.9) ** 0.5, rel=1e-5)
    assert list(by["all"]["spread"]) == ["[2,4)"] and list(by["all"]["tight_share"]) == ["[0.4,1]"]  # closed


def test_profile_sets_and_policy_lists():
    s = ProfileSet.parse("h100=a.json,b.json@256")
    assert s == ProfileSet("h100", ("a.json", "b.json"), 256) and ProfileSet.parse("x=a.json").max_batch == 64
    with pytest.raises(ValueError, match="NAME=PATH"):
        ProfileSet.parse("a.json")
    assert available("otas") and available("fixed:0") and not available("nope")
    assert available("otas-paper") == ("otas-paper" in POLICY_NAMES)
    one = [make_profile()]
    names = policy_list(one, None, ("otas", "otas-paper"))
    assert names[0] == "otas" and "model-switch" not in names and ("otas-paper" in names) == available("otas-paper")
    assert policy_list(one, ["otas", "fixed:0", "fixed:-48"], ()) == ["otas", "fixed:0"]  # γ not in the profile
    with pytest.raises(ValueError, match="unknown policies"):
        policy_list(one, ["otas", "bogus"], ())


def test_suite_end_to_end(tmp_path):
    dev = ProfileSet("dev", (str(DATA / "handmade_tiny__cpu.json"), str(DATA / "handmade_small__cpu.json")), 64)
    result = main(
        n=2,
        first_seed=2,  # poisson workloads: no trace file needed
        loads=[0.5, 2.0],
        sets=[dev],
        policies=["otas", "fixed:0", "fixed:-20", "edf", "model-switch"],
        compare=["otas", "otas-paper"],
        jobs=2,
        out=tmp_path,
        tag="t",
        azure=None,
        console=Console(file=open(tmp_path / "log.txt", "w")),  # noqa: SIM115
        n_requests=(200, 300),
    )
    data = json.loads((tmp_path / "t.json").read_text())
    assert (tmp_path / "t.png").stat().st_size > 10_000
    assert data["meta"]["split"].startswith("seed % 2") and data["meta"]["headline"] == ["otas"]
    assert [w["split"] for w in data["workloads"]] == ["tuning", "held-out"]
    assert len(data["cells"]) == len(data["per_cell"]) == 4
    assert data["meta"]["generator"]["n_requests"] == [200, 300]  # the range this run drew from
    assert all(200 <= w["n"] <= 300 for w in data["workloads"])
    for cell, view in zip(data["cells"], data["per_cell"], strict=True):
        u = {p: v["utility"] for p, v in cell["policies"].items()}
        best = max(u[p] for p in ("fixed:0", "fixed:-20", "edf", "model-switch"))
        assert view["ratio"]["otas"] == pytest.approx(rep.ratio(u["otas"], best), rel=1e-5)
        assert all(u[p] <= cell["oracle"] * (1 + 1e-6) for p in u)  # the bound holds
    assert set(data["summary"]["dev"]) == {"all", "tuning", "held-out"}
    assert result["worst"]["otas"]["dev"][0]["ratio"] == min(v["ratio"]["otas"] for v in data["per_cell"])


@pytest.mark.parametrize("bad", ["6000", "a,b", "0,10", "20,10", "1,2,3"])
def test_cli_refuses_a_bad_request_range(bad):
    from typer.testing import CliRunner

    from otas.bench.cli import bench_app

    out = CliRunner().invoke(bench_app, ["workloads", "--requests", bad, "--out", "/nonexistent/never"])
    assert out.exit_code == 2 and "--requests" in out.output


def test_the_default_profile_sets_are_found_from_any_directory(tmp_path, monkeypatch):
    """The default sets name the repository's profiles/ relatively: run elsewhere, they are found in the
    checkout the module runs from (a path that exists where it is given is taken as it is)."""
    from otas.bench.workloads import DEFAULT_SETS, ProfileSet, _load_profiles, _located

    monkeypatch.chdir(tmp_path)
    assert [p.model for p in DEFAULT_SETS[0].profiles()]
    name = DEFAULT_SETS[0].paths[0]  # in the checkout, and (below) here too: the one here wins
    (tmp_path / "profiles").mkdir()
    (tmp_path / name).write_text("{}")
    assert _located(name) == name
    assert _located("profiles/nowhere.json") == "profiles/nowhere.json"  # missing everywhere: its own error later
    (tmp_path / name).unlink()
    _load_profiles.cache_clear()  # (an earlier test may have read the same relative path from the checkout)
    with pytest.raises(ValueError, match="does not exist"):  # a user's set is read as given, never the checkout's
        ProfileSet.parse(f"mine={name}@64").profiles()
