"""Checkpoints of AdaptiveViT as safetensors: weights plus a JSON header that rebuilds the model.

Never pickle: safetensors files hold only tensors and strings, so loading an untrusted file
cannot run code. Nor may it crash or exhaust memory: the header is checked field by field
(`check_header`), the model it describes is first built on the meta device and its tensors compared
with the file's (names and shapes), so no memory is allocated for a model the file does not hold,
and every defect is a ValueError naming the file and the field.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from otas.adapt import AdaptConfig, AdaptiveViT, MergeCapWarning
from otas.data.preprocess import Preprocess
from otas.models.registry import build_vit

log = logging.getLogger(__name__)

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


MAX_CLASSES = 100_000
"""Classes of a head (a header asking for more is refused before anything is built)."""
MAX_GAMMA = 4096
"""|γ| of any configured setting (prompts of γ tokens are allocated from the header alone)."""
SIZE_LIMITS = {"depth": 256, "num_heads": 1024, "embed_dim": 131_072, "patch_size": 1024, "img_size": 16_384}
"""Bounds on a header's architecture sizes (`arch_overrides`), far above any ViT's."""


def read_header(path: str | Path) -> dict[str, Any]:
    """The checked otas header of a checkpoint file; ValueError naming the file and the defect."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            md = f.metadata() or {}
    except Exception as e:  # noqa: BLE001 - safetensors' own error type for any malformed file
        raise ValueError(f"{path} is not a readable safetensors file ({str(e)[:300]}); re-export it") from None
    if "otas" not in md:
        raise ValueError(f"{path} is not an otas checkpoint (no 'otas' metadata)")
    try:
        header = json.loads(md["otas"])
    except (ValueError, RecursionError) as e:
        raise ValueError(f"{path}: its 'otas' metadata is not a JSON object ({str(e)[:200]})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: its 'otas' metadata is {type(header).__name__}, not a JSON object")
    if header.get("format") != FORMAT:
        raise ValueError(f"{path}: unsupported checkpoint format {header.get('format')!r}, expected {FORMAT}")
    check_header(header, path)
    return header


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_header(h: dict[str, Any], where: str | Path = "checkpoint") -> None:
    """Raise ValueError unless every field of a header has the type and range `save_checkpoint` writes."""

    def bad(field: str, want: str) -> ValueError:
        return ValueError(f"{where}: header field {field}={str(h.get(field))[:100]!r}; expected {want}")

    if not isinstance(h.get("arch"), str) or not h["arch"]:
        raise bad("arch", "an architecture name")
    ov = h.get("arch_overrides", {})
    if not isinstance(ov, dict) or not all(isinstance(k, str) for k in ov):
        raise bad("arch_overrides", "an object of timm model arguments")  # their values: timm checks, meta build
    for k, top in SIZE_LIMITS.items():  # the sizes the meta build walks (a depth of 100,000 took minutes and GBs)
        v = ov.get(k, 1)
        sizes = v if isinstance(v, list) and len(v) == 2 and k == "img_size" else [v]
        if not all(_is_int(x) and 1 <= x <= top for x in sizes):
            raise ValueError(
                f"{where}: header field arch_overrides.{k}={str(v)[:100]!r}; expected an integer in [1, {top}]"
            )
    if not _is_int(h.get("num_classes")) or not 1 <= h["num_classes"] <= MAX_CLASSES:
        raise bad("num_classes", f"an integer in [1, {MAX_CLASSES}]")
    adapt = h.get("adapt")
    known = {f.name for f in dataclasses.fields(AdaptConfig)}
    if not isinstance(adapt, dict) or not set(adapt) <= known:
        raise bad("adapt", f"an object with keys among {sorted(known)}")
    gammas = adapt.get("gammas", [0])
    if not isinstance(gammas, list) or not all(_is_int(g) and abs(g) <= MAX_GAMMA for g in gammas):
        raise bad("adapt", f"gammas as a list of integers within ±{MAX_GAMMA}")
    tasks = adapt.get("tasks", {})
    if not isinstance(tasks, dict) or not all(
        isinstance(k, str) and _is_int(n) and 2 <= n <= MAX_CLASSES for k, n in tasks.items()
    ):
        raise bad("adapt", f"tasks as an object of task name -> classes in [2, {MAX_CLASSES}]")
    if not all(isinstance(adapt[k], int) for k in known - {"gammas", "tasks"} if k in adapt):  # bool is an int
        raise bad("adapt", "deep, proportional_attn and merge_every as booleans or integers")
    if "preprocess" in h and not isinstance(h["preprocess"], dict):
        raise bad("preprocess", "an object (Preprocess.to_dict)")
    src = h.get("source_classes")
    if src is not None and not (isinstance(src, list) and all(isinstance(c, str) for c in src)):
        raise bad("source_classes", "a list of class names")
    tc = h.get("task_classes") or {}
    if not isinstance(tc, dict) or not all(
        isinstance(k, str) and isinstance(v, list) and all(isinstance(c, str) for c in v) for k, v in tc.items()
    ):
        raise bad("task_classes", "an object of task name -> list of class names")
    if not isinstance(h.get("meta", {}), dict):
        raise bad("meta", "an object")
    if src is not None and len(src) != h["num_classes"]:
        raise bad("source_classes", f"{h['num_classes']} names, one per class of num_classes")
    if any(k in tasks and len(v) != tasks[k] for k, v in tc.items()):
        raise bad("task_classes", "as many names per task as adapt.tasks gives it classes")
    for field, where_, names in [("source_classes", "", src or [])] + [("task_classes", f" of task {k!r}", v)
                                                                         for k, v in tc.items()]:  # fmt: skip
        if len(set(names)) < len(names):  # an answer's label must say which class it is
            twice = sorted(c for c, n in Counter(names).items() if n > 1)[:5]
            raise bad(field, f"distinct class names{where_} (given more than once: {twice})")


def model_from_header(
    header: dict[str, Any], gammas: tuple[int, ...] | None = None, arch: str | None = None
) -> AdaptiveViT:
    """The untrained model a checkpoint header describes (Γ, tasks, classes, preprocessing); `arch`
    builds another architecture with all of that instead (its own defaults, no overrides)."""
    cfg = dict(header["adapt"])
    if gammas is not None:
        cfg["gammas"] = gammas
    overrides = header.get("arch_overrides", {}) if arch is None else {}
    try:
        vit = build_vit(arch or header["arch"], header["num_classes"], **overrides)
        pre = Preprocess.from_dict(header["preprocess"]) if "preprocess" in header else None  # older files: the arch's
        with warnings.catch_warnings():  # a saved model's capped schedule is its own: `load_checkpoint` logs it
            warnings.simplefilter("ignore", MergeCapWarning)
            model = AdaptiveViT(vit, AdaptConfig(**cfg), header.get("source_classes"), pre)
    except (TypeError, KeyError, AssertionError, AttributeError, RuntimeError, ZeroDivisionError) as e:  # timm's checks
        raise ValueError(
            f"the checkpoint header describes a model that cannot be built ({type(e).__name__}: {str(e)[:200]})"
        ) from None
    model.task_classes = header.get("task_classes") or {}
    return model


def load_checkpoint(
    path: str | Path,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
    gammas: tuple[int, ...] | None = None,
    merge_every: int | None = None,
) -> AdaptiveViT:
    """Rebuild the model from `path` (weights upcast/downcast to `dtype`), in eval mode; `merge_every`:
    the merge schedule to run instead of the checkpoint's (`AdaptConfig.merge_every`; the weights are
    the same, the tokens merged are not)."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"checkpoint {p} does not exist")
    header = read_header(p)
    if merge_every is not None:
        header = {**header, "adapt": {**header["adapt"], "merge_every": merge_every}}
    try:
        _check_tensors(p, header, gammas)  # before a byte of the model is allocated
    except ValueError as e:
        raise ValueError(str(e) if str(p) in str(e) else f"{p}: {e}") from None
    model = model_from_header(header, gammas)
    if model.merge_caps:  # the schedule it was trained and profiled with, capped where the last blocks run short
        caps = "; ".join(f"gamma={g}: {s}" for g, s in sorted(model.merge_caps.items()))
        log.info("merge schedule of %s: r capped in the last blocks (%d tokens), merged per block: %s", p.name,
                 model.num_tokens, caps)  # fmt: skip
    state = load_file(str(p))
    if bad := [k for k, v in state.items() if not torch.isfinite(v).all()]:
        raise ValueError(f"{p}: tensors holding NaN or infinity: {bad[:3]}; the weights are corrupt")
    missing, unexpected = model.load_state_dict(state, strict=False)
    model.untrained = sorted({k.split(".")[1] for k in missing})  # type: ignore[attr-defined]
    return model.to(device=device, dtype=dtype).eval()


def _check_tensors(path: Path, header: dict[str, Any], gammas: tuple[int, ...] | None) -> None:
    """The model the header describes, built on the meta device (no memory), against the file's
    tensors: same names (prompts and heads may be absent: untrained) and shapes, floating point."""
    from safetensors import safe_open

    with torch.device("meta"):
        skeleton = model_from_header(header, gammas)
    want = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    with safe_open(str(path), "pt") as f:
        slices = {k: f.get_slice(k) for k in f.keys()}
        have = {k: tuple(s.get_shape()) for k, s in slices.items()}
        dtypes = {k: s.get_dtype() for k, s in slices.items()}
    missing = [k for k in want if k not in have and not k.startswith(("prompts.", "heads."))]
    unexpected = [k for k in have if k not in want]
    if missing or unexpected:
        raise ValueError(
            f"{path}: checkpoint does not match its architecture (missing {missing[:5]}, unexpected {unexpected[:5]})"
        )
    shapes = [f"{k} {have[k]} (expected {want[k]})" for k in have if have[k] != want[k]]
    if shapes:
        raise ValueError(f"{path}: tensors of the wrong shape: {', '.join(shapes[:3])}")
    ints = [k for k, d in dtypes.items() if d not in ("F16", "BF16", "F32", "F64")]
    if ints:
        raise ValueError(f"{path}: tensors that are not floating point: {ints[:3]}; weights are F16/BF16/F32")
