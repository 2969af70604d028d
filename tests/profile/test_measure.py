import dataclasses

import pytest
import torch

from otas.adapt import AdaptConfig, AdaptiveViT
from otas.models.checkpoint import save_checkpoint
from otas.models.registry import build_vit
from otas.profile.measure import device_slug, gflops, measure_profile, time_cells
from otas.profile.report import markdown, speedup_rows
from otas.profile.table import SCHEMA, Profile


def _ckpt(tmp_path):
    torch.manual_seed(0)
    vit = build_vit("vit_tiny_p2", 5, img_size=16, depth=2)
    m = AdaptiveViT(vit, AdaptConfig(gammas=(-8, 0, 4), tasks={"novel": 5}))
    p = tmp_path / "tiny.safetensors"
    save_checkpoint(m, p)
    return m, p


def _accuracies(source4: bool = False) -> Profile:
    """A profile of the checkpoint's Γ to take accuracies from (`source4`: with a stale source γ = 4,
    which the source task, having no prompts, cannot be served at)."""
    source = {-8: 0.5, 0: 0.6, **({4: 0.6} if source4 else {})}
    return Profile(
        model="x",
        device="d",
        dtype="float32",
        gammas=[-8, 0, 4],
        batch_sizes=[1],
        accuracy={"source": source, "novel": {-8: 0.4, 0: 0.5, 4: 0.7}},
        latency_ms={g: {1: 1.0} for g in (-8, 0, 4)},
    )


def test_gflops_follow_token_counts(tmp_path):
    m, _ = _ckpt(tmp_path)
    assert gflops(m, -8) < gflops(m, 0) < gflops(m, 4)
    # γ = 0: patch embedding + per block 2 N (12 C^2) + 4 N^2 C with N = 65, C = 192, 2 blocks
    N, C = 65, 192
    expected = 2 * 64 * C * 12 + 2 * (2 * N * 12 * C * C + 4 * N * N * C)
    assert abs(gflops(m, 0) - expected / 1e9) < 1e-9


def test_measure_profile_on_cpu(tmp_path):
    _, p = _ckpt(tmp_path)
    acc = _accuracies(source4=True)
    prof = measure_profile(p, "cpu", torch.float32, [1, 4], accuracy_from=acc, min_time_s=0.01)
    assert prof.gammas == [-8, 0, 4] and prof.batch_sizes == [1, 4]
    assert all(prof.latency_ms[g][b] > 0 for g in prof.gammas for b in (1, 4))
    assert prof.latency_p90_ms[0][4] >= prof.latency_ms[0][4]
    # the source task has no prompts: a γ > 0 accuracy for it is not servable, so it is not kept
    assert prof.accuracy == {"source": {-8: 0.5, 0: 0.6}, "novel": acc.accuracy["novel"]}
    assert prof.servable("source") == [-8, 0] and prof.servable("novel") == [-8, 0, 4]
    assert "accuracy_from" in prof.meta and prof.memory_mb is None
    # a swap's cost: the weights onto the device, then a first batch (the model is ready at γ = 0)
    parts = prof.meta["model_load_parts_ms"]
    assert parts["weights"] > 0 and parts["warmup"] > 0
    assert prof.model_load_ms >= parts["weights"] + parts["warmup"] - 0.2  # each part rounded to 0.1 ms
    Profile.from_dict(prof.to_dict())  # valid file format
    rows = speedup_rows(prof)
    assert {(r["gamma"], r["batch"]) for r in rows} == {(g, b) for g in (-8, 0, 4) for b in (1, 4)}
    assert "| -8 |" in markdown(prof)
    assert prof.buckets is None and "buckets" not in markdown(prof)  # eager runs any batch at its own size
    assert "batch buckets 1, 4:" in markdown(prof.with_buckets([1, 4]))
    assert device_slug("NVIDIA H100 80GB HBM3") == "h100" and device_slug("AMD EPYC 7B13") == "cpu-amd"


def test_accuracy_from_fills_missing_gammas_and_subset(tmp_path, cifar_archive, cifar_cache, monkeypatch):
    monkeypatch.setenv("OTAS_CACHE", str(cifar_cache))
    torch.manual_seed(0)
    vit = build_vit("vit_tiny_p2", 5, img_size=32, depth=1)
    p = tmp_path / "tiny32.safetensors"
    save_checkpoint(AdaptiveViT(vit, AdaptConfig(gammas=(-8, 0, 4), tasks={"novel": 5})), p)
    acc = Profile(
        model="x",
        device="d",
        dtype="float32",
        gammas=[0, 4],
        batch_sizes=[1],
        accuracy={"source": {0: 0.6, 4: 0.6}, "novel": {0: 0.5, 4: 0.7}},
        latency_ms={g: {1: 1.0} for g in (0, 4)},
    )
    prof = measure_profile(
        p, "cpu", torch.float32, [2], data=cifar_archive, accuracy_from=acc, accuracy_limit=16, min_time_s=0.01
    )
    assert prof.gammas == [-8, 0, 4] and prof.meta["accuracy_measured"] == [-8]
    assert prof.accuracy["novel"][4] == 0.7 and 0.0 <= prof.accuracy["novel"][-8] <= 1.0  # kept / measured
    sub = measure_profile(p, "cpu", torch.float32, [2], accuracy_from=acc, min_time_s=0.01, gammas=[0, 4])
    assert sub.gammas == [0, 4] and sub.meta["accuracy_measured"] == [] and set(sub.latency_ms) == {0, 4}
    with pytest.raises(ValueError, match="not in the configured set"):
        measure_profile(p, "cpu", torch.float32, [2], accuracy_from=acc, gammas=[0, -12])


def test_time_cells_interleaves_and_covers_every_cell(tmp_path):
    m, _ = _ckpt(tmp_path)
    rounds = []
    cells = [(g, b) for g in (-8, 0, 4) for b in (1, 4)]
    out = time_cells(m, cells, torch.device("cpu"), torch.float32, min_time_s=0.0, min_runs=3,
                     task_of=lambda g: "novel" if g > 0 else "source", on_round=lambda: rounds.append(1))  # fmt: skip
    assert set(out) == set(cells) and len(rounds) >= 3  # every cell is visited once per round
    assert all(0 < med <= p90 and peak is None for med, p90, peak in out.values())


def test_profile_your_own_model_on_its_folders(byo_model, tmp_path, monkeypatch):
    """Accuracy on the split held out at training, or on a folder given with --task; the timm
    backbone's own (ImageNet) head has no data here and is left out."""
    from typer.testing import CliRunner

    from otas.cli import app
    from tests.folders import make_task

    monkeypatch.setenv("OTAS_CACHE", str(tmp_path / "cache"))
    ckpt, folders = byo_model
    args = ["profile", str(ckpt), "--device", "cpu", "--batch-sizes", "1,2", "--min-time-s", "0.01"]
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path / "p.json")], terminal_width=200)
    assert res.exit_code == 0, res.output
    prof = Profile.load(tmp_path / "p.json")
    assert sorted(prof.accuracy) == ["colours", "lights"] and prof.servable("colours") == [-4, 0, 4]
    assert prof.tasks["colours"]["split"]["kind"] == "seeded" and prof.tasks["colours"]["test_images"] == 3
    other = make_task(tmp_path / "more", ["red", "green", "blue"], n=4, seed=7)
    res = CliRunner().invoke(app, [*args, "--task", f"colours={other}", "--out", str(tmp_path / "q.json")])
    assert res.exit_code == 0, res.output
    assert Profile.load(tmp_path / "q.json").tasks["colours"]["test_images"] == 12  # all of a folder not trained on
    for bad, message in [(f"nosuch={other}", "this model serves tasks"), ("colours", "write NAME=DIR")]:
        res = CliRunner().invoke(app, [*args, "--task", bad], terminal_width=200)
        assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output


def test_a_profile_names_the_merge_schedule_it_measured(tmp_path):
    """`merge_every` changes which tokens merge, so accuracies and times: the profile records the
    schedule it measured, and refuses the accuracies of a profile of another schedule."""
    m, p = _ckpt(tmp_path)
    acc = _accuracies()
    own = measure_profile(p, "cpu", torch.float32, [1], accuracy_from=acc, min_time_s=0.01)
    assert own.meta["merge_every"] == 1 == own.merge_every  # the checkpoint's
    with pytest.raises(ValueError, match="measured with merge_every=1, this one with 2"):
        measure_profile(p, "cpu", torch.float32, [1], accuracy_from=acc, min_time_s=0.01, merge_every=2)
    acc2 = dataclasses.replace(acc, meta={"merge_every": 2})
    two = measure_profile(p, "cpu", torch.float32, [1], accuracy_from=acc2, min_time_s=0.01, merge_every=2)
    assert two.merge_every == 2 and Profile.from_dict(two.to_dict()).merge_every == 2
    assert two.gflops[-8] < own.gflops[-8] and two.gflops[0] == own.gflops[0]  # merged earlier: fewer FLOPs
    with pytest.raises(ValueError, match="measured with merge_every=2, this one with 1"):
        measure_profile(p, "cpu", torch.float32, [1], accuracy_from=acc2, min_time_s=0.01)


@pytest.mark.parametrize("bad", [0, -1, 2.0, True, "2"])
def test_a_bad_merge_schedule_in_a_profile_is_refused_when_read(bad):
    doc = {
        "schema": SCHEMA, "model": "x", "device": "d", "dtype": "float32", "gammas": [0], "batch_sizes": [1],
        "accuracy": {"source": {"0": 0.5}}, "latency_ms": {"0": {"1": 1.0}}, "meta": {"merge_every": bad},
    }  # fmt: skip
    with pytest.raises(ValueError, match="meta.merge_every"):
        Profile.from_dict(doc)
