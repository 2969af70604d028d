"""Preprocessing from the model: the served probabilities at γ = 0 equal timm's own eval transform
followed by timm's forward, for models with different sizes, crops, filters and normalisation."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from otas.adapt import AdaptConfig, AdaptiveViT
from otas.data.preprocess import CIFAR_MEAN, Preprocess
from otas.engine.images import decode_image
from otas.engine.runner import Runner
from otas.models.checkpoint import load_checkpoint, save_checkpoint
from otas.models.registry import build_vit
from otas.predict import Predictor

IMAGENET = dict(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225), interpolation="bilinear", crop_pct=0.875)
MODELS = {
    # timm's test ViT: mean = std = 0.5, bicubic, shorter side to 168 then a centre crop of 160
    "test_vit": ("timm:test_vit", {}),
    # the same family with ImageNet statistics and another crop, through timm's own overlay
    "test_vit2-imagenet": ("timm:test_vit2", {"pretrained_cfg_overlay": IMAGENET}),
    # our own 32x32 architecture: CIFAR-10 statistics, a plain resize of both sides
    "vit_tiny_p2": ("vit_tiny_p2", {"img_size": 32, "depth": 2}),
}


def png(w: int, h: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8)
    im = Image.fromarray(base).resize((w, h), Image.BICUBIC)  # smooth enough that filters differ little
    buf = io.BytesIO()
    im.save(buf, "PNG")
    return buf.getvalue()


def timm_reference(vit: torch.nn.Module, data: bytes) -> torch.Tensor:
    """timm's own preprocessing (its eval transform from the model's data config) and forward."""
    import timm.data

    tf = timm.data.create_transform(**timm.data.resolve_model_data_config(vit), is_training=False)
    with Image.open(io.BytesIO(data)) as im:
        x = tf(im.convert("RGB"))[None]
    with torch.no_grad():
        return vit(x).softmax(-1)


@pytest.fixture(scope="module", params=sorted(MODELS))
def ckpt(request, tmp_path_factory):
    arch, kw = MODELS[request.param]
    torch.manual_seed(0)
    vit = build_vit(arch, 7, **kw).eval()
    for p in vit.parameters():  # realistic scales: not a near-identity network
        p.data.add_(torch.randn_like(p) * 0.02)
    path = tmp_path_factory.mktemp("pre") / f"{request.param}.safetensors"
    save_checkpoint(AdaptiveViT(vit, AdaptConfig(gammas=(-2, 0, 2), tasks={"t": 3})), path)
    return path


def test_served_probs_equal_timm_preprocessing_and_forward(ckpt):
    model = load_checkpoint(ckpt)
    vit = build_vit(**_rebuild(ckpt)).eval()
    vit.load_state_dict({k[4:]: v for k, v in model.state_dict().items() if k.startswith("vit.")})
    runner = Runner(model, "cpu", max_batch=4)
    size = model.preprocess.size
    for i, (w, h) in enumerate([(size + 37, size + 9), (size + 3, 2 * size), (size, size)]):
        data = png(w, h, i)
        got = runner.forward(torch.from_numpy(decode_image(data, runner.preprocess)[None]), "source", 0)
        want = timm_reference(vit, data)
        np.testing.assert_allclose(got, want.numpy(), atol=2e-5, rtol=1e-4, err_msg=f"{ckpt.stem} {w}x{h}")
        # `otas predict` decodes with the same declaration
        pred = Predictor(model)
        np.testing.assert_array_equal(pred.decode(data), decode_image(data, runner.preprocess))


def _rebuild(ckpt) -> dict:
    from otas.models.checkpoint import read_header

    h = read_header(ckpt)
    return dict(arch=h["arch"], num_classes=h["num_classes"], **h["arch_overrides"])


def test_preprocessing_is_stored_in_the_checkpoint(ckpt):
    from otas.models.checkpoint import read_header

    stored = Preprocess.from_dict(read_header(ckpt)["preprocess"])
    assert stored == load_checkpoint(ckpt).preprocess
    if ckpt.stem == "vit_tiny_p2":
        assert stored.mean == CIFAR_MEAN and stored.crop_mode == "squash"
    elif ckpt.stem == "test_vit":
        assert stored.mean == (0.5, 0.5, 0.5) and stored.interpolation == "bicubic" and stored.crop_pct == 0.95
    else:
        assert stored.mean == IMAGENET["mean"] and stored.crop_pct == 0.875


def test_older_checkpoints_get_their_architecture_default():
    """The shipped model predates the stored declaration: it reads as CIFAR-10, a plain resize."""
    from otas.predict import default_model_path

    pre = load_checkpoint(default_model_path()).preprocess
    assert pre == Preprocess(32)


def test_bad_preprocess_values_are_refused():
    with pytest.raises(ValueError, match="crop_pct"):
        Preprocess(32, crop_pct=1.5)
    with pytest.raises(ValueError, match="interpolation"):
        Preprocess(32, interpolation="lanczos9")
    with pytest.raises(ValueError, match="unknown keys"):
        Preprocess.from_dict({"size": 32, "colour": "red"})


def test_probabilities_served_over_http_equal_timm(tmp_path):
    """The whole served path for a model with non-CIFAR statistics: an encoded image over HTTP ->
    the server's decoder -> the runner's fast path at γ = 0 -> the classify answer."""
    import httpx

    from otas.config import HttpConfig, SchedulerConfig
    from otas.profile.table import Profile
    from otas.server.app import ServerThread
    from otas.server.main import build
    from otas.types import App

    torch.manual_seed(0)
    vit = build_vit("timm:test_vit", 7).eval()
    path = tmp_path / "m.safetensors"
    save_checkpoint(AdaptiveViT(vit, AdaptConfig(gammas=(-2, 0), tasks={"t": 3})), path)
    runner = Runner(load_checkpoint(path), "cpu", max_batch=4)
    lat = {g: {1: 5.0, 4: 10.0} for g in (-2, 0)}
    prof = Profile("m", "cpu", "float32", [-2, 0], [1, 4], {"source": {-2: 0.5, 0: 0.6}}, lat)
    app, _ = build(runner, prof, [App("cam", 2000.0, 1.0, "source")], "fixed:0", SchedulerConfig(max_batch=4),
                   http=HttpConfig(drain_s=0.0))  # fmt: skip
    data = png(211, 173, 5)
    with ServerThread(app) as srv:
        r = httpx.post(f"{srv.url}/v1/apps/cam/classify?top_k=7", files={"image": ("x.png", data)}, timeout=30)
    assert r.status_code == 200 and r.json()["gamma"] == 0, r.text
    got = {d["label"]: d["prob"] for d in r.json()["top_k"]}
    want = timm_reference(vit, data)[0]
    np.testing.assert_allclose([got[str(i)] for i in range(7)], want.numpy(), atol=2e-6)
