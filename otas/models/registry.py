"""Model registry: name -> timm VisionTransformer.

Our own architectures are ViTs for 32x32 images with patch 2, i.e. 256 patches + 1 class token =
257 tokens: the sequence length of a ViT-B/16 at 256 px (and close to 197 at 224 px), so merging
and prompting act on a realistic number of tokens while training stays affordable on CIFAR-10.
Any other timm ViT can be used by name as ``timm:<name>`` (pretrained weights from the hub, or from
a local file for offline use).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from otas.data.preprocess import CIFAR_MEAN, CIFAR_STD

ARCHS: dict[str, dict[str, Any]] = {
    "vit_tiny_p2": dict(img_size=32, patch_size=2, embed_dim=192, depth=12, num_heads=3),
    "vit_small_p2": dict(img_size=32, patch_size=2, embed_dim=384, depth=12, num_heads=6),
    "vit_base_p2": dict(img_size=32, patch_size=2, embed_dim=768, depth=12, num_heads=12),
}

OWN_CFG: dict[str, Any] = dict(
    mean=CIFAR_MEAN, std=CIFAR_STD, interpolation="bilinear", crop_pct=1.0, crop_mode="squash", num_classes=5
)
"""The timm `pretrained_cfg` of our own architectures: CIFAR-10 statistics, a plain resize."""


def build_vit(
    arch: str,
    num_classes: int | None = None,
    drop_path_rate: float = 0.0,
    pretrained: bool = False,
    pretrained_file: str | Path | None = None,
    **overrides: Any,
) -> nn.Module:
    """A timm VisionTransformer for `arch` (a key of ARCHS, or ``timm:<timm model name>``).

    `num_classes` of the backbone's own head; None: timm's (that of its pretrained weights, or of
    `pretrained_file`'s head). `pretrained_file`: a local .safetensors file of timm weights, for
    offline use; `pretrained` alone downloads timm's weights from its hub."""
    from timm.models.vision_transformer import VisionTransformer

    if arch.startswith("timm:"):
        vit = _build_timm(arch[5:], num_classes, drop_path_rate, pretrained, pretrained_file, overrides)
    else:
        if arch not in ARCHS:
            raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCHS)} or 'timm:<name>'")
        if pretrained or pretrained_file:
            raise ValueError(f"{arch} has no pretrained weights; train it with `otas train backbone`")
        vit = VisionTransformer(
            num_classes=5 if num_classes is None else num_classes,
            drop_path_rate=drop_path_rate,
            **{**ARCHS[arch], **overrides},
        )
        # our preprocessing, where timm keeps a model's (read by otas.data.preprocess.Preprocess.from_vit)
        vit.pretrained_cfg = dict(OWN_CFG, input_size=(3, *vit.patch_embed.img_size))
    vit.otas_build = {"arch": arch, "overrides": overrides}  # how to rebuild it from a checkpoint
    return vit


def check_timm_name(name: str) -> None:
    """Raise ValueError, with similar names, if timm has no model `name` (without ``timm:``)."""
    import timm

    if not timm.is_model(name):
        near = timm.list_models(f"*{name.split('.')[0][:12]}*")[:8]
        raise ValueError(f"timm has no model {name!r}; similar names: {near or 'none'} (see timm.list_models())")


def _build_timm(name, num_classes, drop_path_rate, pretrained, pretrained_file, overrides) -> nn.Module:
    import timm

    check_timm_name(name)
    # one input size (token adaptation plans per token count); the weights are the same either way
    kwargs: dict[str, Any] = dict(drop_path_rate=drop_path_rate, dynamic_img_size=False, **overrides)
    if pretrained_file:
        f = Path(pretrained_file)
        if f.suffix != ".safetensors" or not f.is_file():
            raise ValueError(f"--pretrained-file {f}: give an existing .safetensors file (pickled weights are refused)")
        overlay = dict(kwargs.pop("pretrained_cfg_overlay", None) or {}, file=str(f))
        if (n := _head_classes(f)) is not None:
            overlay["num_classes"] = n  # the file's head: timm keeps it when num_classes agrees
            num_classes = n if num_classes is None else num_classes
        kwargs["pretrained_cfg_overlay"] = overlay
    if num_classes is not None:
        kwargs["num_classes"] = num_classes
    try:
        return timm.create_model(name, pretrained=pretrained or bool(pretrained_file), **kwargs)
    except RuntimeError as e:  # load_state_dict: missing, unexpected or mis-shaped tensors
        first = str(e).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])[:400]
        src = pretrained_file or "timm's pretrained weights"
        raise ValueError(f"weights {src} do not match timm:{name}: {detail}") from None
    except OSError as e:  # the hub unreachable (huggingface_hub's errors are OSErrors), or a cache unwritable
        why = (str(e).strip().splitlines() or [""])[0][:200]
        if pretrained_file:
            raise ValueError(f"cannot read --pretrained-file {pretrained_file} ({type(e).__name__}: {why})") from None
        raise ValueError(
            f"cannot fetch timm:{name}'s pretrained weights ({type(e).__name__}: {why}); "
            "give them as a file with --pretrained-file W.safetensors"
        ) from None


def _head_classes(path: Path) -> int | None:
    """The class count of a weights file's classifier (`head.weight`), if it has one."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            return int(f.get_slice("head.weight").get_shape()[0]) if "head.weight" in f.keys() else None
    except Exception as e:  # noqa: BLE001 - safetensors raises several types on a bad file
        raise ValueError(f"{path} is not a readable safetensors file ({type(e).__name__}: {e})") from None
