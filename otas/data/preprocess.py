"""A model's input preprocessing, declared once: size, resize and crop, mean and std. No torch.

The values come from timm's `pretrained_cfg` (the one timm's own `create_transform` reads), or, for
our own 32x32 architectures, from CIFAR-10. They are stored in the checkpoint, and every path that
feeds the model reads them from there: training, evaluation, profiling, `otas predict` and the
server. The host does the geometry (`fit`: PIL resize and crop, to uint8 (size, size, 3)); the
device does the arithmetic (`otas.data.transforms.Normalize`: /255, minus mean, over std).

`fit` is timm's eval transform (`timm.data.create_transform(..., is_training=False)`) step by
step: "center" resizes the shorter side to floor(size / crop_pct) and crops the centre; "squash"
resizes both sides to floor(size / crop_pct) and crops the centre.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from PIL import Image

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
INTERPOLATIONS = {"bilinear": Image.BILINEAR, "bicubic": Image.BICUBIC, "nearest": Image.NEAREST}
CROP_MODES = ("center", "squash")


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the model's input."""

    size: int
    """Side of the square input, pixels (the ViT's patch_embed.img_size)."""
    mean: tuple[float, float, float] = CIFAR_MEAN
    """Per-channel (RGB) mean subtracted from pixels scaled to [0, 1]."""
    std: tuple[float, float, float] = CIFAR_STD
    """Per-channel (RGB) standard deviation the pixels are divided by."""
    interpolation: str = "bilinear"
    """PIL resampling filter of the resize: bilinear, bicubic or nearest."""
    crop_pct: float = 1.0
    """The image is resized to floor(size / crop_pct), then the centre `size` pixels are kept."""
    crop_mode: str = "squash"
    """center: resize the shorter side (aspect kept); squash: resize both sides (aspect lost)."""

    def __post_init__(self) -> None:
        try:
            object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
            object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        except (TypeError, ValueError):
            raise ValueError(f"preprocess mean={self.mean!r}, std={self.std!r}: use 3 numbers each (RGB)") from None
        if not isinstance(self.size, int) or isinstance(self.size, bool) or self.size < 1:
            raise ValueError(f"preprocess size={self.size!r}: use a positive number of pixels")
        finite = all(math.isfinite(v) for v in self.mean + self.std)  # NaN or inf: every input the same, or NaN
        if len(self.mean) != 3 or len(self.std) != 3 or not finite or not all(s > 0 for s in self.std):
            raise ValueError(f"preprocess mean={self.mean}, std={self.std}: use 3 finite values each (RGB), std > 0")
        if isinstance(self.crop_pct, bool) or not isinstance(self.crop_pct, int | float):
            raise ValueError(f"preprocess crop_pct={self.crop_pct!r}: use a fraction in (0, 1]")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"preprocess interpolation={self.interpolation!r}: use one of {sorted(INTERPOLATIONS)}")
        if not 0 < self.crop_pct <= 1:
            raise ValueError(f"preprocess crop_pct={self.crop_pct!r}: use a fraction in (0, 1]")
        if self.crop_mode not in CROP_MODES:
            raise ValueError(f"preprocess crop_mode={self.crop_mode!r}: use one of {CROP_MODES}")

    @property
    def scale_size(self) -> int:
        return math.floor(self.size / self.crop_pct)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocess:
        known = {"size", "mean", "std", "interpolation", "crop_pct", "crop_mode"}
        extra = sorted(set(d) - known)
        if extra:
            raise ValueError(f"preprocess has unknown keys {extra}; known: {sorted(known)}")
        if "size" not in d:
            raise ValueError("preprocess has no size; give the model's input side in pixels")
        return cls(**d)

    @classmethod
    def from_vit(cls, vit: Any) -> Preprocess:
        """From a timm ViT: its input size, and timm's `pretrained_cfg` for the rest (our own
        architectures carry CIFAR-10's there, see `otas.models.registry`)."""
        h, w = vit.patch_embed.img_size
        if h != w:
            raise ValueError(f"input size {h}x{w} is not square; build the model for a square input (img_size=N)")
        cfg = getattr(vit, "pretrained_cfg", None) or {}
        if not cfg.get("mean"):  # a bare VisionTransformer: our own defaults (CIFAR-10, squash)
            return cls(size=int(h))
        mode = cfg.get("crop_mode") or "center"
        if mode not in CROP_MODES:
            raise ValueError(f"timm crop_mode {mode!r} is not supported; use one of {CROP_MODES} (pretrained_cfg)")
        return cls(
            size=int(h),
            mean=tuple(cfg.get("mean", CIFAR_MEAN)),
            std=tuple(cfg.get("std", CIFAR_STD)),
            interpolation=cfg.get("interpolation") or "bilinear",
            crop_pct=float(cfg.get("crop_pct") or 1.0),
            crop_mode=mode,
        )

    def fit(self, im: Image.Image, reducing_gap: float | None = None) -> Image.Image:
        """An RGB or L image -> the model's (size, size) crop, as timm's eval transform makes it.

        `reducing_gap` (PIL): box-reduce a much larger image by an integer factor first (fast;
        pixels differ from the exact resize by a rounding or so). None: exactly timm's result."""
        w, h = im.size
        s = self.scale_size
        if self.crop_mode == "squash":
            new = (s, s)
        elif w <= h:  # torchvision's Resize(int): the shorter side to s, the longer one truncated
            new = (s, int(s * h / w))
        else:
            new = (int(s * w / h), s)
        if new != (w, h):
            im = im.resize(new, INTERPOLATIONS[self.interpolation], reducing_gap=reducing_gap)
        if new != (self.size, self.size):
            top = int(round((new[1] - self.size) / 2.0))
            left = int(round((new[0] - self.size) / 2.0))
            im = im.crop((left, top, left + self.size, top + self.size))
        return im

    def draft_size(self) -> tuple[int, int]:
        """The smallest decoded size a reduced (JPEG DCT-scaled) decode may give without loss of
        the pixels `fit` keeps."""
        return (self.scale_size, self.scale_size)
