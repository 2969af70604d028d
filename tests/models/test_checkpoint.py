import logging
import warnings

import pytest
import torch
from safetensors.torch import save_file

from otas.adapt import AdaptConfig, AdaptiveViT, MergeCapWarning
from otas.models.checkpoint import load_checkpoint, read_header, save_checkpoint
from otas.models.registry import build_vit


def _model() -> AdaptiveViT:
    torch.manual_seed(0)
    vit = build_vit("vit_tiny_p2", 5, img_size=16, depth=2)
    m = AdaptiveViT(vit, AdaptConfig(gammas=(-4, 0, 4), tasks={"novel": 5}), source_classes=list("abcde"))
    m.task_classes = {"novel": list("vwxyz")}
    return m.eval()


def test_roundtrip_and_fp16(tmp_path):
    m = _model()
    x = torch.randn(2, 3, 16, 16)
    save_checkpoint(m, tmp_path / "m.safetensors", {"note": "x"}, dtype=torch.float16)
    back = load_checkpoint(tmp_path / "m.safetensors")  # architecture overrides are recorded
    assert back.vit.patch_embed.img_size == (16, 16) and len(back.vit.blocks) == 2
    with torch.no_grad():
        assert (back(x, -4, "novel") - m(x, -4, "novel")).abs().max() < 5e-2


def test_roundtrip_full_arch(tmp_path):
    torch.manual_seed(0)
    vit = build_vit("vit_tiny_p2", 5)
    m = AdaptiveViT(vit, AdaptConfig(gammas=(-4, 0, 4), tasks={"novel": 5}), source_classes=list("abcde")).eval()
    m.task_classes = {"novel": list("vwxyz")}
    x = torch.randn(2, 3, 32, 32)
    p = tmp_path / "m.safetensors"
    save_checkpoint(m, p, {"note": "x"})
    back = load_checkpoint(p)
    assert read_header(p)["meta"] == {"note": "x"}
    assert back.task_classes == m.task_classes and back.source_classes == list("abcde")
    with torch.no_grad():
        for g in (-4, 0, 4):
            torch.testing.assert_close(back(x, g, "novel"), m(x, g, "novel"))
    save_checkpoint(m, tmp_path / "h.safetensors", dtype=torch.float16)
    assert (tmp_path / "h.safetensors").stat().st_size < 0.55 * p.stat().st_size
    half = load_checkpoint(tmp_path / "h.safetensors")
    with torch.no_grad():
        assert (half(x, 4, "novel") - m(x, 4, "novel")).abs().max() < 5e-2


def test_not_an_otas_checkpoint(tmp_path):
    save_file({"w": torch.zeros(2)}, str(tmp_path / "x.safetensors"))
    with pytest.raises(ValueError, match="not an otas checkpoint"):
        load_checkpoint(tmp_path / "x.safetensors")
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")


def test_timm_pretrained_from_local_file(tmp_path):
    """The hub-loading path (timm pretrained weights), exercised offline with a local file."""
    torch.manual_seed(1)
    src = build_vit("timm:vit_tiny_patch16_224", 10)
    f = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(f))
    vit = build_vit("timm:vit_tiny_patch16_224", 10, pretrained_file=str(f))
    for k, v in src.state_dict().items():
        if not k.startswith("head."):  # timm re-initialises the classifier for a new class count
            torch.testing.assert_close(vit.state_dict()[k], v)


def test_unknown_arch():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_vit("vit_huge_p1", 5)
    with pytest.raises(ValueError, match="no pretrained weights"):
        build_vit("vit_tiny_p2", 5, pretrained=True)


def test_unknown_timm_name_is_a_clear_error():
    with pytest.raises(ValueError, match="timm has no model 'vit_tiniest_patch16'.*similar names"):
        build_vit("timm:vit_tiniest_patch16")


def test_weights_that_do_not_match_the_architecture(tmp_path):
    other = build_vit("timm:test_vit2")  # another width and depth than test_vit
    f = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(f))
    with pytest.raises(ValueError, match=r"weights .*w.safetensors do not match timm:test_vit"):
        build_vit("timm:test_vit", pretrained_file=f)
    pickled = tmp_path / "w.pth"
    pickled.write_bytes(b"not read")
    with pytest.raises(ValueError, match="safetensors"):
        build_vit("timm:test_vit", pretrained_file=pickled)


def test_local_weights_keep_their_head(tmp_path):
    """A weights file with its own classifier (e.g. fine-tuned to 7 classes) is loaded whole."""
    src = build_vit("timm:test_vit", 7)
    f = tmp_path / "w.safetensors"
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(f))
    vit = build_vit("timm:test_vit", pretrained_file=f)
    assert vit.num_classes == 7
    torch.testing.assert_close(vit.head.weight, src.head.weight)


def test_latency_twin_copies_everything_but_the_weights(tmp_path):
    """scripts/latency_twin.py: a random-weight model of another architecture that serves the same Γ,
    tasks and classes as the shipped one, and loads back as a checkpoint (profiling latency needs
    nothing more)."""
    import importlib.util
    from pathlib import Path

    from otas.predict import default_model_path

    spec = importlib.util.spec_from_file_location("latency_twin", Path(__file__).parents[2] / "scripts/latency_twin.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    like = default_model_path()
    real = load_checkpoint(like)
    twin = mod.twin(like, "vit_small_p2")
    save_checkpoint(twin, tmp_path / "twin.safetensors")
    back = load_checkpoint(tmp_path / "twin.safetensors")
    assert back.vit.embed_dim == 384 and real.vit.embed_dim == 192
    assert back.config == real.config and back.task_classes == real.task_classes
    assert back.source_classes == real.source_classes and back.preprocess == real.preprocess
    assert back.untrained == []


def test_unreachable_pretrained_weights_are_a_clear_error(monkeypatch):
    """Offline, timm's hub download raises an OSError (huggingface_hub's LocalEntryNotFoundError is
    one): a one-line ValueError naming the way out, not the hub's traceback."""
    import timm

    def offline(*a, **kw):
        raise FileNotFoundError("An error happened while trying to locate the file on the Hub\nmore")

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(ValueError, match="cannot fetch timm:vit_tiny_patch16_224's pretrained .*--pretrained-file"):
        build_vit("timm:vit_tiny_patch16_224", 10, pretrained=True)


def test_a_saved_models_capped_merge_schedule_is_logged_not_warned(tmp_path, caplog):
    """Building a model whose γ asks for more merges than its last blocks hold warns (`MergeCapWarning`); a
    saved model's schedule is its own, profiled as it is, so loading it logs the schedule at INFO instead."""
    torch.manual_seed(0)
    vit = build_vit("vit_tiny_p2", 5, img_size=16, depth=4)  # 65 tokens: γ = -20 runs short in the last blocks
    with pytest.warns(MergeCapWarning):
        m = AdaptiveViT(vit, AdaptConfig(gammas=(-20, 0), tasks={"novel": 5}), source_classes=list("abcde"))
    save_checkpoint(m.eval(), tmp_path / "m.safetensors", {})
    with warnings.catch_warnings(), caplog.at_level(logging.INFO, logger="otas.models.checkpoint"):
        warnings.simplefilter("error", MergeCapWarning)
        back = load_checkpoint(tmp_path / "m.safetensors")
    assert back.merge_caps == m.merge_caps and -20 in back.merge_caps
    assert "merge schedule" in caplog.text and "gamma=-20" in caplog.text
