"""Token adaptation of timm ViTs: merging (γ < 0), prompting (γ > 0), stock (γ = 0)."""

from otas.adapt.config import DEFAULT_GAMMAS, AdaptConfig
from otas.adapt.vit import SOURCE, AdaptiveViT, MergeCapWarning

__all__ = ["DEFAULT_GAMMAS", "SOURCE", "AdaptConfig", "AdaptiveViT", "MergeCapWarning"]
