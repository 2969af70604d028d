"""End-to-end training on a handful of real CIFAR-10 images: the code paths, not the accuracy."""

from pathlib import Path

import torch

import otas
from otas.models.checkpoint import load_checkpoint, read_header
from otas.train.backbone import BackboneConfig, train_backbone
from otas.train.prompts import PromptConfig, train_prompts


def test_backbone_then_prompts(cifar_archive, cifar_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("OTAS_CACHE", str(cifar_cache))
    bb = tmp_path / "bb.safetensors"
    r = train_backbone(
        BackboneConfig(epochs=2, batch_size=16, limit=48, eval_every=1, warmup_epochs=1),
        bb,
        cifar_archive,
        "cpu",
        log=lambda *a: None,
    )
    assert r["done"] and 0.0 <= r["test_acc"] <= 1.0 and len(r["history"]) == 2
    assert read_header(bb)["source_classes"] == ["airplane", "automobile", "bird", "cat", "deer"]

    full = tmp_path / "full.safetensors"
    cfg = PromptConfig(tasks=("novel",), gammas=(-8, 0, 4), epochs=1, head_epochs=1, batch_size=16, limit=32)
    res = train_prompts(cfg, bb, full, cifar_archive, "cpu", log=lambda *a: None)
    assert set(res["novel"]) == {"0", "4"}
    before, after = load_checkpoint(bb), load_checkpoint(full)
    for (k, v), (k2, v2) in zip(before.vit.state_dict().items(), after.vit.state_dict().items(), strict=True):
        assert k == k2 and torch.equal(v, v2), f"backbone weight {k} changed during prompt training"
    assert after.task_classes["novel"] == ["dog", "frog", "horse", "ship", "truck"]
    # a second call resumes: nothing left to train
    assert train_prompts(cfg, bb, full, cifar_archive, "cpu", log=lambda *a: None) == res


def test_backbone_resumes_under_a_time_budget(cifar_archive, cifar_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("OTAS_CACHE", str(cifar_cache))
    bb = tmp_path / "bb.safetensors"
    cfg = BackboneConfig(epochs=2, batch_size=16, limit=32, warmup_epochs=1, time_budget_s=1e-9)
    r = train_backbone(cfg, bb, cifar_archive, "cpu", log=lambda *a: None)
    assert not r["done"] and r["epoch"] == 1 and bb.with_suffix(".state.safetensors").is_file()
    cfg.time_budget_s = None
    r = train_backbone(cfg, bb, cifar_archive, "cpu", log=lambda *a: None)
    assert r["done"] and [h["epoch"] for h in r["history"]] == [1, 2] and bb.is_file()


def test_small_grows_from_the_shipped_tiny_with_its_accuracy(cifar_archive, cifar_cache, tmp_path, monkeypatch):
    from otas.train.common import evaluate, source_data

    monkeypatch.setenv("OTAS_CACHE", str(cifar_cache))
    tiny = Path(otas.__file__).parent / "assets" / "vit_tiny_p2_c5.safetensors"
    src = source_data("source", cifar_archive, torch.device("cpu"), 32)
    tiny_acc = evaluate(load_checkpoint(tiny), src.x_test, src.y_test)
    cfg = BackboneConfig(arch="vit_small_p2", grow_from=str(tiny), epochs=1, batch_size=16, limit=32, warmup_epochs=1)
    bb = tmp_path / "small.safetensors"
    train_backbone(cfg, bb, cifar_archive, "cpu", log=lambda *a: None)
    meta = read_header(bb)["meta"]
    assert meta["grown_from"] == {"checkpoint": tiny.name, "test_acc": tiny_acc}
    assert load_checkpoint(bb).vit.embed_dim == 384
