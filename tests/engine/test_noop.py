"""The no-op and paced runners: the server's host side measured without, or at the speed of, a device."""

import time

import numpy as np

from otas.config import EngineConfig, ServingConfig
from otas.engine.noop import NoopRunner, PacedRunner
from otas.profile.table import Profile
from otas.server.main import load_runner
from otas.types import App
from tests.factories import make_profile

APPS = [App("a", 20.0, 1.0, "novel")]


def profile() -> Profile:
    return make_profile(base_ms=(30.0, 60.0), batch_sizes=(1, 8), gammas=[-8, 0], device="emulated device")


def test_a_paced_batch_takes_the_profiled_latency_of_its_gamma_and_size():
    prof = profile()
    runner = PacedRunner(NoopRunner(APPS, max_batch=8), prof)
    img = np.zeros((32, 32, 3), np.uint8)
    for gamma, b in ((0, 8), (-8, 1), (0, 4)):
        t0 = time.perf_counter()
        out = runner.run([img] * b, ["novel"] * b, gamma)
        wall = (time.perf_counter() - t0) * 1e3
        want = prof.lat(gamma, b)
        assert want <= out.ms <= wall  # at least the profiled time (a loaded host may oversleep)
        assert out.probs.shape == (b, 5) and np.allclose(out.probs.sum(1), 1)


def test_a_paced_padded_profile_sleeps_each_batch_at_its_bucket_up_to_the_max_batch():
    """A profile that names the buckets its path pads to is slept at each batch's bucket, the last one the
    runner's B_max (as the CUDA-graph path runs it), not the file's last bucket."""
    prof = profile().with_buckets([1, 2, 8])
    runner = PacedRunner(NoopRunner(APPS, max_batch=4), prof)
    assert runner.profile.buckets == [1, 2, 4]
    img = np.zeros((32, 32, 3), np.uint8)
    out = runner.run([img] * 3, ["novel"] * 3, 0)
    assert out.ms >= profile().lat(0, 4) > profile().lat(0, 3)


def test_serve_noop_paced_runs_the_paced_runner_planned_with_the_given_profile(tmp_path):
    path = tmp_path / "p.json"
    profile().save(path)
    eng = EngineConfig(noop=True, paced=True, warmup=False)
    runner, prof = load_runner(ServingConfig(APPS, profile=path, engine=eng))
    assert isinstance(runner, PacedRunner) and prof.device == "emulated device" and prof.gammas == [-8, 0]
    runner, prof = load_runner(ServingConfig(APPS, engine=EngineConfig(noop=True)))
    assert isinstance(runner, NoopRunner) and prof.model == "noop"
