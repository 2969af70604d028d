"""bench/gpu_merge.py's measurement and report code, run on a CPU (eager path; CUDA-only parts are skipped)."""

import json

import pytest
import torch

from otas.models.checkpoint import load_checkpoint, save_checkpoint
from otas.profile import gpumerge_report
from otas.profile.gpumerge import Recorder, Variant, limit_of, load_model, stock_label, time_model, with_config
from otas.profile.gpumerge_report import build, load_records, markdown, plot, realised, summary
from tests.adapt.conftest import small_model


def test_realised_share():
    assert realised(stock=10, merged=5, limit=5) == pytest.approx(1.0)  # as fast as the limit
    assert realised(stock=10, merged=10, limit=5) == 0  # no faster than γ = 0
    assert realised(stock=10, merged=20, limit=5) < 0  # slower
    assert realised(stock=10, merged=8, limit=10) is None  # the limit itself saves nothing


def test_variants_and_their_limits():
    assert Variant("matmul", prop=False).label == "matmul/noprop"
    assert limit_of(Variant("matmul+column", every=2)) == Variant("limit", every=2)
    fused = Variant("triton+column", fused_norm=True)
    assert fused.label == "triton+column/fusednorm" and stock_label(fused) == "stock/fusednorm"
    assert limit_of(fused).label == "limit/fusednorm"
    m = small_model()
    v = with_config(m, proportional_attn=False, merge_every=2)
    assert v.vit is m.vit and not v.config.proportional_attn and m.config.proportional_attn
    assert v.merge_schedule(-8)[1] == 0 and m.merge_schedule(-8)[1] == 8


@pytest.mark.parametrize(
    "v",
    [
        Variant("matmul+column"),
        Variant("matmul", prop=False, every=2),
        Variant("triton+column", fused_norm=True),
        Variant("matmul+column", every=3, mode="compiled-graphs", fused_norm=True),
    ],
)
def test_report_finds_the_stock_and_limit_each_variant_was_timed_with(v):
    """The report reads a variant's stock and limit cells back from its label alone."""
    assert gpumerge_report._stock_label(v.label) == stock_label(v)
    assert gpumerge_report._limit_label(v.label) == limit_of(v).label


def test_checkpoint_keeps_merge_every(tmp_path):
    m = small_model()
    m.config.merge_every = 2
    save_checkpoint(m, tmp_path / "m.safetensors")
    assert load_checkpoint(tmp_path / "m.safetensors").config.merge_every == 2


def test_time_and_report_on_cpu(tmp_path):
    model = small_model(gammas=(-8, -4, 0))
    save_checkpoint(model, tmp_path / "small.safetensors")
    name, model = load_model(str(tmp_path / "small.safetensors"), gammas=(-8, 0))
    parts = tmp_path / "parts.jsonl"
    rec = Recorder(parts, echo=lambda s: None)
    rec.meta(torch.device("cpu"), phase="time")
    variants = (
        Variant("reference"),
        Variant("matmul+column"),
        Variant("matmul", prop=False),
        Variant("matmul", every=2),
    )
    time_model(name, model, rec, torch.device("cpu"), [2, 1], variants, mode="eager", rounds=2)
    result = build(load_records([parts]))
    assert {(r["batch"], r["impl"]) for r in result["rows"]} == {(b, v.label) for b in (2, 1) for v in variants}
    for r in result["rows"]:
        assert r["gamma"] == -8 and r["merged_ms"] > 0 and r["stock_ms"] > 0 and r["limit_ms"] > 0
        assert r["flops_ratio"] < 1 and r["realised"] == pytest.approx(
            realised(r["stock_ms"], r["merged_ms"], r["limit_ms"])
        )
    every = next(r for r in result["rows"] if r["impl"] == "matmul/every2")
    assert every["flops_ratio"] < next(r for r in result["rows"] if r["impl"] == "reference")["flops_ratio"]
    json.dumps(result)
    assert "matmul+column" in summary(result) and "| small |" in markdown(result)
    plot(result, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 0


def test_accuracy_of_impls_on_cpu(tmp_path, cifar_archive):
    from otas.profile.gpumerge_checks import accuracy

    name, model = load_model("tiny", gammas=(-20, 0))
    parts = tmp_path / "parts.jsonl"
    variants = (Variant("reference"), Variant("matmul+column"))
    accuracy(
        name, model, Recorder(parts, echo=lambda s: None), torch.device("cpu"), cifar_archive, 16, variants, "eager"
    )
    rows = build(load_records([parts]))["accuracy"]
    assert {(r["variant"], r["gamma"]) for r in rows} == {("reference", -20), ("reference", 0), ("matmul+column", -20)}
    assert len({r["task"] for r in rows}) == len(model.tasks) and all(r["images"] == 16 for r in rows)
    for r in rows:  # float32 on a CPU: the same predictions
        assert r["agree"] == 1.0 and 0 <= r["acc"] <= 1


def test_a_variant_merging_every_k_blocks_gets_its_own_stock(tmp_path):
    """γ = 0 merges nothing, so any variant's model times its stock cell (its mode and norms): a group whose
    variants all merge every k blocks is still compared with its own γ = 0, not another path's."""
    model = small_model(gammas=(-8, 0))
    save_checkpoint(model, tmp_path / "small.safetensors")
    name, model = load_model(str(tmp_path / "small.safetensors"), gammas=(-8, 0))
    parts = tmp_path / "parts.jsonl"
    rec = Recorder(parts, echo=lambda s: None)
    rec.meta(torch.device("cpu"), phase="time")
    v = Variant("matmul", every=2, mode="traced")
    time_model(name, model, rec, torch.device("cpu"), [2], (v,), mode="eager", rounds=1)
    (row,) = [r for r in build(load_records([parts]))["rows"] if r["impl"] == v.label]
    assert stock_label(v) == "stock@traced" and row["stock_ms"] > 0 and row["limit_ms"] > 0
