"""Train a ViT from scratch on the source task (5 CIFAR-10 classes), the fast way on a GPU.

Recipe: images decoded once and kept on the device as uint8; augmentation on the device
(optionally TrivialAugment, random crop + flip, Mixup/CutMix, label smoothing); AdamW with warm-up
and cosine decay; bf16 autocast and `torch.compile` on CUDA. With a `teacher` (`otas.train.teacher`),
the loss mixes the labels' cross entropy with distillation from the teacher's outputs on the same
augmented batch (soft, or hard as DeiT). Training resumes from `<out>.state.safetensors`, so a
long run can be split across several calls under a time budget.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, TextColumn, TimeRemainingColumn

from otas.adapt import AdaptConfig, AdaptiveViT
from otas.data.transforms import AUGMENTS, mix
from otas.models.checkpoint import save_checkpoint
from otas.models.registry import build_vit
from otas.progress import Progress
from otas.train.checks import check_optim
from otas.train.common import autocast, batches, cosine_lr, evaluate, pick_device, source_data, train_batch
from otas.train.state import load_state, save_state
from otas.train.teacher import KD_MODES, distill_loss, load_teacher


@dataclass
class BackboneConfig:
    arch: str = "vit_tiny_p2"
    """Architecture from `otas.models.registry.ARCHS`."""
    task: str = "source"
    epochs: int = 150
    batch_size: int = 512
    lr: float = 1e-3
    """Peak AdamW learning rate at batch 512 (scaled linearly with the batch size)."""
    weight_decay: float = 0.05
    warmup_epochs: int = 5
    drop_path: float = 0.1
    compile: bool = True
    """torch.compile the model on CUDA."""
    eval_every: int = 10
    teacher: str | None = None
    """A teacher from `otas train teacher` to distil from (None: labels only)."""
    kd_weight: float = 0.5
    """Share of the distillation loss when a teacher is given (the rest is the labels' cross entropy)."""
    kd_temperature: float = 1.0
    kd_mode: str = "soft"
    """"soft": KL to the teacher's distribution; "hard": cross entropy to its top class (DeiT's hard distillation)."""
    augment: str | None = None
    """An `otas.data.transforms.AUGMENTS` policy before crop and flip ("trivial"), or None."""
    grow_from: str | None = None
    """A trained checkpoint of a narrower ViT (same depth, patch and head size, e.g. the shipped Tiny) to start
    from, widened to `arch` so that it computes the same function (`otas.train.grow`); None: random weights."""
    grow_spread: float = 0.5
    """How unevenly a grown weight is split among its copies (`otas.train.grow.widen_vit`)."""
    time_budget_s: float | None = None
    """Stop (and save a resumable state) once this much wall time has passed."""
    seed: int = 0
    limit: int | None = None
    """Use only the first `limit` training and test images (smoke tests)."""

    def __post_init__(self) -> None:
        check_optim(self.lr, self.weight_decay, self.time_budget_s, self.drop_path)
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if self.teacher and not Path(self.teacher).is_file():
            raise ValueError(
                f"teacher {self.teacher}: no such file; make one with `otas train teacher --out {self.teacher}`"
            )
        if self.grow_from and not Path(self.grow_from).is_file():
            raise ValueError(f"grow_from {self.grow_from}: no such checkpoint")
        if not 0.0 <= self.grow_spread < 1.0:
            raise ValueError(f"grow_spread must be in [0, 1), got {self.grow_spread}")
        if self.kd_mode not in KD_MODES:
            raise ValueError(f"kd_mode must be one of {', '.join(KD_MODES)}, got {self.kd_mode!r}")
        if self.augment is not None and self.augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTS)} or None, got {self.augment!r}")
        if not 0.0 <= self.kd_weight <= 1.0 or self.kd_temperature <= 0:
            raise ValueError(
                f"kd_weight must be in [0, 1] and kd_temperature > 0, got {self.kd_weight}, {self.kd_temperature}"
            )


def train_backbone(
    cfg: BackboneConfig, out: Path, data: Path | None = None, device: str | None = None, log=print
) -> dict:
    dev = pick_device(device)
    torch.manual_seed(cfg.seed)
    src = source_data(cfg.task, data, dev, cfg.limit)
    spec, n_cls = src.spec, src.num_classes
    xtr, ytr, xte, yte = src.x_train, src.y_train, src.x_test, src.y_test

    vit = build_vit(cfg.arch, n_cls, drop_path_rate=cfg.drop_path).to(dev)
    model = AdaptiveViT(vit, AdaptConfig(gammas=(0,)), source_classes=list(spec.classes))
    state_path = out.with_suffix(".state.safetensors")
    # grown once: a resumed run's weights come from its state
    grown_acc = _grow(cfg, vit, spec, model, xte, yte, log) if cfg.grow_from and not state_path.is_file() else None
    decay = [p for n, p in vit.named_parameters() if p.ndim >= 2 and "pos_embed" not in n]
    no_decay = [p for n, p in vit.named_parameters() if not (p.ndim >= 2 and "pos_embed" not in n)]
    lr = cfg.lr * cfg.batch_size / 512
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        betas=(0.9, 0.999),
        fused=dev.type == "cuda",
    )
    info = {"epoch": 0, "history": []}
    if state_path.is_file():
        info = load_state(state_path, vit, opt)
        log(f"resumed from {state_path} at epoch {info['epoch']}")
    if grown_acc is not None:
        info["grown_acc"] = grown_acc  # kept in the state, for the checkpoint's header after a resume
    fwd = torch.compile(vit) if cfg.compile and dev.type == "cuda" else vit
    teacher = load_teacher(cfg.teacher, dev) if cfg.teacher else None
    if teacher is not None:
        if teacher.num_classes != n_cls:
            raise ValueError(f"teacher {cfg.teacher} has {teacher.num_classes} classes, the task {cfg.task!r} {n_cls}")
        log(f"distilling from {cfg.teacher} (source test accuracy {teacher.meta.get('source_test_acc')})")
        teacher_fwd = torch.compile(teacher) if cfg.compile and dev.type == "cuda" else teacher

    steps_per_epoch = len(ytr) // cfg.batch_size
    total, warmup = cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch
    t0 = time.time()
    epoch = info["epoch"]
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[msg]}"),
        TimeRemainingColumn(),
    ) as bar:
        job = bar.add_task(f"train {cfg.arch}", total=cfg.epochs, completed=epoch, msg="")
        while epoch < cfg.epochs:
            vit.train()
            te = time.time()
            loss_sum = torch.zeros((), device=dev)
            for i, idx in enumerate(batches(len(ytr), cfg.batch_size, dev)):
                step = epoch * steps_per_epoch + i
                for g in opt.param_groups:
                    g["lr"] = cosine_lr(step, total, warmup, lr)
                x, target = mix(train_batch(xtr[idx], spec.corruption, model.preprocess, cfg.augment), ytr[idx], n_cls)
                with autocast(dev):
                    logits = fwd(x)
                    loss = F.cross_entropy(logits, target)
                    if teacher is not None:
                        with torch.no_grad():
                            t_logits = teacher_fwd(x)
                        kd = distill_loss(logits, t_logits, cfg.kd_temperature, cfg.kd_mode)
                        loss = (1 - cfg.kd_weight) * loss + cfg.kd_weight * kd
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(vit.parameters(), 1.0)
                opt.step()
                loss_sum += loss.detach()
            epoch += 1
            rec = {"epoch": epoch, "loss": float(loss_sum) / steps_per_epoch, "epoch_s": round(time.time() - te, 2)}
            if epoch % cfg.eval_every == 0 or epoch == cfg.epochs:
                vit.eval()
                rec["test_acc"] = evaluate(model, xte, yte, 0, "source")
            info["history"].append(rec)
            info["epoch"] = epoch
            bar.update(job, completed=epoch, msg=f"loss {rec['loss']:.3f} acc {rec.get('test_acc', float('nan')):.4f}")
            log(json.dumps(rec))
            if cfg.time_budget_s and time.time() - t0 > cfg.time_budget_s and epoch < cfg.epochs:
                save_state(state_path, vit, opt, info)
                log(f"time budget reached at epoch {epoch}/{cfg.epochs}; state saved to {state_path}")
                return {"done": False, **info}
    vit.eval()
    acc = evaluate(model, xte, yte, 0, "source")
    meta = {
        "config": asdict(cfg),
        "teacher_test_acc": teacher.meta.get("source_test_acc") if teacher is not None else None,
        "grown_from": {"checkpoint": Path(cfg.grow_from).name, "test_acc": info.get("grown_acc")}
        if cfg.grow_from
        else None,
        "source_test_acc": acc,
        "source_task": cfg.task,
        "history": info["history"],
        "test_images": len(yte),
    }
    save_checkpoint(model, out, meta)
    state_path.unlink(missing_ok=True)
    log(f"{cfg.arch}: source test accuracy {acc:.4f} on {len(yte)} images -> {out}")
    return {"done": True, "test_acc": acc, **info}


def _grow(cfg: BackboneConfig, vit, spec, model, xte, yte, log) -> float:
    """Start `vit` as the widened `cfg.grow_from`; its source test accuracy before training (the narrow
    model's in fp32; within rounding under bf16 autocast)."""
    from otas.models.checkpoint import load_checkpoint, read_header
    from otas.train.grow import widen_vit

    small = load_checkpoint(cfg.grow_from)
    if list(small.source_classes) != list(spec.classes):
        raise ValueError(
            f"grow_from {cfg.grow_from} was trained on classes {small.source_classes}, "
            f"the task {cfg.task!r} has {spec.classes}"
        )
    if small.preprocess != model.preprocess:
        raise ValueError(
            f"grow_from {cfg.grow_from} reads its images as {small.preprocess}, {cfg.arch} as {model.preprocess}: "
            "the grown model would not compute the same function"
        )
    k = widen_vit(small.vit, vit, cfg.grow_spread, cfg.seed)
    vit.eval()
    acc = evaluate(model, xte, yte, 0, "source")
    before = read_header(cfg.grow_from)["meta"].get("source_test_acc")
    log(f"grown {k}x wider from {cfg.grow_from} (its source test accuracy {before}): {acc:.4f} before training")
    return acc
