import json

import numpy as np
import pytest
import torch

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


def test_launch_answers_as_run_does(runner):
    """`launch` (the pipelined path's halves) gives `run`'s answers; on a CPU it runs at once (nothing to
    queue behind), so the runner is not pipelined, and it refuses what `run` refuses before any work."""
    imgs, tasks = _imgs(5, seed=3), ["novel", "blur", "lowlight", "novel", "blur"]
    assert not runner.pipelined
    for g in (runner.gammas[0], 0, runner.gammas[-1]):
        want = runner.run(imgs, tasks, g).probs
        got = runner.launch(imgs, tasks, g)()
        np.testing.assert_allclose(got.probs, want, atol=1e-6)
        assert got.ms >= 0
    with pytest.raises(ValueError, match="need 1..16"):
        runner.launch(_imgs(17), ["novel"] * 17, 0)
    with pytest.raises(ValueError, match="gamma=3"):
        runner.launch(_imgs(1), ["novel"], 3)


def test_noop_runner_collates_and_returns_uniform():
    r = NoopRunner(APPS, image_size=SIZE, max_batch=8)
    out = r.run(_imgs(3), ["novel"] * 3, 0)
    assert out.probs.shape == (3, 5) and np.allclose(out.probs, 0.2)
    p = noop_profile(APPS, 8)
    assert p.gammas == [0] and p.lat(0, 8) < 1


def test_runner_serves_through_the_fast_path(runner):
    """The server's runner runs `FastForward`, the forward the profiler times: one path. On a CPU that is
    the traced forward, one trace per γ; it answers as the eager forward does."""
    from otas.adapt.fast import FastConfig, FastForward

    assert isinstance(runner.fast, FastForward) and runner.mode == "traced"
    eager = FastForward(runner.fast.model, "cpu", FastConfig("eager", dtype=runner.dtype))
    imgs = _imgs(3)
    for g in runner.gammas:
        tasks = ["novel", "blur", "source" if g <= 0 else "lowlight"]
        want = eager(torch.from_numpy(np.stack(imgs)), g, tasks).numpy()
        np.testing.assert_allclose(runner.run(imgs, tasks, g).probs, want, atol=1e-6)
    assert sorted(runner.fast._traced) == sorted(runner.gammas)


def test_runner_refuses_unservable_pairs(runner):
    assert runner.servable["source"] == tuple(g for g in runner.gammas if g <= 0)
    g = max(runner.gammas)
    with pytest.raises(ValueError, match="not served at gamma"):
        runner.run(_imgs(2), ["novel", "source"], g)


@pytest.mark.parametrize(
    "drop, gaps",
    [
        (["prompts.blur/4"], {"blur": (4,)}),  # prompts without their head
        (["heads.novel/4.weight", "heads.novel/4.bias"], {"novel": (4,)}),
        (["heads.lowlight/0.weight"], {"lowlight": (-4, 0)}),  # merging reuses the γ = 0 head
        (["prompts.novel/4", "heads.blur/0.bias", "heads.blur/4.weight"], {"novel": (4,), "blur": (-4, 0, 4)}),
    ],
)
def test_weights_missing_from_the_checkpoint_are_never_served(tiny_ckpt, tmp_path, drop, gaps):
    """A checkpoint without some prompts or heads loads (training resumes from such files), but the
    runner never serves those pairs with their random initial weights, and the server refuses an
    application that would need them, naming them."""
    from safetensors.torch import load_file, save_file

    from otas.engine.runner import Runner
    from otas.models.checkpoint import read_header
    from otas.server.main import check_servable
    from tests.server.helpers import paced_profile

    state = load_file(str(tiny_ckpt))
    header = read_header(tiny_ckpt)
    for k in drop:
        del state[k]
    path = tmp_path / "partial.safetensors"
    save_file(state, str(path), metadata={"otas": json.dumps(header)})
    r = Runner.load(path, "cpu", max_batch=4)
    assert r.untrained == gaps
    for task, gammas in gaps.items():
        assert not set(gammas) & set(r.servable[task])
        for g in gammas:
            with pytest.raises(ValueError, match="not trained at gamma"):
                r.run(_imgs(2), ["source", task] if g <= 0 else [task, task], g)
        with pytest.raises(ValueError, match=f"no trained prompts or head for task '{task}'"):
            check_servable(r, paced_profile(), [a for a in APPS if a.task == task], "otas")
    for task in set(r.servable) - set(gaps) - {"source"}:  # the rest is served as before
        assert r.run(_imgs(1), [task], max(r.gammas)).probs.shape[0] == 1
    r.warmup()  # skips what it cannot serve


def test_warmup_traces_every_gamma_at_two_batch_sizes_on_a_cpu(runner, monkeypatch):
    """On a CPU warm-up makes every γ's trace and runs batches of 1 and 8, not every bucket: one trace
    serves every batch size (a batch of 64 at each γ took minutes on a slow CPU)."""
    sizes = []
    inner = runner.run
    monkeypatch.setattr(
        runner, "run", lambda images, tasks, g: sizes.append((g, len(images))) or inner(images, tasks, g)
    )
    runner.warmup()
    assert sorted(sizes) == sorted((g, b) for g in runner.gammas for b in (1, 8))
    assert sorted(runner.fast._traced) == sorted(runner.gammas)


def test_the_served_profile_pads_as_the_runner_does(runner):
    """The server plans with its profile read at the batch sizes its runner runs: padded to the
    runner's buckets in a mode with a graph per bucket, at each batch's own size otherwise (this CPU
    runner traces one function per γ), whatever the profile file says."""
    from types import SimpleNamespace

    from otas.engine.runner import Runner

    prof = noop_profile(APPS, 16).with_buckets([1, 2, 4, 8, 16])
    assert runner.mode not in ("graphs", "compile") and runner.served_profile(prof).buckets is None
    graphs = SimpleNamespace(mode="graphs", fast=SimpleNamespace(cfg=SimpleNamespace(buckets=(1, 2, 4, 12))))
    assert Runner.served_profile(graphs, prof.with_buckets(None)).buckets == [1, 2, 4, 12]
