import pytest
import torch

from otas.adapt import AdaptConfig, AdaptiveViT
from otas.models.registry import build_vit


def small_model(gammas=(-8, -4, 0, 2, 4), deep=True, img_size=16, tasks=None, seed=0) -> AdaptiveViT:
    """A ViT-Tiny-shaped model on 16x16 images (65 tokens) with random weights: fast on a CPU."""
    torch.manual_seed(seed)
    vit = build_vit("vit_tiny_p2", 5, img_size=img_size, depth=4)
    model = AdaptiveViT(vit, AdaptConfig(gammas=gammas, deep=deep, tasks=tasks or {"a": 3, "b": 5}))
    for p in model.parameters():  # non-trivial heads and prompts
        if p.ndim >= 1:
            torch.nn.init.normal_(p, std=0.05) if p.ndim < 2 else None
    return model.eval()


@pytest.fixture
def model() -> AdaptiveViT:
    return small_model()
