"""The load generator against the real server: counts add up, the simulator's prediction sits beside."""

import json

import pytest
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


def test_coalescing_puts_each_arrival_in_one_request_of_its_application_within_the_window():
    import numpy as np

    from otas.bench.replay import coalesce
    from otas.sim.traces import Trace

    rng = np.random.default_rng(0)
    for window_ms, most in ((0.5, 256), (2.0, 4), (50.0, 3), (1e-3, 256)):
        t = np.sort(rng.exponential(0.3, 2000).cumsum())
        apps = [("a", "b", "c")[k] for k in rng.integers(0, 3, len(t))]
        g = coalesce(Trace("x", t, apps), window_ms, most)
        assert sorted(i for m in g.members for i in m) == list(range(len(t)))  # each arrival once
        assert g.send_ms == sorted(g.send_ms)
        for send, m in zip(g.send_ms, g.members, strict=True):
            assert len({apps[i] for i in m}) == 1 and 1 <= len(m) <= most and m == sorted(m)
            assert t[m[-1]] <= send <= t[m[0]] + window_ms + 1e-9  # sent after its last, within the first's window
        if window_ms >= 2:
            assert len(g.members) < len(t) / 2  # it does coalesce
    with pytest.raises(ValueError, match="finite window"):
        coalesce(Trace("x", np.zeros(1), ["a"]), 0.0)


def test_replay_coalesced_scores_every_arrival_from_its_own_arrival(paced, cifar_archive, tmp_path):
    """From two sender processes (tests/bench/test_openloop.py checks their split in detail)."""
    with serving(paced, paced_profile()) as (srv, _):
        res = replay(srv.url, "poisson", None, 1.0, 120, 0, tmp_path, "t", cifar_archive, Console(width=200),
                     coalesce_ms=30.0, senders=2)  # fmt: skip
    live, meta = res["live"]["all"], res["meta"]
    assert live["sent"] == 120 == live["answered"] + live["rejected"] + live["errors"] and live["errors"] == 0
    assert meta["coalesce_ms"] == 30.0 and meta["http_requests"] < 120 and meta["senders"] == 2
    assert live["send_lag_ms"]["max"] > 5  # an arrival waits for its request's window: that counts against it
    assert live["slo_attainment"] > 0.8


def test_replay_raw_pixels_coalesced_answers_every_arrival_as_png_does(paced, cifar_archive, tmp_path):
    """otas-uint8 sends the pixels the server would decode from each PNG: the same workload, answered
    and scored alike (a random model: the labels need not be right, but every arrival is answered)."""
    with serving(paced, paced_profile()) as (srv, _):
        res = {
            fmt: replay(
                srv.url,
                "poisson",
                None,
                1.0,
                120,
                0,
                tmp_path / fmt,
                "t",
                cifar_archive,
                Console(width=200),
                fmt_name=fmt,
                coalesce_ms=30.0,
            )  # fmt: skip
            for fmt in ("otas", "otas-uint8")
        }
    for r in res.values():
        live = r["live"]["all"]
        assert live["sent"] == 120 == live["answered"] + live["rejected"] + live["errors"] and live["errors"] == 0
        assert r["meta"]["http_requests"] < 120 and live["slo_attainment"] > 0.8
    assert res["otas-uint8"]["meta"]["format"] == "otas-uint8"


def test_a_replay_that_cannot_be_run_or_written_is_refused_before_it_starts(paced, tmp_path):
    """Each before a request is sent: an output that cannot be written (a finished replay was once
    lost to it), a gateway window past every SLO (it slept for ~forever), applications the server does
    not serve (every request a 404, scored as if served), a URL that is no otas server."""
    import http.server
    import threading

    (tmp_path / "afile").write_text("x")
    c = Console(width=200)
    with serving(paced, paced_profile()) as (srv, _):
        bad = {"--out": dict(out=tmp_path / "afile"), "--tag": dict(tag="a/b")}
        for what, kw in bad.items():
            args = {"out": tmp_path, "tag": "t", **kw}
            with pytest.raises(ValueError, match=what):
                replay(srv.url, "poisson", None, 0.5, 20, 0, args["out"], args["tag"], None, c)
        with pytest.raises(ValueError, match="past every"):
            replay(srv.url, "poisson", None, 0.5, 20, 0, tmp_path, "t", None, c, coalesce_ms=1e300)
        apps = tmp_path / "apps.yaml"
        apps.write_text("apps:\n  - {name: zzz, slo_ms: 500, utility: 1, task: novel}\n")
        with pytest.raises(ValueError, match=r"\['zzz'\] are not served"):
            replay(srv.url, "poisson", apps, 0.5, 20, 0, tmp_path, "t", None, c)

    for body in (b"[1]", b"{}", b"not json"):

        class Fake(http.server.BaseHTTPRequestHandler):
            def do_GET(self, body=body):  # noqa: N802
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        fake = http.server.HTTPServer(("127.0.0.1", 0), Fake)
        threading.Thread(target=fake.serve_forever, daemon=True).start()
        try:
            with pytest.raises(ValueError, match="v1/config"):
                replay(f"http://127.0.0.1:{fake.server_port}", "poisson", None, 0.5, 20, 0, tmp_path, "t", None, c)
        finally:
            fake.shutdown()
    assert not list(tmp_path.glob("replay_*"))
