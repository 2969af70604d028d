import numpy as np
import pytest
import torch

from otas.adapt.fast import FastConfig, FastForward, default_fused_norm, default_merge_impl
from otas.data.transforms import normalize, to_float

from .conftest import small_model


def _reference(model, images, gamma, tasks):
    with torch.no_grad():
        return model(normalize(to_float(images), model.preprocess), gamma, tasks).float().softmax(-1)


def test_eager_matches_the_model():
    model = small_model()
    fast = FastForward(small_model(), "cpu", FastConfig(mode="eager", dtype=torch.float32))
    images = torch.randint(0, 256, (3, 16, 16, 3), dtype=torch.uint8)
    for g in model.config.gammas:
        torch.testing.assert_close(fast(images, g, ["a", "b", "a"]), _reference(model, images, g, ["a", "b", "a"]))


@pytest.mark.parametrize("merge_impl", ["reference", "matmul", "matmul+column"])
def test_traced_matches_eager_at_every_gamma_batch_and_task_mix(merge_impl):
    """The traced forward (one TorchScript trace per γ, made on one image) answers every batch size and
    mix of tasks as the eager forward does: nothing in it is fixed to the traced example."""
    cfg = dict(dtype=torch.float32, merge_impl=merge_impl)
    eager = FastForward(small_model(), "cpu", FastConfig(mode="eager", **cfg))
    traced = FastForward(small_model(), "cpu", FastConfig(mode="traced", **cfg))
    rng = torch.Generator().manual_seed(1)
    for g in eager.model.config.gammas:
        for b in (1, 2, 5, 16):
            images = torch.randint(0, 256, (b, 16, 16, 3), dtype=torch.uint8, generator=rng)
            tasks = [("a", "b", "source")[int(k)] for k in torch.randint(0, 3 if g <= 0 else 2, (b,), generator=rng)]
            torch.testing.assert_close(traced(images, g, tasks), eager(images, g, tasks), rtol=1e-5, atol=1e-6)
    assert sorted(traced._traced) == sorted(eager.model.config.gammas)  # one trace per γ, every batch size


@pytest.mark.parametrize(
    "overrides",
    [{"reg_tokens": 4, "no_embed_class": True}, {"global_pool": "avg", "class_token": False},
     {"global_pool": "avg", "reg_tokens": 2}],
)  # fmt: skip
def test_traced_matches_eager_on_other_vit_layouts(overrides):
    """Registers, average pooling, no class token: the traces of other timm layouts answer as eager does."""
    eager = FastForward(small_model(**overrides), "cpu", FastConfig(mode="eager", dtype=torch.float32))
    traced = FastForward(small_model(**overrides), "cpu", FastConfig(mode="traced", dtype=torch.float32))
    images = torch.randint(0, 256, (6, 16, 16, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    for g in eager.model.config.gammas:
        tasks = ["a", "b", "a", "b", "b", "a"]
        torch.testing.assert_close(traced(images, g, tasks), eager(images, g, tasks), rtol=1e-5, atol=1e-6)


def test_a_forward_that_does_not_trace_runs_eager_with_a_warning(monkeypatch):
    """A model whose forward branches in Python on its input traces wrong (or not at all): the trace is
    checked against the eager forward, and a γ whose trace differs or fails keeps the eager forward."""
    from otas.adapt.fast import TraceFallbackWarning

    model = small_model()
    inner = model._features

    def batch_dependent(x, gamma, P, ops):  # Python control flow on the batch: a trace bakes one branch in
        f = inner(x, gamma, P, ops)
        return f * 2 if x.shape[0] > 1 else f

    monkeypatch.setattr(model, "_features", batch_dependent)
    fast = FastForward(model, "cpu", FastConfig(mode="traced", dtype=torch.float32))
    images = torch.randint(0, 256, (4, 16, 16, 3), dtype=torch.uint8)
    with pytest.warns(TraceFallbackWarning, match="gamma=0: its answers differ"):
        out = fast(images, 0, "a")
    eager = FastForward(model, "cpu", FastConfig(mode="eager", dtype=torch.float32))
    torch.testing.assert_close(out, eager(images, 0, "a"))
    torch.testing.assert_close(fast(images[:1], 0, "a"), eager(images[:1], 0, "a"))

    def untraceable(x, gamma, P, ops):
        raise RuntimeError("cannot trace this")

    monkeypatch.setattr(model, "_features", untraceable)
    fast = FastForward(model, "cpu", FastConfig(mode="traced", dtype=torch.float32))
    with (
        pytest.warns(TraceFallbackWarning, match="gamma=-4: tracing failed .cannot trace this"),
        pytest.raises(RuntimeError, match="cannot trace this"),
    ):
        fast(images, -4, "a")


def test_traced_forward_runs_no_python_per_call(monkeypatch):
    """After its trace, a γ's forward runs as one TorchScript call: the Python forward, whose every op
    would wait for the GIL behind the server's other threads, is not entered again."""
    fast = FastForward(small_model(), "cpu", FastConfig(mode="traced", dtype=torch.float32))
    calls = []
    inner = FastForward._forward
    monkeypatch.setattr(FastForward, "_forward", lambda self, *a: calls.append(a[1]) or inner(self, *a))
    images = torch.randint(0, 256, (3, 16, 16, 3), dtype=torch.uint8)
    for g in (-8, 0, 4):  # first use: traced, and the trace checked against the eager forward
        fast(images, g, ["a", "b", "a"])
    assert sorted(set(calls)) == [-8, 0, 4]
    calls.clear()
    for _ in range(3):
        for g in (-8, 0, 4):
            fast(images, g, ["a", "b", "a"])
    assert calls == []


@pytest.mark.parametrize("mode", ["eager", "traced"])
def test_predict_host_answers_as_the_forward_from_every_host_input_form(mode):
    """`predict_host` (the served path) takes a list of (H, W, 3) arrays, one (B, H, W, 3) array or a
    tensor, and answers as the forward does, in a new array: the next batch does not overwrite it.
    Past the largest bucket (eager and traced serve any size) it stacks outside the staging buffer."""
    fast = FastForward(small_model(), "cpu", FastConfig(mode=mode, dtype=torch.float32, buckets=(1, 4)))
    rng = np.random.default_rng(3)
    kept = []
    for g in fast.model.config.gammas:
        for b in (1, 3, 4, 7):
            images = rng.integers(0, 256, (b, 16, 16, 3), dtype=np.uint8)
            tasks = [("a", "b")[int(k)] for k in rng.integers(0, 2, b)]
            want = fast(torch.from_numpy(images), g, tasks).numpy()
            for form in (list(images), images, torch.from_numpy(images)):
                got = fast.predict_host(form, g, tasks)
                assert got.dtype == np.float32 and got.shape == want.shape
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
            kept.append((got, got.copy()))
    assert all((a == b).all() for a, b in kept)  # no answer was overwritten by a later batch


def test_predict_host_refuses_what_the_forward_refuses():
    fast = FastForward(small_model(), "cpu", FastConfig(mode="eager", dtype=torch.float32, buckets=(1, 4)))
    img = np.zeros((16, 16, 3), np.uint8)
    with pytest.raises(ValueError, match="unknown task"):
        fast.predict_host([img], 0, "nope")
    with pytest.raises(ValueError, match="task names for a batch"):
        fast.predict_host([img, img], 0, ["a"])
    with pytest.raises(ValueError, match="not in the configured set"):
        fast.predict_host([img], 3, "a")
    with pytest.raises(TypeError):  # float pixels are not silently cast to uint8
        fast.predict_host([img.astype(np.float32)], 0, "a")
    with pytest.raises(ValueError):  # a wrong image size
        fast.predict_host([np.zeros((8, 8, 3), np.uint8)], 0, "a")
    tasks = ["a", "source", "b"]
    assert fast.model.task_indices(tasks, 3, 0) == fast.model.task_index(tasks, 3, 0).tolist()


def test_buckets_and_errors():
    fast = FastForward(small_model(), "cpu", FastConfig(mode="eager", dtype=torch.float32, buckets=(1, 4, 8)))
    assert [fast.bucket(b) for b in (1, 2, 4, 5, 8)] == [1, 4, 4, 8, 8]
    with pytest.raises(ValueError, match="exceeds the largest bucket"):
        fast.bucket(9)
    with pytest.raises(ValueError, match="unknown task"):
        fast(torch.zeros(1, 16, 16, 3, dtype=torch.uint8), 0, "zzz")
    with pytest.raises(ValueError, match="task .source. is not served at gamma=4"):
        fast(torch.zeros(1, 16, 16, 3, dtype=torch.uint8), 4, "source")
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        FastForward(small_model(), "cpu", FastConfig(mode="graphs"))
    with pytest.raises(ValueError, match="CUDA graphs need a CUDA device"):
        FastForward(small_model(), "cpu", FastConfig(mode="compiled-graphs"))
    with pytest.raises(ValueError, match="mode must be"):
        FastConfig(mode="turbo")


def test_auto_merge_impl_is_per_device(monkeypatch):
    """ "auto" serves the reference merge on a CPU (what the CPU profile measured) and the Triton merge +
    per-key bias attention on a GPU, or the matmul merge + column where triton is missing; an explicit
    choice is kept."""
    import importlib.util

    assert FastForward(small_model(), "cpu", FastConfig(mode="eager", dtype=torch.float32)).merge_impl == "reference"
    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: find(name, *a) if name != "triton" else object())
    assert default_merge_impl(torch.device("cuda")) == "triton+bias"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else find(name, *a))
    assert default_merge_impl(torch.device("cuda")) == "matmul+column"
    monkeypatch.undo()
    cfg = FastConfig(mode="eager", dtype=torch.float32, merge_impl="matmul")
    assert FastForward(small_model(), "cpu", cfg).merge_impl == "matmul"
    with pytest.raises(ValueError, match="merge_impl"):
        FastConfig(merge_impl="fastest")


def test_fused_norm_by_default_only_on_a_gpu_with_triton(monkeypatch):
    """`fused_norm=None` keeps PyTorch's LayerNorm on a CPU (no Triton kernel runs there) and picks the
    Triton one on a GPU only where triton is installed; an explicit choice is kept."""
    import importlib.util

    from torch import nn

    fast = FastForward(small_model(), "cpu", FastConfig(mode="eager", dtype=torch.float32))
    assert fast.fused_norm is False
    assert any(isinstance(m, nn.LayerNorm) for m in fast.model.modules())
    find = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: find(name, *a) if name != "triton" else object())
    assert default_fused_norm(torch.device("cuda")) is True
    assert default_fused_norm(torch.device("cpu")) is False
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "triton" else find(name, *a))
    assert default_fused_norm(torch.device("cuda")) is False


@pytest.mark.gpu
@pytest.mark.parametrize("mode", ["graphs", "compile", "compiled-graphs"])
def test_gpu_modes_match_eager(mode):
    model = small_model()
    ref = FastForward(small_model(), "cuda", FastConfig(mode="eager"))
    fast = FastForward(model, "cuda", FastConfig(mode=mode, buckets=(1, 4, 8)))
    for g in model.config.gammas:
        for b in (1, 3, 8):
            images = torch.randint(0, 256, (b, 16, 16, 3), dtype=torch.uint8)
            tasks = ["a", "b"] * (b // 2) + ["a"] * (b % 2)
            torch.testing.assert_close(fast(images, g, tasks), ref(images, g, tasks), atol=2e-2, rtol=0)


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["matmul", "column", "matmul+column", "matmul+column+compile", "triton+column"])
def test_gpu_merge_impls_match_eager(impl):
    """Each merge_impl under CUDA graphs equals its own eager run, and stays within bf16 noise of the reference."""
    model = small_model()
    ref = FastForward(small_model(), "cuda", FastConfig(mode="eager", merge_impl="reference"))
    own = FastForward(small_model(), "cuda", FastConfig(mode="eager", merge_impl=impl))
    fast = FastForward(model, "cuda", FastConfig(mode="graphs", buckets=(1, 4, 8), merge_impl=impl))
    for g in [g for g in model.config.gammas if g < 0]:
        for b in (1, 3, 8):
            images = torch.randint(0, 256, (b, 16, 16, 3), dtype=torch.uint8)
            tasks = ["a", "b"] * (b // 2) + ["a"] * (b % 2)
            got = fast(images, g, tasks)
            torch.testing.assert_close(got, own(images, g, tasks), atol=2e-2, rtol=0)
            assert (got - ref(images, g, tasks)).abs().mean() < 1e-2


@pytest.mark.gpu
def test_gpu_host_io_graphs_answer_as_eager_with_no_torch_call_but_replay_and_wait():
    """With `host_io`, each graph copies its input from pinned host buffers and its answer back: a batch
    through `predict_host` equals the eager forward (any size up to a bucket, padding rows holding another
    batch's stale images and tasks), and runs no ATen op on the host: only the replay and the wait."""
    model = small_model()
    ref = FastForward(small_model(), "cuda", FastConfig(mode="eager"))
    fast = FastForward(model, "cuda", FastConfig(mode="graphs", buckets=(1, 4, 8), host_io=True))
    rng = np.random.default_rng(4)
    for _ in range(2):
        for g in model.config.gammas:
            for b in (8, 1, 3, 5, 4):
                images = rng.integers(0, 256, (b, 16, 16, 3), dtype=np.uint8)
                tasks = [("a", "b")[int(k)] for k in rng.integers(0, 2, b)]
                got = fast.predict_host(list(images), g, tasks)
                want = ref(torch.from_numpy(images), g, tasks).float().cpu().numpy()
                np.testing.assert_allclose(got, want, atol=2e-2, rtol=0)
                called = fast(torch.from_numpy(images), g, tasks)  # the tensor form through the same graphs
                np.testing.assert_allclose(called.float().cpu().numpy(), want, atol=2e-2, rtol=0)
    images = list(rng.integers(0, 256, (5, 16, 16, 3), dtype=np.uint8))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fast.predict_host(images, -4, "a")
    ops = {e.name for e in prof.events() if e.name.startswith("aten::")}
    assert not ops, ops


@pytest.mark.gpu
def test_gpu_host_io_graphs_that_fail_their_check_fall_back_with_a_warning(monkeypatch):
    """The first graph's captured copies are checked against the direct forward; where they differ (or the
    capture fails), every graph is made without them, with a warning, and answers stay right."""
    from otas.adapt.fast import HostIOFallbackWarning

    monkeypatch.setattr(FastForward, "_host_io_differs", lambda self, graph, gamma, B: "forced for the test")
    ref = FastForward(small_model(), "cuda", FastConfig(mode="eager"))
    fast = FastForward(small_model(), "cuda", FastConfig(mode="graphs", buckets=(1, 4), host_io=True))
    images = np.random.default_rng(5).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)
    with pytest.warns(HostIOFallbackWarning, match="forced for the test"):
        got = fast.predict_host(list(images), 0, ["a", "b", "a"])
    want = ref(torch.from_numpy(images), 0, ["a", "b", "a"]).float().cpu().numpy()
    np.testing.assert_allclose(got, want, atol=2e-2, rtol=0)
    want = ref(torch.from_numpy(images), -4, "b").float().cpu().numpy()
    np.testing.assert_allclose(fast.predict_host(images, -4, "b"), want, atol=2e-2, rtol=0)


@pytest.mark.parametrize(
    "bad,match",
    [({"mode": "fast"}, "mode must be one of"), ({"buckets": (8, 1)}, "ascending"),
     ({"launch_timing": "wall"}, "'events' or 'chain'")],
)  # fmt: skip
def test_a_bad_fast_config_says_what_to_use(bad, match):
    with pytest.raises(ValueError, match=match):
        FastConfig(**bad)
