"""Model registry: name -> timm VisionTransformer.

Our own architectures are ViTs for 32x32 images with patch 2, i.e. 256 patches + 1 class token =
257 tokens: the sequence length of a ViT-B/16 at 256 px (and close to 197 at 224 px), so merging
and prompting act on a realistic number of tokens while training stays affordable on CIFAR-10.
Any other timm ViT can be used by name as ``timm:<name>`` (pretrained weights from the hub, or from
a local file for offline use).
"""

from __future__ import annotations

from typing import Any

from torch import nn

ARCHS: dict[str, dict[str, Any]] = {
    "vit_tiny_p2": dict(img_size=32, patch_size=2, embed_dim=192, depth=12, num_heads=3),
    "vit_small_p2": dict(img_size=32, patch_size=2, embed_dim=384, depth=12, num_heads=6),
    "vit_base_p2": dict(img_size=32, patch_size=2, embed_dim=768, depth=12, num_heads=12),
}


def build_vit(
    arch: str,
    num_classes: int,
    drop_path_rate: float = 0.0,
    pretrained: bool = False,
    pretrained_file: str | None = None,
    **overrides: Any,
) -> nn.Module:
    """A timm VisionTransformer for `arch` (a key of ARCHS, or ``timm:<timm model name>``)."""
    from timm.models.vision_transformer import VisionTransformer

    if arch.startswith("timm:"):
        import timm

        kwargs: dict[str, Any] = dict(num_classes=num_classes, drop_path_rate=drop_path_rate, **overrides)
        if pretrained_file:
            kwargs["pretrained_cfg_overlay"] = dict(file=pretrained_file)
        try:
            vit = timm.create_model(arch[5:], pretrained=pretrained or bool(pretrained_file), **kwargs)
        except RuntimeError as e:  # unknown model name
            raise ValueError(f"timm cannot build {arch[5:]!r}: {e}") from e
        vit.otas_build = {"arch": arch, "overrides": overrides}  # how to rebuild it from a checkpoint
        return vit
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; known: {sorted(ARCHS)} or 'timm:<name>'")
    if pretrained or pretrained_file:
        raise ValueError(f"{arch} has no pretrained weights; train it with `otas train backbone`")
    vit = VisionTransformer(num_classes=num_classes, drop_path_rate=drop_path_rate, **{**ARCHS[arch], **overrides})
    vit.otas_build = {"arch": arch, "overrides": overrides}  # how to rebuild it from a checkpoint
    return vit
