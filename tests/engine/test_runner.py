import numpy as np
import pytest

from otas.engine.noop import NoopRunner, noop_profile
from tests.server.helpers import APPS, SIZE


def _imgs(n, seed=0):
    return list(np.random.default_rng(seed).integers(0, 256, (n, SIZE, SIZE, 3), dtype=np.uint8))


def test_runner_mixed_tasks_match_single_task_batches(runner):
    imgs = _imgs(4)
    tasks = ["novel", "blur", "lowlight", "novel"]
    for g in runner.gammas:
        out = runner.run(imgs, tasks, g)
        assert out.probs.shape == (4, 5) and out.ms > 0
        np.testing.assert_allclose(out.probs.sum(1), 1.0, atol=1e-5)
        if g >= 0:  # merging matches tokens across the batch's own images only; prompts are per image
            for i, t in enumerate(tasks):
                np.testing.assert_allclose(runner.run([imgs[i]], [t], g).probs[0], out.probs[i], atol=1e-4)
    assert runner.classes["novel"][0] == "dog" and runner.classes["lowlight"][0] == "airplane"


def test_runner_rejects_bad_batches(runner):
    with pytest.raises(ValueError, match="need 1..16"):
        runner.run(_imgs(17), ["novel"] * 17, 0)
    with pytest.raises(ValueError, match="need 1..16"):
        runner.run(_imgs(2), ["novel"], 0)
    with pytest.raises(ValueError, match="gamma=3"):
        runner.run(_imgs(1), ["novel"], 3)


def test_noop_runner_collates_and_returns_uniform():
    r = NoopRunner(APPS, image_size=SIZE, max_batch=8)
    out = r.run(_imgs(3), ["novel"] * 3, 0)
    assert out.probs.shape == (3, 5) and np.allclose(out.probs, 0.2)
    p = noop_profile(APPS, 8)
    assert p.gammas == [0] and p.lat(0, 8) < 1


def test_runner_serves_through_the_fast_path(runner, monkeypatch):
    """The server's runner runs `FastForward`, the forward the profiler times: one path."""
    from otas.adapt.fast import FastForward

    calls = []
    inner = FastForward._forward
    monkeypatch.setattr(FastForward, "_forward", lambda self, *a: calls.append(a[1]) or inner(self, *a))
    assert isinstance(runner.fast, FastForward) and runner.mode == "eager"
    for g in runner.gammas:
        runner.run(_imgs(2), ["novel", "blur"], g)
    assert calls == runner.gammas


def test_runner_refuses_unservable_pairs(runner):
    assert runner.servable["source"] == tuple(g for g in runner.gammas if g <= 0)
    g = max(runner.gammas)
    with pytest.raises(ValueError, match="not served at gamma"):
        runner.run(_imgs(2), ["novel", "source"], g)
