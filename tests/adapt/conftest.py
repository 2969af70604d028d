import pytest
import torch

from otas.adapt import AdaptConfig, AdaptiveViT
from otas.models.registry import build_vit


def small_model(gammas=(-8, -4, 0, 2, 4), deep=True, img_size=16, tasks=None, seed=0, **overrides) -> AdaptiveViT:
    """A ViT-Tiny-shaped model on 16x16 images (65 tokens) with timm's default init: fast on a CPU.

    Every block really transforms the tokens (each moves the residual stream by ~14% of its scale),
    so a wrong merge or a wrong attention changes the output. Prompts are drawn at the scale of
    trained ones (std ~0.08 in otas/assets/vit_tiny_p2_c5.safetensors) rather than init's 0.02.
    `overrides` go to the timm VisionTransformer (e.g. reg_tokens, global_pool, class_token).
    """
    torch.manual_seed(seed)
    vit = build_vit("vit_tiny_p2", 5, img_size=img_size, depth=4, **overrides)
    model = AdaptiveViT(vit, AdaptConfig(gammas=gammas, deep=deep, tasks=tasks or {"a": 3, "b": 5}))
    for p in model.prompts.values():
        torch.nn.init.normal_(p, std=0.08)
    return model.eval()


@pytest.fixture
def model() -> AdaptiveViT:
    return small_model()
