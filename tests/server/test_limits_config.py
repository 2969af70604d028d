"""The limits are knobs of the one config tree (`HttpConfig`, `EngineConfig`), validated with the bad
value and the fix, and set from `otas serve`, which refuses a bad one before starting."""

import pytest
from typer.testing import CliRunner

from otas.cli import app
from otas.config import EngineConfig, HttpConfig

BAD_HTTP = [
    ("max_connections", 0), ("max_connections", 1.5), ("max_inflight_mb", 4.0), ("header_timeout_s", 0),
    ("body_timeout_s", -1), ("keep_alive_s", float("inf")), ("max_header_kb", 0), ("max_header_kb", 4096),
    ("drain_s", -0.5), ("json_workers", -1), ("json_workers", 10_000), ("max_body_mb", 1024),
    ("max_body_mb", float("inf")), ("max_body_mb", float("nan")),
]  # fmt: skip
BAD_ENGINE = [
    ("decode_queue", 0), ("max_image_side", 0), ("max_image_pixels", -4), ("max_image_aspect", 0.9),
    ("image_formats", ("PNG", "NOPE")), ("image_formats", ()), ("image_formats", ("GIF",)),
    ("image_formats", ("PNG", "BMP")), ("image_formats", ("TIFF",)), ("torch_threads", -1),
    ("torch_threads", True), ("torch_threads", 1.5), ("decode_workers", 10_000), ("switch_interval_ms", -1),
    ("switch_interval_ms", float("nan")), ("switch_interval_ms", 1e9), ("switch_interval_ms", "1"),
]  # fmt: skip


@pytest.mark.parametrize("field,value", BAD_HTTP)
def test_http_limits_are_validated(field, value):
    with pytest.raises(ValueError, match=field):
        HttpConfig(**{field: value})


@pytest.mark.parametrize("field,value", BAD_ENGINE)
def test_decode_limits_are_validated(field, value):
    with pytest.raises(ValueError, match="image formats" if field == "image_formats" else field):
        EngineConfig(**{field: value})


def test_inflight_must_be_finite():
    with pytest.raises(ValueError, match="max_inflight_mb"):
        HttpConfig(max_inflight_mb=float("inf"))


@pytest.mark.parametrize("host", ["999.1.1.1", "no.such.host.invalid", "8.8.8.8", "x" * 300])
def test_a_host_this_machine_cannot_listen_on_is_a_clear_error(host):
    from otas.server.main import check_host

    with pytest.raises(ValueError, match="--host"):
        check_host(host)
    check_host("127.0.0.1")


def test_defaults_hold_together():
    h, e = HttpConfig(), EngineConfig()
    assert h.max_inflight_bytes >= h.max_body_bytes and e.decode_limits().formats == ("PNG", "JPEG")


@pytest.mark.parametrize(
    "args,named",
    [(["--max-inflight-mb", "1"], "max_inflight_mb"), (["--image-formats", "PNG,BMPX"], "image formats"),
     (["--max-connections", "0"], "max_connections"), (["--decode-queue", "0"], "decode_queue"),
     (["--header-timeout-s", "0"], "header_timeout_s"), (["--torch-threads", "-2"], "torch_threads")],
)  # fmt: skip
def test_otas_serve_refuses_bad_limits(args, named):
    res = CliRunner().invoke(app, ["serve", "--noop", *args], terminal_width=200)
    assert res.exit_code == 2 and named in res.output.replace("\n", " "), res.output


def test_every_fast_path_mode_is_accepted_where_it_runs():
    from otas.adapt.fast import MODES

    for mode in MODES:
        assert EngineConfig(device="cuda", mode=mode).mode == mode
    with pytest.raises(ValueError, match="compiled-graphs needs --device cuda"):
        EngineConfig(device="cpu", mode="compiled-graphs")


def test_torch_threads_bound_the_forward(tiny_ckpt, monkeypatch):
    """--torch-threads N: the model's forward on the CPU uses N threads (the rest of the cores are left
    to the front end and decoding); 0 keeps torch's default."""
    import torch

    from otas.config import ServingConfig
    from otas.server.main import load_runner
    from tests.server.helpers import APPS

    before = torch.get_num_threads()
    profile = "tests/data/handmade_tiny__cpu.json"
    try:
        for n in (1, 2):
            cfg = ServingConfig(apps=APPS, model=str(tiny_ckpt), profile=profile, engine=EngineConfig(torch_threads=n,
                                warmup=False))  # fmt: skip
            load_runner(cfg)
            assert torch.get_num_threads() == n
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("ms, want_s", [(1.0, 0.001), (0.25, 0.00025), (0, None)])
def test_the_engine_sets_the_gil_switch_interval_it_is_given(ms, want_s):
    """The device thread waits up to the GIL switch interval after each call into torch while another
    thread runs Python; the engine shortens it (1 ms by default), or leaves Python's with 0."""
    import asyncio
    import sys

    from otas.config import SchedulerConfig
    from otas.engine.noop import NoopRunner, noop_profile
    from otas.server.main import make_engine
    from tests.server.helpers import APPS

    before = sys.getswitchinterval()
    try:
        sys.setswitchinterval(0.005)
        runner, profile = NoopRunner(APPS, max_batch=8), noop_profile(APPS, 8)
        cfg = EngineConfig(switch_interval_ms=ms)
        engine, _ = make_engine(runner, profile, APPS, "fixed:0", SchedulerConfig(max_batch=8), engine_cfg=cfg)

        async def run():
            await engine.start()
            await engine.stop(1)

        asyncio.run(run())
        assert sys.getswitchinterval() == pytest.approx(want_s or 0.005)
    finally:
        sys.setswitchinterval(before)


@pytest.mark.parametrize("profile_mode, warned", [("eager", True), ("traced", False), (None, False)])
def test_a_profile_of_another_path_than_the_served_one_is_named(tiny_ckpt, tmp_path, caplog, profile_mode, warned):
    """Traced and eager run the same kernels but not in the same time (a batch of 1 in about half the time
    on a CPU), so a profile timed on one predicts the other badly: the server says so at start. A
    profile that records no mode is taken as timing the served path."""
    import json
    import logging

    from otas.config import ServingConfig
    from otas.server.main import load_runner
    from tests.server.helpers import APPS

    doc = json.load(open("tests/data/handmade_tiny__cpu.json"))
    if profile_mode:
        doc["meta"] = {**doc.get("meta", {}), "mode": profile_mode}
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(doc))
    cfg = ServingConfig(apps=APPS, model=str(tiny_ckpt), profile=path, engine=EngineConfig(mode="traced", warmup=False))
    with caplog.at_level(logging.WARNING):
        load_runner(cfg)
    assert any("profile timed another path" in r.getMessage() for r in caplog.records) == warned


@pytest.mark.parametrize("q", [-0.1, 1.5, float("nan"), True, "0.9"])
def test_a_bad_delivery_quantile_is_refused(q):
    with pytest.raises(ValueError, match="delivery_quantile"):
        EngineConfig(delivery_quantile=q)


@pytest.mark.parametrize("q,planned", [(0.95, 30.0), (0.0, 0.0)])
def test_the_delivery_quantile_reaches_the_engine_and_0_plans_for_none(q, planned):
    from otas.config import SchedulerConfig
    from otas.engine.noop import NoopRunner, noop_profile
    from otas.server.main import make_engine
    from tests.server.helpers import APPS

    runner, profile = NoopRunner(APPS, max_batch=8), noop_profile(APPS, 8)
    cfg = EngineConfig(delivery_quantile=q)
    engine, info = make_engine(runner, profile, APPS, "fixed:0", SchedulerConfig(max_batch=8), engine_cfg=cfg)
    for _ in range(64):
        engine.delivered(30.0)
    assert engine.delivery.ms == planned and info["delivery_quantile"] == q


@pytest.mark.parametrize("every", [None, 1, 2, 4])
def test_the_server_runs_the_merge_schedule_its_profile_names(tiny_ckpt, tmp_path, every):
    """A profile's accuracies and latencies are those of the merge schedule it was measured with
    (`meta.merge_every`): the server runs that one, on the same weights; a profile that does not say
    runs the checkpoint's own. The Ray replicas build theirs the same way."""
    import json

    from otas.adapt.merge import merge_schedule
    from otas.config import SchedulerConfig, ServingConfig
    from otas.models.checkpoint import read_header
    from otas.scale.replica import ReplicaSpec, build_runner
    from otas.server.main import load_runner
    from tests.server.helpers import APPS

    doc = json.load(open("tests/data/handmade_tiny__cpu.json"))
    if every is not None:
        doc["meta"] = {**doc.get("meta", {}), "merge_every": every}
    path = tmp_path / "profile.json"
    path.write_text(json.dumps(doc))
    cfg = ServingConfig(apps=APPS, model=str(tiny_ckpt), profile=path, engine=EngineConfig(warmup=False))
    runner, _ = load_runner(cfg)
    want = every or read_header(tiny_ckpt)["adapt"].get("merge_every", 1)
    model = runner.fast.model
    assert model.config.merge_every == want
    depth, n, p = len(model.vit.blocks), model.num_tokens, model.vit.num_prefix_tokens
    k = min(want, depth)
    if 8 * k <= (n - p) // 2:  # a step of 8·k tokens fits the first block: every k-th block merges
        assert model.merge_schedule(-8)[:k] == [8 * k] + [0] * (k - 1)
    assert model.merge_schedule(-8) == merge_schedule(n, 8, depth, p, want)
    spec = ReplicaSpec(APPS, doc, "otas", SchedulerConfig(max_batch=16), model=str(tiny_ckpt), warmup=False)
    assert build_runner(spec).fast.model.config.merge_every == want


def test_the_http_and_grpc_apis_need_a_port_each():
    from otas.config import HttpConfig

    with pytest.raises(ValueError, match="port and grpc_port are both 8005"):
        HttpConfig(port=8005, grpc_port=8005)
    HttpConfig(port=8005, grpc_port=0)  # no gRPC: nothing to clash with


@pytest.mark.parametrize(
    "launch,plan,want",
    [(False, None, False), (False, True, False), (True, True, True), (True, False, False), (True, None, False),
     (None, True, True)],  # (None: the default)
)  # fmt: skip
def test_a_runner_launches_ahead_only_where_asked_and_batches_are_planned_ahead(tiny_ckpt, launch, plan, want):
    """`--launch-ahead` (on by default) needs planning ahead (off by default on a CPU), which makes the batch
    to launch behind the running one; a Ray replica never launches ahead. On a CPU nothing can be launched ahead
    (no CUDA graphs), whatever is asked."""
    import json

    from otas.config import SchedulerConfig, ServingConfig
    from otas.scale.replica import ReplicaSpec, build_runner
    from otas.server.main import load_runner
    from tests.server.helpers import APPS

    profile = "tests/data/handmade_tiny__cpu.json"
    asked = {} if launch is None else {"launch_ahead": launch}
    engine = EngineConfig(warmup=False, plan_ahead=plan, **asked)
    runner, _ = load_runner(ServingConfig(apps=APPS, model=str(tiny_ckpt), profile=profile, engine=engine))
    assert runner.pipeline is want and not runner.pipelined
    spec = ReplicaSpec(
        APPS, json.load(open(profile)), "otas", SchedulerConfig(max_batch=16), model=str(tiny_ckpt), warmup=False
    )
    assert build_runner(spec).pipeline is False


def test_a_port_in_use_and_an_unservable_policy_are_refused_before_the_model_loads():
    """`otas serve` checks its ports and its policy first (a model takes seconds to minutes to load and warm)."""
    import socket

    from otas.server.main import check_host, check_policy

    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        with pytest.raises(ValueError, match=f"port {port} .*another process holds it"):
            check_host("127.0.0.1", (0, port))
    check_host("127.0.0.1", (port, 0))  # free again
    with pytest.raises(ValueError, match="unknown policy 'otass'"):
        check_policy("otass")
    with pytest.raises(ValueError, match="offline bound.*otas simulate --policies otas,oracle"):
        check_policy("oracle")
    check_policy("fixed:-8")


@pytest.mark.parametrize("args,want", [([], True), (["--host-gap"], True), (["--no-host-gap"], False)])
def test_otas_serve_plans_with_the_host_gap_unless_told_not_to(monkeypatch, args, want):
    """`--host-gap` reaches the scheduler's config (on by default; off: measured, not planned with)."""
    import otas.server.main as main

    seen = {}
    monkeypatch.setattr(main, "serve", lambda cfg: seen.setdefault("cfg", cfg))
    res = CliRunner().invoke(app, ["serve", "--noop", *args], terminal_width=200)
    assert res.exit_code == 0, res.output
    assert seen["cfg"].scheduler.host_gap is want
