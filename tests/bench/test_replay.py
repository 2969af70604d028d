"""The load generator against the real server: counts add up, the simulator's prediction sits beside."""

import json

from rich.console import Console

from otas.bench.replay import main as replay
from otas.bench.report import summary
from tests.server.helpers import paced_profile, serving


def test_replay_counts_and_prediction(paced, cifar_archive, tmp_path):
    with serving(paced, paced_profile()) as (srv, _):
        res = replay(srv.url, "poisson", None, 0.5, 80, 0, tmp_path, "t", cifar_archive, Console(width=200))
    live = res["live"]["all"]
    assert live["sent"] == 80 == live["answered"] + live["rejected"] + live["errors"] and live["errors"] == 0
    assert live["slo_attainment"] > 0.9 and 0 <= live["accuracy_answered"] <= 1  # a random model: chance-level
    sim = res["sim"]["noise_free"]
    assert sim["requests"] == 80 and abs(live["utility_expected"] - sim["utility"]) / sim["utility"] < 0.15
    files = sorted(tmp_path.glob("replay_*"))
    assert [f.suffix for f in files] == [".json", ".png"]
    assert json.loads(files[0].read_text())["meta"]["policy"] == "otas"
    assert "| otas | poisson × 0.5 | 80 |" in summary([files[0]])
