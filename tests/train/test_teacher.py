"""The distillation teacher: trained, saved, loaded, and distilled from."""

import json

import pytest
import torch
from safetensors.torch import save_file

from otas.models.checkpoint import read_header
from otas.train.backbone import BackboneConfig, train_backbone
from otas.train.teacher import FORMAT, Teacher, TeacherConfig, distill_loss, load_teacher, save_teacher, train_teacher


def test_teacher_keeps_the_resolution_of_32_pixel_inputs():
    t = Teacher("resnet18", 5).eval()
    feats = t.net.forward_features(torch.zeros(2, 3, 32, 32))
    assert feats.shape == (2, 512, 4, 4)  # stride 8 overall, not timm's ImageNet stride 32
    assert t(torch.zeros(2, 3, 32, 32)).shape == (2, 5)


def test_distill_loss_is_zero_only_for_the_teachers_distribution():
    t = torch.randn(8, 5)
    assert float(distill_loss(t, t)) == pytest.approx(0.0, abs=1e-6)
    assert float(distill_loss(t + torch.randn(8, 5), t)) > 0
    assert float(distill_loss(t + 3.0, t)) == pytest.approx(0.0, abs=1e-5)  # logits shifted: same distribution
    s = torch.randn(8, 5, requires_grad=True)
    distill_loss(s, t, temperature=4.0).backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()


def test_hard_distillation_is_cross_entropy_to_the_teachers_top_class():
    t = torch.tensor([[0.1, 3.0, -1.0], [2.0, 0.0, 1.9]])
    s = torch.randn(2, 3, requires_grad=True)
    expected = torch.nn.functional.cross_entropy(s, torch.tensor([1, 0]))
    assert distill_loss(s, t, mode="hard").item() == pytest.approx(float(expected), rel=1e-6)
    assert distill_loss(s, t * 10, temperature=4.0, mode="hard").item() == pytest.approx(float(expected), rel=1e-6)
    distill_loss(s, t, mode="hard").backward()
    assert s.grad is not None and torch.isfinite(s.grad).all()
    with pytest.raises(ValueError, match="kd mode"):
        distill_loss(s, t, mode="medium")


@pytest.mark.parametrize("bad", [{"kd_mode": "medium"}, {"augment": "randaugment"}])
def test_unknown_distillation_or_augmentation_is_refused(bad):
    with pytest.raises(ValueError, match="must be one of"):
        BackboneConfig(**bad)
    if "augment" in bad:
        with pytest.raises(ValueError, match="must be one of"):
            TeacherConfig(**bad)


def test_teacher_then_distilled_backbone(cifar_archive, cifar_cache, tmp_path, monkeypatch):
    monkeypatch.setenv("OTAS_CACHE", str(cifar_cache))
    tp = tmp_path / "teacher.safetensors"
    r = train_teacher(TeacherConfig(epochs=1, batch_size=16, limit=48, warmup_epochs=1, augment="trivial"), tp,
                      cifar_archive, "cpu", log=lambda *a: None)  # fmt: skip
    assert 0.0 <= r["test_acc"] <= 1.0
    t = load_teacher(tp)
    assert not t.training and t.num_classes == 5 and t.meta["source_test_acc"] == r["test_acc"]

    bb = tmp_path / "bb.safetensors"
    for mode in ("soft", "hard"):
        cfg = BackboneConfig(epochs=1, batch_size=16, limit=48, warmup_epochs=1, teacher=str(tp), kd_weight=0.7,
                             kd_mode=mode, augment="trivial")  # fmt: skip
        res = train_backbone(cfg, bb, cifar_archive, "cpu", log=lambda *a: None)
        assert res["done"] and res["history"][0]["loss"] > 0
        meta = read_header(bb)["meta"]
        assert meta["config"]["teacher"] == str(tp) and meta["teacher_test_acc"] == r["test_acc"]
        assert meta["config"]["kd_mode"] == mode and meta["config"]["augment"] == "trivial"


def test_a_file_that_is_not_a_teacher_is_refused(tmp_path):
    with pytest.raises(ValueError, match="no such file"):
        load_teacher(tmp_path / "missing.safetensors")
    f = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(f))
    with pytest.raises(ValueError, match="not an otas teacher"):
        load_teacher(f)
    t = Teacher("resnet18", 5)
    save_teacher(t, tmp_path / "t.safetensors", {})
    assert load_teacher(tmp_path / "t.safetensors").num_classes == 5
    state = {k: v for k, v in t.state_dict().items() if "fc" not in k}  # a tampered file: no classifier
    header = {"format": FORMAT, "arch": "resnet18", "num_classes": 5}
    save_file(state, str(f), metadata={"otas": json.dumps(header)})
    with pytest.raises(ValueError, match="do not match"):
        load_teacher(f)
    with pytest.raises(ValueError, match="kd_weight"):
        BackboneConfig(teacher=str(f), kd_weight=1.5)
    with pytest.raises(ValueError, match="no such file"):
        BackboneConfig(teacher=str(tmp_path / "missing"))
    with pytest.raises(ValueError, match="unknown teacher"):
        TeacherConfig(arch="vgg")
