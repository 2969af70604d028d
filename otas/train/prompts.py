"""Train, per downstream task, the γ = 0 head and a prompt set + head for every γ > 0.

Tasks are built-in CIFAR-10 tasks or your own image folders (`otas.train.data`); the backbone is
one of our checkpoints or any timm ViT (``timm:<name>``, with its pretrained weights from the hub
or a local .safetensors file). Class names, the tasks' sources and the validation accuracy at
every γ are stored in the checkpoint.

The backbone stays frozen (and in eval mode); only prompts and heads get gradients. Each γ > 0
head starts from the trained γ = 0 head, so prompts only have to add what the frozen features lack.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from otas.adapt import AdaptConfig, AdaptiveViT
from otas.adapt.config import DEFAULT_GAMMAS
from otas.adapt.vit import key
from otas.data.tasks import DOWNSTREAM
from otas.models.checkpoint import load_checkpoint, read_header, save_checkpoint
from otas.models.registry import build_vit, check_timm_name
from otas.progress import Progress
from otas.train.checks import check_optim
from otas.train.common import autocast, batches, cosine_lr, evaluate, pick_device, to_device, train_batch
from otas.train.data import VAL_FRACTION, TaskSource, load_task, release_cifar


@dataclass
class PromptConfig:
    tasks: tuple[str, ...] = DOWNSTREAM
    """Built-in task names (novel, lowlight, blur) and/or your folders as NAME=DIR (`otas.train.data`)."""
    gammas: tuple[int, ...] = DEFAULT_GAMMAS
    deep: bool = True
    epochs: int = 20
    head_epochs: int = 10
    batch_size: int = 256
    lr: float = 3e-3
    """AdamW learning rate of prompts and heads."""
    weight_decay: float = 1e-4
    seed: int = 0
    """Seeds training and the held-out split of a folder without train/ and val/."""
    val_fraction: float = VAL_FRACTION
    """Share of each class held out for validation in a folder without train/ and val/."""
    limit: int | None = None
    """Use only the first `limit` training and test images per task (smoke tests)."""
    only: list[str] = field(default_factory=list)
    """Train only these task/γ keys (e.g. ``novel/8``); empty = all."""
    time_budget_s: float | None = None
    """Save and stop before starting a new task/γ once this much wall time has passed; rerun to resume."""

    def __post_init__(self) -> None:
        check_optim(self.lr, self.weight_decay, self.time_budget_s)
        if not self.tasks:
            raise ValueError("give at least one task: --task NAME=DIR (your image folder) or a built-in name")
        if not 0 < self.val_fraction < 1:
            raise ValueError(f"val_fraction={self.val_fraction!r}: use a fraction in (0, 1), e.g. 0.2")
        for name in ("epochs", "head_epochs", "batch_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: use an integer >= 1")


def backbone_model(
    backbone: str | Path, device: torch.device, pretrained: bool = False, pretrained_file: Path | None = None
) -> tuple[AdaptiveViT, dict]:
    """(the frozen backbone as an AdaptiveViT, the meta to carry on) from ``timm:<name>`` or a checkpoint."""
    name = str(backbone)
    if name.startswith("timm:"):
        check_timm_name(name[5:])
        if not (pretrained or pretrained_file):  # prompts on random features would learn nothing useful
            raise ValueError(
                f"{name} needs its weights: add --pretrained (timm's hub) or --pretrained-file W.safetensors"
            )
        vit = build_vit(name, None, pretrained=pretrained, pretrained_file=pretrained_file)
        return AdaptiveViT(vit, AdaptConfig(gammas=(0,))).to(device), {"backbone": name}
    if pretrained or pretrained_file:
        raise ValueError(f"--pretrained/--pretrained-file go with --backbone timm:<name>, not a checkpoint ({name})")
    path = Path(backbone)
    if not path.is_file():
        raise ValueError(f"backbone {name!r}: no such checkpoint; give a .safetensors file or timm:<model name>")
    return load_checkpoint(path, device), dict(read_header(path)["meta"])


def train_prompts(
    cfg: PromptConfig,
    backbone: str | Path,
    out: Path,
    data: Path | None = None,
    device: str | None = None,
    log=print,
    pretrained: bool = False,
    pretrained_file: Path | None = None,
) -> dict:
    """Train every task of `cfg` on the frozen `backbone` (``timm:<name>`` or a checkpoint) into `out`;
    returns {task: {γ: validation accuracy}} of the γ ≥ 0 trained here or before (a rerun resumes)."""
    dev = pick_device(device)
    torch.manual_seed(cfg.seed)
    base, meta0 = backbone_model(backbone, dev, pretrained, pretrained_file)
    pre = base.preprocess
    sources = [TaskSource.parse(t) for t in cfg.tasks]
    names = [s.name for s in sources]
    if len(set(names)) != len(names):
        raise ValueError(f"task names must be unique, got {names}")
    prev = load_checkpoint(out, dev) if out.is_file() else None  # continue a partly trained file
    recorded = read_header(out)["meta"].get("task_sources", {}) if prev is not None else {}
    loaded = {s.name: load_task(s, pre, data, cfg.seed, cfg.val_fraction, recorded.get(s.name)) for s in sources}
    release_cifar()
    tasks = {t: len(d.val.classes) for t, d in loaded.items()}
    if prev is not None:
        _check_resumable(out, prev, base, {t: d.val.classes for t, d in loaded.items()})
    model = AdaptiveViT(base.vit, AdaptConfig(gammas=cfg.gammas, deep=cfg.deep, tasks=tasks), base.source_classes, pre)
    if prev is not None:
        model.load_state_dict(prev.state_dict(), strict=False)
        model.task_classes = prev.task_classes
    model.to(dev).eval()
    model.freeze_backbone()
    results: dict[str, dict[str, float]] = {}
    if prev is not None:
        results = read_header(out)["meta"].get("prompt_results", {})
    t_start = time.time()
    sources_meta = {t: d.info for t, d in loaded.items()}

    def save(extra: dict | None = None) -> None:
        meta = {**meta0, "prompt_config": asdict(cfg), "prompt_results": results, "task_sources": sources_meta}
        save_checkpoint(model, out, {**meta, **(extra or {})})

    for task, d in loaded.items():
        train, test = d.train, d.val
        if cfg.limit:
            train, test = train.head(cfg.limit), test.head(cfg.limit)
        xtr, ytr = to_device(train, dev)
        xte, yte = to_device(test, dev)
        model.task_classes[task] = list(d.val.classes)
        for g in [0, *model.config.prompt_gammas]:
            k = key(task, g)
            if (cfg.only and k not in cfg.only) or (not cfg.only and str(g) in results.get(task, {})):
                continue  # not asked for, or already trained in `out`
            if cfg.time_budget_s and time.time() - t_start > cfg.time_budget_s:
                log(f"time budget reached before {k}; rerun to resume")
                return results
            if g > 0:
                model.heads[k].load_state_dict(model.heads[key(task, 0)].state_dict())
            epochs = cfg.head_epochs if g == 0 else cfg.epochs
            t0 = time.time()
            _fit(model, task, g, d.corruption, xtr, ytr, epochs, cfg, dev)
            acc = evaluate(model, xte, yte, g, task)
            results.setdefault(task, {})[str(g)] = acc
            log(
                json.dumps(
                    {"task": task, "gamma": g, "val_acc": acc, "epochs": epochs, "train_s": round(time.time() - t0, 1)}
                )
            )
            save()  # after every task/γ, so a stop loses little
    save({"val_accuracy": _every_gamma(model, loaded, results, cfg.limit, dev, log)})
    return results


def _check_resumable(out: Path, prev: AdaptiveViT, base: AdaptiveViT, classes: dict[str, list[str]]) -> None:
    """`out` exists: it is continued only if it holds this backbone and these tasks' classes."""
    fresh = "give another --out, or delete it to start over"
    if prev.vit.otas_build["arch"] != base.vit.otas_build["arch"]:
        raise ValueError(f"{out} was trained on {prev.vit.otas_build['arch']}, not this backbone; {fresh}")
    for t, names in classes.items():
        had = prev.task_classes.get(t)
        if had is not None and list(had) != list(names):
            raise ValueError(f"{out} has task {t!r} with classes {had}, the data now has {names}; {fresh}")


def _every_gamma(model: AdaptiveViT, loaded: dict, results: dict, limit: int | None, dev, log) -> dict:
    """Validation accuracy of every task at every γ it is served at (merging reuses the γ = 0 head),
    printed as one table: what the profile will measure on this device, before any timing."""
    from rich.console import Console
    from rich.table import Table

    acc: dict[str, dict[str, float]] = {}
    for task, d in loaded.items():
        val = d.val.head(limit) if limit else d.val
        x, y = to_device(val, dev)
        for g in model.servable(task):
            acc.setdefault(task, {})[str(g)] = results.get(task, {}).get(str(g)) or evaluate(model, x, y, g, task)
    table = Table(title="validation accuracy per γ")
    table.add_column("task")
    gammas = list(model.config.gammas)
    for g in gammas:
        table.add_column(f"γ={g}", justify="right")
    for task, row in acc.items():
        table.add_row(task, *(f"{row[str(g)]:.3f}" if str(g) in row else "-" for g in gammas))
    Console().print(table)
    return acc


def _fit(
    model: AdaptiveViT,
    task: str,
    gamma: int,
    kind: str | None,
    x: torch.Tensor,
    y: torch.Tensor,
    epochs: int,
    cfg: PromptConfig,
    dev: torch.device,
) -> None:
    params = model.task_parameters(task, gamma)
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    bs = min(cfg.batch_size, len(y))  # a small folder: one batch of all of it
    steps = len(y) // bs
    total = epochs * steps
    with Progress(transient=True) as bar:
        job = bar.add_task(f"{task} gamma={gamma}", total=total)
        for epoch in range(epochs):
            for i, idx in enumerate(batches(len(y), bs, dev)):
                for g in opt.param_groups:
                    g["lr"] = cosine_lr(epoch * steps + i, total, steps, cfg.lr)
                xb = train_batch(x[idx], kind, model.preprocess)
                with autocast(dev):
                    loss = F.cross_entropy(model(xb, gamma, task), y[idx], label_smoothing=0.1)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                bar.advance(job)
    for p in params:
        p.requires_grad_(False)
