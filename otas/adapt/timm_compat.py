"""The timm versions and model classes token adaptation is written against, checked at import."""

from __future__ import annotations

import timm
from timm.layers import Attention
from timm.models.vision_transformer import Block, VisionTransformer
from torch import nn

TIMM_MIN, TIMM_MAX = (1, 0, 9), (1, 1, 0)  # tested on 1.0.x; the Block/Attention layout we rely on


def _version(v: str) -> tuple[int, ...]:
    return tuple(int("".join(c for c in part if c.isdigit()) or 0) for part in v.split(".")[:3])


if not (TIMM_MIN <= _version(timm.__version__) < TIMM_MAX):
    raise ImportError(
        f"otas needs timm >= {'.'.join(map(str, TIMM_MIN))}, < {'.'.join(map(str, TIMM_MAX))}; "
        f"found {timm.__version__}: pip install 'timm>=1.0.15,<1.1'"
    )


def check_vit(vit: nn.Module) -> None:
    """Token adaptation needs a plain timm VisionTransformer of standard `Block`s with standard `Attention`."""
    if not isinstance(vit, VisionTransformer):
        raise ValueError(f"token adaptation needs a timm VisionTransformer, got {type(vit).__name__}")
    if vit.dynamic_img_size:
        raise ValueError("dynamic_img_size ViTs are not supported: build the model for one image size")
    if vit.global_pool not in ("token", "avg"):
        raise ValueError(
            f"global_pool={vit.global_pool!r} is not supported with token adaptation (a merged token stands for "
            f"several patches, so pooling must be the class token or a size-weighted average): use 'token' or 'avg'"
        )
    for i, blk in enumerate(vit.blocks):
        # merging runs a block piecewise (norm1, attn, merge, norm2, mlp): only the pre-norm Block's layout fits
        if type(blk) is not Block:
            raise ValueError(
                f"block {i} is {type(blk).__name__}; token adaptation supports only timm's standard pre-norm "
                f"Block (timm.models.vision_transformer.Block): build the model with the default block_fn"
            )
        if type(blk.attn) is not Attention:
            raise ValueError(f"block {i} uses {type(blk.attn).__name__}; only timm's standard Attention is supported")
