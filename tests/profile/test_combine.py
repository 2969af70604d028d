import pytest

from otas.profile.combine import combine
from otas.profile.table import Profile


def _profile(**kw) -> Profile:
    d = dict(
        model="small_v2",
        device="NVIDIA H200",
        dtype="float32",
        gammas=[-4, 0, 4],
        batch_sizes=[256],
        accuracy={"source": {-4: 0.85, 0: 0.87}, "novel": {-4: 0.8, 0: 0.81, 4: 0.84}},
        latency_ms={g: {256: 80.0} for g in (-4, 0, 4)},
        gflops={-4: 10.0, 0: 12.1, 4: 12.3},
        tasks={"novel": {"test_images": 5000}},
        meta={"arch": "vit_small_p2"},
    )
    d.update(kw)
    return Profile(**d)


def _cpu(**kw) -> Profile:
    lat = {-4: {1: 70.0, 8: 400.0}, 0: {1: 90.0, 8: 590.0}, 4: {1: 91.0, 8: 610.0}}
    d = dict(
        model="small_v1", device="AMD EPYC x2 threads", batch_sizes=[1, 8], latency_ms=lat, model_load_ms=217.0,
        accuracy={"source": {-4: 0.8, 0: 0.82}, "novel": {-4: 0.7, 0: 0.78, 4: 0.8}},
        meta={"arch": "vit_small_p2", "created": "then"},
    )  # fmt: skip
    d.update(kw)
    return _profile(**d)


def test_accuracy_from_one_times_from_the_other():
    out = combine("small_v2", "vit_small_p2", _profile(), _cpu(), {"source_test_acc": 0.87})
    assert out.model == "small_v2" and out.device == "AMD EPYC x2 threads"
    assert out.accuracy == _profile().accuracy  # the new model's, not the old one's
    assert out.latency_ms == _cpu().latency_ms and out.batch_sizes == [1, 8] and out.model_load_ms == 217.0
    assert out.meta["arch"] == "vit_small_p2" and out.meta["source_test_acc"] == 0.87
    assert "small_v2 on NVIDIA H200" in out.meta["accuracy_from"] and "small_v1" in out.meta["latency_from"]


def test_only_the_timed_gammas_are_kept():
    lat = {g: {1: 1.0, 8: 2.0} for g in (-4, 0)}
    acc = {"source": {-4: 0.8, 0: 0.82}, "novel": {-4: 0.7, 0: 0.78}}
    old = _cpu(gammas=[-4, 0], latency_ms=lat, gflops={-4: 10, 0: 12.1}, accuracy=acc)
    out = combine("small_v2", "vit_small_p2", _profile(), old)
    assert out.gammas == [-4, 0] and set(out.accuracy["novel"]) == {-4, 0}


_only_0_4 = dict(
    gammas=[0, 4],
    accuracy={"source": {0: 0.87}, "novel": {0: 0.81, 4: 0.84}},
    latency_ms={g: {256: 80.0} for g in (0, 4)},
    gflops={0: 12.1, 4: 12.3},
)


@pytest.mark.parametrize(
    "acc, lat, match",
    [
        ({"model": "tiny"}, {}, "not this model"),
        ({}, {"meta": {"arch": "vit_tiny_p2"}}, "architecture 'vit_tiny_p2'"),
        ({}, {"gflops": {-4: 9.0, 0: 12.1, 4: 12.3}}, r"differ at γ \[-4\]"),
        ({}, {"gflops": None}, "differ"),
        (_only_0_4, {}, r"lacks γ \[-4\]"),
    ],
)
def test_other_compute_is_refused(acc, lat, match):
    with pytest.raises(ValueError, match=match):
        combine("small_v2", "vit_small_p2", _profile(**acc), _cpu(**lat))


def test_the_merge_schedule_is_kept_and_must_agree():
    """Equal GFLOPs per γ say one schedule; where both profiles name theirs, they must agree, and the
    result names it (the server runs the schedule its profile names)."""
    two = {"arch": "vit_small_p2", "merge_every": 2}
    out = combine("small_v2", "vit_small_p2", _profile(meta=two), _cpu(meta={**two, "created": "then"}))
    assert out.merge_every == 2
    assert combine("small_v2", "vit_small_p2", _profile(), _cpu()).merge_every is None  # neither says
    with pytest.raises(ValueError, match="merge_every=2, --latency-from with 1"):
        combine("small_v2", "vit_small_p2", _profile(meta=two), _cpu(meta={"arch": "vit_small_p2", "merge_every": 1}))
