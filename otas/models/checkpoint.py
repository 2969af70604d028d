"""Checkpoints of AdaptiveViT as safetensors: weights plus a JSON header that rebuilds the model.

Never pickle: safetensors files hold only tensors and strings, so loading an untrusted file
cannot run code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from otas.adapt import AdaptConfig, AdaptiveViT
from otas.data.preprocess import Preprocess
from otas.models.registry import build_vit

FORMAT = "otas.checkpoint/1"


def save_checkpoint(
    model: AdaptiveViT, path: str | Path, meta: dict[str, Any] | None = None, dtype: torch.dtype | None = None
) -> None:
    """Write `model` (built by `build_vit`) to `path`; `dtype` (e.g. torch.float16) shrinks the file."""
    build = getattr(model.vit, "otas_build", None)
    if build is None:
        raise ValueError("the model's ViT was not built by otas.models.build_vit, so it cannot be rebuilt")
    state = {
        k: (v.to(dtype) if dtype and v.is_floating_point() else v).contiguous().cpu()
        for k, v in model.state_dict().items()
    }
    header = {
        "format": FORMAT,
        "arch": build["arch"],
        "arch_overrides": build["overrides"],
        "num_classes": model.vit.num_classes,
        "adapt": {
            "gammas": list(model.config.gammas),
            "deep": model.config.deep,
            "proportional_attn": model.config.proportional_attn,
            "merge_every": model.config.merge_every,
            "tasks": model.config.tasks,
        },
        "preprocess": model.preprocess.to_dict(),
        "source_classes": model.source_classes,
        "task_classes": model.task_classes,
        "meta": meta or {},
    }
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"otas": json.dumps(header)})


def read_header(path: str | Path) -> dict[str, Any]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        md = f.metadata() or {}
    if "otas" not in md:
        raise ValueError(f"{path} is not an otas checkpoint (no 'otas' metadata)")
    header = json.loads(md["otas"])
    if header.get("format") != FORMAT:
        raise ValueError(f"{path}: unsupported checkpoint format {header.get('format')!r}, expected {FORMAT}")
    return header


def model_from_header(
    header: dict[str, Any], gammas: tuple[int, ...] | None = None, arch: str | None = None
) -> AdaptiveViT:
    """The untrained model a checkpoint header describes (Γ, tasks, classes, preprocessing); `arch`
    builds another architecture with all of that instead (its own defaults, no overrides)."""
    cfg = dict(header["adapt"])
    if gammas is not None:
        cfg["gammas"] = gammas
    overrides = header.get("arch_overrides", {}) if arch is None else {}
    vit = build_vit(arch or header["arch"], header["num_classes"], **overrides)
    pre = Preprocess.from_dict(header["preprocess"]) if "preprocess" in header else None  # older files: the arch's
    model = AdaptiveViT(vit, AdaptConfig(**cfg), header.get("source_classes"), pre)
    model.task_classes = header.get("task_classes") or {}
    return model


def load_checkpoint(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    gammas: tuple[int, ...] | None = None,
) -> AdaptiveViT:
    """Rebuild the model from `path` (weights upcast/downcast to `dtype`), in eval mode."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"checkpoint {p} does not exist")
    header = read_header(p)
    model = model_from_header(header, gammas)
    state = load_file(str(p))
    missing, unexpected = model.load_state_dict(state, strict=False)
    allowed_missing = [k for k in missing if k.startswith(("prompts.", "heads."))]
    if unexpected or len(allowed_missing) != len(missing):
        raise ValueError(
            f"{p}: checkpoint does not match its architecture (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    model.untrained = sorted({k.split(".")[1] for k in missing})  # type: ignore[attr-defined]
    return model.to(device=device, dtype=dtype).eval()
