"""Train, per downstream task, the γ = 0 head and a prompt set + head for every γ > 0.

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
from rich.progress import Progress

from otas.adapt import AdaptConfig, AdaptiveViT
from otas.adapt.config import DEFAULT_GAMMAS
from otas.adapt.vit import key
from otas.data.cifar import load_cifar10
from otas.data.tasks import DOWNSTREAM, get_task
from otas.models.checkpoint import load_checkpoint, read_header, save_checkpoint
from otas.train.common import autocast, batches, corrupt_set, cosine_lr, evaluate, pick_device, to_device, train_batch


@dataclass
class PromptConfig:
    tasks: tuple[str, ...] = DOWNSTREAM
    gammas: tuple[int, ...] = DEFAULT_GAMMAS
    deep: bool = True
    epochs: int = 20
    head_epochs: int = 10
    batch_size: int = 256
    lr: float = 3e-3
    """AdamW learning rate of prompts and heads."""
    weight_decay: float = 1e-4
    seed: int = 0
    limit: int | None = None
    """Use only the first `limit` training and test images per task (smoke tests)."""
    only: list[str] = field(default_factory=list)
    """Train only these task/γ keys (e.g. ``novel/8``); empty = all."""
    time_budget_s: float | None = None
    """Save and stop before starting a new task/γ once this much wall time has passed; rerun to resume."""


def train_prompts(
    cfg: PromptConfig, backbone: Path, out: Path, data: Path | None = None, device: str | None = None, log=print
) -> dict:
    dev = pick_device(device)
    torch.manual_seed(cfg.seed)
    header = read_header(backbone)
    tasks = {t: len(get_task(t).classes) for t in cfg.tasks}
    base = load_checkpoint(backbone, dev)
    model = AdaptiveViT(base.vit, AdaptConfig(gammas=cfg.gammas, deep=cfg.deep, tasks=tasks), base.source_classes)
    if out.is_file():  # continue a partly trained file: keep what it has
        prev = load_checkpoint(out, dev)
        model.load_state_dict(prev.state_dict(), strict=False)
        model.task_classes = prev.task_classes
    model.to(dev).eval()
    model.freeze_backbone()
    results: dict[str, dict[str, float]] = {}
    if out.is_file():
        results = read_header(out)["meta"].get("prompt_results", {})
    t_start = time.time()
    train_all, test_all = load_cifar10("train", data), load_cifar10("test", data)

    for task in cfg.tasks:
        spec = get_task(task)
        train = train_all.subset(list(spec.classes))
        test = corrupt_set(test_all.subset(list(spec.classes)), spec.corruption, seed=1)
        if cfg.limit:
            train, test = train.head(cfg.limit), test.head(cfg.limit)
        xtr, ytr = to_device(train, dev)
        xte, yte = to_device(test, dev)
        model.task_classes[task] = list(spec.classes)
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
            _fit(model, task, g, spec.corruption, xtr, ytr, epochs, cfg, dev)
            acc = evaluate(model, xte, yte, g, task)
            results.setdefault(task, {})[str(g)] = acc
            log(
                json.dumps(
                    {"task": task, "gamma": g, "test_acc": acc, "epochs": epochs, "train_s": round(time.time() - t0, 1)}
                )
            )
            meta = {**header["meta"], "prompt_config": asdict(cfg), "prompt_results": results}
            save_checkpoint(model, out, meta)  # after every task/γ, so a stop loses little
    return results


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
    steps = len(y) // cfg.batch_size
    total = epochs * steps
    with Progress(transient=True) as bar:
        job = bar.add_task(f"{task} gamma={gamma}", total=total)
        for epoch in range(epochs):
            for i, idx in enumerate(batches(len(y), cfg.batch_size, dev)):
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
