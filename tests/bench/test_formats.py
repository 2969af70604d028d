"""Request formats of the compared servers and the one scoring: bodies are what each server reads,
answers are read back, and every request lands in exactly one outcome."""

import base64
import json
import math

import numpy as np
import pytest

from otas.bench.formats import FORMATS, make_format, priority_levels, rejected
from otas.bench.replay import summarize, window
from otas.config import default_apps_path, load_apps
from otas.profile.table import Profile
from otas.sim.demo import default_profile_path
from otas.sim.traces import Trace
from otas.types import App

APPS = load_apps(default_apps_path("cpu"))
PNG = base64.b64encode(b"\x89PNG fake")


def test_priority_levels_tightest_slo_first():
    apps = [App("bulk", 2000, 1.0, "blur"), App("chat", 500, 1.0, "novel"), App("pay", 500, 3.0, "lowlight")]
    assert priority_levels(apps) == {"pay": 1, "chat": 2, "bulk": 3}  # equal SLOs: higher utility first


@pytest.mark.parametrize("name", [f for f in FORMATS if f != "otas-uint8"])
def test_bodies_are_json_each_server_reads(name):
    fmt = make_format(name, APPS, "vit")
    body = json.loads(fmt.body(PNG, "lowlight"))
    if name == "otas":
        assert fmt.path == "/v2/models/vit/infer" and body["parameters"] == {"app": "lowlight"}
        assert body["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [1], "data": [PNG.decode()]}]
    elif name == "triton":  # a batch dimension on every input; the priority level of the application
        assert fmt.path == "/v2/models/vit/infer" and body["parameters"] == {"priority": 2}
        ins = {i["name"]: i for i in body["inputs"]}
        assert ins["image"]["data"] == [PNG.decode()] and ins["app"]["data"] == ["lowlight"]
        assert ins["image"]["shape"] == ins["app"]["shape"] == [1, 1]
    else:
        assert fmt.path == "/predict" and body == {"app": "lowlight", "image": PNG.decode()}


def test_raw_pixel_bodies_are_binary_tensors_the_server_reads():
    """otas-uint8: a JSON header whose length the headers name, then exactly the images' pixels, which
    the server's own binary-tensor reader takes back as the same images."""
    from otas.server.http_codec import parse_infer

    rng = np.random.default_rng(0)
    fmt = make_format("otas-uint8", APPS, "vit", size=8)
    imgs = [rng.integers(0, 256, (8, 8, 3), dtype=np.uint8) for _ in range(3)]
    for n in (1, 3):
        body = fmt.body_many([im.tobytes() for im in imgs[:n]], "l\u00f6w}]}light") if n > 1 else fmt.body(
            imgs[0].tobytes(), "l\u00f6w}]}light")  # fmt: skip
        heads = fmt.headers(body)
        k = int(heads["Inference-Header-Content-Length"])
        assert heads["content-type"] == "application/octet-stream" and body[k:] == b"".join(
            i.tobytes() for i in imgs[:n]
        )
        head = json.loads(body[:k])
        assert head["parameters"] == {"app": "l\u00f6w}]}light"}
        assert head["inputs"] == [{"name": "image_uint8", "datatype": "UINT8", "shape": [n, 8, 8, 3],
                                   "parameters": {"binary_data_size": n * 192}}]  # fmt: skip
        req = parse_infer(body, heads["Inference-Header-Content-Length"], 8).request
        assert req.app == "l\u00f6w}]}light" and req.payloads is None
        assert all((a == b).all() for a, b in zip(req.images, imgs[:n], strict=True))
    with pytest.raises(ValueError, match="bytes of pixels"):
        fmt.body_many([imgs[0].tobytes()[:-1], imgs[1].tobytes()], "lowlight")
    assert make_format("otas", APPS, "vit").headers(b"{}") == {"content-type": "application/json"}


def test_answers_read_back():
    outs = {"label": ["cat"], "gamma": [-20], "deadline_met": [True], "latency_ms": [1, 2, 3.5]}
    kserve = {"outputs": [{"name": k, "data": v} for k, v in outs.items()]}
    assert make_format("otas", APPS, "m").parse(200, json.dumps(kserve).encode()) == {
        "label": "cat", "gamma": -20, "server_met": True, "server_ms": 3.5}  # fmt: skip
    triton = {"outputs": [{"name": "label", "data": ["dog"]}, {"name": "gamma", "data": [0]}]}
    assert make_format("triton", APPS, "m").parse(200, json.dumps(triton).encode()) == {"label": "dog", "gamma": 0}
    assert make_format("json", APPS).parse(200, b'{"label": "ship", "gamma": 16}') == {"label": "ship", "gamma": 16}


def test_refusals_keep_the_servers_reason():
    assert make_format("otas", APPS, "m").parse(429, b'{"reason": "queue_full"}') == {"reason": "queue_full"}
    tri = make_format("triton", APPS, "m").parse(503, b'{"error": "Request timeout expired"}')
    assert tri == {"reason": "503: Request timeout expired"}
    assert make_format("json", APPS).parse(503, b"Service unavailable\n") == {"reason": "503: Service unavailable"}
    lit = make_format("json", APPS).parse(504, b'{"detail": "Request timed out"}')
    assert lit == {"reason": "504: Request timed out"}
    assert [rejected(s) for s in (429, 503, 504, 400, 500, 200, -1)] == [True] * 3 + [False] * 4


def test_unreadable_answer_and_bad_format_raise():
    with pytest.raises((ValueError, KeyError)):
        make_format("json", APPS).parse(200, b"not json")
    with pytest.raises(ValueError, match="use one of"):
        make_format("grpc", APPS)
    with pytest.raises(ValueError, match="--model"):
        make_format("triton", APPS)


def test_every_request_counted_once():
    """sent = answered + rejected + errors + lost, per application and in total; goodput and utility
    count only answers within the SLO, at the profile's accuracy for the γ served."""
    prof = Profile.load(default_profile_path())
    names = ["novel", "novel", "lowlight", "lowlight", "blur", "blur"]
    trace = Trace("t", np.arange(6) * 1000.0, names)  # 5 s long
    recs = [
        {"status": 200, "latency_ms": 100.0, "label": "a", "gamma": 0, "lag_ms": 1.0},  # on time, correct
        {"status": 200, "latency_ms": 900.0, "label": "a", "gamma": 0, "lag_ms": 1.0},  # late (SLO 500)
        {"status": 503, "reason": "503: Request timeout expired", "lag_ms": 1.0},
        {"status": 200, "latency_ms": 200.0, "label": "x", "gamma": -20, "lag_ms": 1.0},  # on time, wrong
        {"status": 500, "reason": "500: boom", "lag_ms": 1.0},
        {"status": -1, "reason": "ServerDisconnectedError", "lag_ms": 1.0},
    ]
    rows = summarize(recs, trace, APPS, ["a", "a", "b", "b", "c", "c"], prof)
    a = rows["all"]
    assert (a["sent"], a["answered"], a["rejected"], a["errors"], a["lost"]) == (6, 3, 1, 1, 1)
    assert a["sent"] == a["answered"] + a["rejected"] + a["errors"] + a["lost"]
    assert a["on_time"] == 2 and a["goodput_per_s"] == pytest.approx(2 / 5)
    assert a["reject_reasons"] == {"503: Request timeout expired": 1} and a["error_examples"] == [
        "500: boom", "ServerDisconnectedError"]  # fmt: skip
    u = {x.name: x.utility for x in APPS}
    expect = u["novel"] * prof.acc("novel", 0) + u["lowlight"] * prof.acc("lowlight", -20)
    assert a["utility_expected"] == pytest.approx(expect) and a["utility_realized"] == u["novel"]
    assert rows["novel"]["slo_attainment"] == 0.5 and rows["blur"]["answered"] == 0
    assert math.isnan(rows["blur"]["latency_ms"]["p50"])
    tl = a["timeline"]  # when each request arrived, and whether it was answered within its SLO
    assert len(tl["start_ms"]) == 50 and tl["start_ms"][0] == 0.0
    assert {k: sum(v) for k, v in tl["sent"].items()} == {"novel": 2, "lowlight": 2, "blur": 2}
    assert {k: sum(v) for k, v in tl["on_time"].items()} == {"novel": 1, "lowlight": 1, "blur": 0}
    assert tl["on_time"]["novel"][0] == 1 and tl["sent"]["novel"][:11] == [1] + [0] * 9 + [1]


def test_window_is_a_prefix_of_the_scaled_trace():
    prof = Profile.load(default_profile_path())
    full, cap = window("poisson", APPS, prof, 64, 1.0, 0, 0.0, seed=3)
    short, cap2 = window("poisson", APPS, prof, 64, 1.0, 0, 5.0, seed=3)
    assert cap == cap2 and 0 < len(short) < len(full) and short.arrival_ms[-1] <= 5000.0
    assert np.array_equal(short.arrival_ms, full.arrival_ms[: len(short)]) and short.apps == full.apps[: len(short)]
    assert len(window("poisson", APPS, prof, 64, 1.0, 10, 5.0, seed=3)[0]) == 10
    faster, _ = window("poisson", APPS, prof, 64, 2.0, 0, 5.0, seed=3)
    assert len(faster) > 1.5 * len(short)  # twice the load: about twice the requests in the same seconds
    with pytest.raises(ValueError, match="load"):
        window("poisson", APPS, prof, 64, 0.0, 0, 5.0, seed=3)


def test_several_images_in_one_otas_request_and_their_answers():
    fmt = make_format("otas", APPS, "m")
    pngs = [PNG, base64.b64encode(b"other")]
    body = json.loads(fmt.body_many(pngs, "blur"))
    assert body["parameters"] == {"app": "blur"}
    assert body["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [2], "data": [p.decode() for p in pngs]}]
    assert fmt.body_many(pngs[:1], "blur") == fmt.body(PNG, "blur")
    outs = {"label": ["cat", "dog"], "gamma": [-20, -20], "deadline_met": [True, False]}
    outs["latency_ms"] = [1, 2, 3, 4, 5, 6]  # (2, 3) flattened: queue, exec, total per image
    raw = json.dumps({"outputs": [{"name": k, "data": v} for k, v in outs.items()]}).encode()
    assert fmt.parse_many(200, raw, 2) == [
        {"label": "cat", "gamma": -20, "server_met": True, "server_ms": 3},
        {"label": "dog", "gamma": -20, "server_met": False, "server_ms": 6},
    ]
    assert fmt.parse_many(429, b'{"reason": "queue_full"}', 3) == [{"reason": "queue_full"}] * 3
    with pytest.raises(ValueError, match="holds 2 images, the request 3"):
        fmt.parse_many(200, raw, 3)
    for other in ("triton", "json"):
        with pytest.raises(ValueError, match="one image per request"):
            make_format(other, APPS, "m").body_many(pngs, "blur")


def test_a_repeated_window_plays_the_scaled_trace_back_to_back():
    prof = Profile.load(default_profile_path())
    one, cap = window("poisson", APPS, prof, 64, 1.0, 0, 0.0, seed=3)
    three, _ = window("poisson", APPS, prof, 64, 1.0, 0, 0.0, seed=3, repeat=3)
    n = len(one)
    assert len(three) == 3 * n and three.apps == one.apps * 3
    assert np.all(np.diff(three.arrival_ms) > 0)  # strictly later: each copy after the last of the one before
    gap = three.arrival_ms[n] - one.arrival_ms[-1]
    assert np.allclose(three.arrival_ms[n : 2 * n] - gap - one.arrival_ms[-1], one.arrival_ms)
    assert abs(len(three) / (three.duration_ms / 1e3) / (len(one) / (one.duration_ms / 1e3)) - 1) < 0.01  # same rate
    assert len(window("poisson", APPS, prof, 64, 1.0, 0, 0.5 * three.duration_ms / 1e3, 3, repeat=3)[0]) < 2 * n
    for bad in (0, 1001):
        with pytest.raises(ValueError, match="--repeat"):
            window("poisson", APPS, prof, 64, 1.0, 0, 0.0, seed=3, repeat=bad)
