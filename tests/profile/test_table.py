import json

import pytest

from otas.profile.table import Profile, unmeetable_slos
from otas.types import App


def _profile(**kw) -> Profile:
    d = dict(
        model="m",
        device="cpu",
        dtype="float32",
        gammas=[-4, 0, 4],
        batch_sizes=[1, 8],
        accuracy={"t": {-4: 0.8, 0: 0.85, 4: 0.9}},
        latency_ms={-4: {1: 5.0, 8: 20.0}, 0: {1: 6.0, 8: 30.0}, 4: {1: 6.5, 8: 33.0}},
        gflops={-4: 1.0, 0: 1.5, 4: 1.6},
    )
    d.update(kw)
    return Profile(**d)


def test_roundtrip(tmp_path):
    p = _profile(memory_mb={g: {1: 10.0, 8: 40.0} for g in (-4, 0, 4)})
    p.save(tmp_path / "p.json")
    q = Profile.load(tmp_path / "p.json")
    assert q == p
    assert json.loads((tmp_path / "p.json").read_text())["schema"] == "otas.profile/1"


def test_interpolation_and_extrapolation():
    p = _profile()
    assert p.lat(0, 1) == 6.0 and p.lat(0, 8) == 30.0
    assert p.lat(0, 4) == pytest.approx(6.0 + 24.0 * 3 / 7)
    assert p.lat(0, 15) == pytest.approx(30.0 + 24.0)  # linear past the last measured batch
    assert p.acc("t", 4) == 0.9 and p.mem(0, 8) == 0.0


@pytest.mark.parametrize("b1,b8", [(30.0, 6.0), (30.0, 29.0), (50.0, 1.0)])
def test_a_noisy_falling_profile_never_extrapolates_to_zero(b1, b8):
    """A profile timed on a busy host can have a larger batch timed faster; extrapolating that line
    past the last point reached 0 ms (and `otas serve` then divided by it). Past the last point it
    now stays at least at its value, before the first at least its share of the first's."""
    p = _profile(batch_sizes=[2, 8], latency_ms={g: {2: b1, 8: b8} for g in (-4, 0, 4)})
    for b in (9, 16, 64, 256, 10_000):
        assert p.lat(0, b) >= b8 > 0
    assert 0 < p.lat(0, 1) <= max(b1, b1 + (b1 - b8) / 6) and p.throughput(0, 256) < float("inf")


def test_a_profile_whose_latency_falls_with_the_batch_size_is_named():
    """A larger batch timed faster than a smaller one (beyond 10 %) is a profile timed on a busy host:
    one line per γ, naming both cells; a sound or merely noisy (≤ 10 %) row says nothing."""
    assert _profile().timing_warnings() == []
    rows = {-4: {1: 5.0, 8: 20.0, 64: 19.0}, 0: {1: 30.0, 8: 6.0, 64: 40.0}, 4: {1: 6.0, 8: 50.0, 64: 20.0}}
    lines = _profile(batch_sizes=[1, 8, 64], latency_ms=rows).timing_warnings()
    assert len(lines) == 2  # -4 falls 5 %: noise
    assert "gamma=0 a batch of 8 is timed at 6 ms, faster than a batch of 1 (30 ms)" in lines[0]
    assert "gamma=4 a batch of 64 is timed at 20 ms, faster than a batch of 8 (50 ms)" in lines[1]


def test_an_slo_below_the_fastest_batch_of_one_is_named():
    apps = [App("quick", 4.0, 1.0, "t"), App("fine", 5.0, 1.0, "t"), App("other", 1.0, 1.0, "nosuch")]
    lines = unmeetable_slos(apps, [_profile()])
    assert len(lines) == 1 and "'quick'" in lines[0] and "fastest batch of one (5 ms" in lines[0]
    assert unmeetable_slos(apps[:1], [_profile(), _profile(latency_ms={g: {1: 3.0, 8: 9.0} for g in (-4, 0, 4)})]) == []


def test_errors_name_the_problem(tmp_path):
    p = _profile()
    with pytest.raises(ValueError, match="gamma=2 is not in the profile"):
        p.lat(2, 1)
    with pytest.raises(ValueError, match="no task 'x'"):
        p.acc("x", 0)
    with pytest.raises(ValueError, match="no latency for gamma=4"):
        _profile(latency_ms={-4: {1: 1.0, 8: 2.0}, 0: {1: 1.0, 8: 2.0}})
    full = {g: {1: 1.0, 8: 2.0} for g in (-4, 0, 4)}
    for bad in ({**full, 0: {1: 1.0}}, {**full, 0: {1: 1.0, 7: 1.5, 8: 2.0}}):  # a cell missing, one extra
        with pytest.raises(ValueError, match="needs exactly batch_sizes"):
            _profile(latency_ms=bad)
    with pytest.raises(ValueError, match=r"gammas \[99\] that are not in gammas"):
        _profile(latency_ms={**full, 99: {1: 1.0, 8: 2.0}})
    with pytest.raises(ValueError, match="ascending"):
        _profile(gammas=[0, -4, 4])
    with pytest.raises(ValueError, match="ascending and unique"):
        _profile(batch_sizes=[1, 1, 8], latency_ms=full)
    for gflops in ({-4: 1.0, 0: 2.0}, {-4: 1.0, 0: 2.0, 4: 3.0, 99: 1.0}):  # (`otas report` divided by them)
        with pytest.raises(ValueError, match="gflops has gammas"):
            _profile(latency_ms=full, gflops=gflops)
    d = _profile(latency_ms=full, gflops={-4: 1.0, 0: 2.0, 4: 3.0}).to_dict()
    d["gflops"]["0"] = 0
    with pytest.raises(ValueError, match=r"gflops\[0\]=0.0: expected a finite number > 0"):
        Profile.from_dict(d)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(ValueError, match="not an otas profile"):
        Profile.load(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="does not exist"):
        Profile.load(tmp_path / "none.json")


def test_restrict_keeps_only_the_given_gammas():
    p = _profile(memory_mb={g: {1: 10.0, 8: 40.0} for g in (-4, 0, 4)})
    q = p.restrict([4, 0])
    assert q.gammas == [0, 4] and set(q.latency_ms) == set(q.memory_mb) == set(q.gflops) == {0, 4}
    assert q.lat(4, 8) == p.lat(4, 8) and q.acc("t", 0) == p.acc("t", 0) and p.gammas == [-4, 0, 4]
    with pytest.raises(ValueError, match="gamma=-4 is not in the profile"):
        q.lat(-4, 1)
    with pytest.raises(ValueError, match="must include 0 and be a subset"):
        p.restrict([-8, 0])
    with pytest.raises(ValueError, match="must include 0"):
        p.restrict([4])


@pytest.mark.parametrize("ms", [1e20, 1e300, 1e-300, 1e-7])
def test_an_implausible_latency_is_refused_at_load(tmp_path, ms):
    """1e20 ms overflowed the optimizer's time grid (an IndexError in otas simulate); 1e-300 ms made
    "load 1" an absurd rate. Both are mistakes in the file, named as such."""
    p = _profile()
    d = p.to_dict()
    d["latency_ms"]["0"]["8"] = ms
    (tmp_path / "p.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"latency_ms\[0\]\[8\]"):
        Profile.load(tmp_path / "p.json")


def test_a_directory_given_as_a_profile_says_so(tmp_path):
    with pytest.raises(ValueError, match="is a directory"):
        Profile.load(tmp_path)


def test_a_padded_path_costs_and_holds_what_its_bucket_does(tmp_path):
    """`buckets`: the served path pads a batch to the smallest bucket >= it (a CUDA graph per bucket),
    so latency, its spread and memory are read there; past the last bucket at the batch itself."""
    mem = {g: {1: 10.0, 8: 80.0} for g in (-4, 0, 4)}
    p = _profile(buckets=[1, 2, 4, 8], memory_mb=mem, latency_p90_ms={g: {1: 7.0, 8: 40.0} for g in (-4, 0, 4)})
    plain = p.with_buckets(None)
    assert [p.padded(b) for b in (1, 2, 3, 5, 8, 9)] == [1, 2, 4, 8, 8, 9]
    assert p.lat(0, 3) == plain.lat(0, 4) and p.lat(0, 5) == 30.0 > plain.lat(0, 5)
    assert p.lat_p90(0, 5) == 40.0 and p.mem(0, 5) == 80.0
    assert p.lat(0, 9) == plain.lat(0, 9)  # beyond the buckets: its own size
    assert plain.lat(0, 5) == pytest.approx(6.0 + 24.0 * 4 / 7)
    p.save(tmp_path / "p.json")
    assert Profile.load(tmp_path / "p.json") == p
    plain.save(tmp_path / "q.json")
    assert "buckets" not in json.loads((tmp_path / "q.json").read_text())  # files without padding as before


def test_the_largest_bucket_is_the_max_batch_served():
    """`for_max_batch`: as the runner's buckets (`buckets_for`), the buckets below B_max and B_max itself."""
    p = _profile(buckets=[1, 2, 4, 8, 16])
    assert p.for_max_batch(6).buckets == [1, 2, 4, 6] and p.for_max_batch(6).lat(0, 5) == _profile().lat(0, 6)
    assert p.for_max_batch(16) is p and p.for_max_batch(32).buckets == [1, 2, 4, 8, 16, 32]
    assert _profile().for_max_batch(6).buckets is None
    assert p.throughput(0, 6) == p.for_max_batch(6).throughput(0, 6)


@pytest.mark.parametrize(
    "buckets", [[], [4, 2], [0, 1], [1, 1, 2], "1,2", [1.5], ["2"], [True], [-1], [1 << 30], list(range(5000, 0, -1))]
)
def test_bad_buckets_are_refused_with_the_field_named(tmp_path, buckets):
    d = _profile().to_dict()
    d["buckets"] = buckets
    (tmp_path / "p.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="buckets") as e:
        Profile.load(tmp_path / "p.json")
    assert len(str(e.value)) < 300  # a hostile list is not echoed whole
