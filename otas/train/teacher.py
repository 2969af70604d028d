"""A convolutional teacher for distilling the ViT backbones.

A ViT trained from scratch on the 25k images of the source task stops gaining with width (Small
plateaus near Tiny), since it lacks the locality a CNN has built in. A small CIFAR ResNet learns
the task well in a few epochs; the ViT then learns from its soft outputs on the very images it is
shown (the same crop, flip and Mixup/CutMix: "consistent teaching"). The teacher is timm's ResNet
with a 3×3 stride-1 stem and no max-pool (the usual CIFAR form), trained on the source task with
the backbone's augmentation, and saved as safetensors with its config in the header.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, TextColumn, TimeRemainingColumn
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from otas.data.preprocess import Preprocess
from otas.data.transforms import AUGMENTS, mix
from otas.progress import Progress
from otas.train.checks import check_optim
from otas.train.common import autocast, batches, cosine_lr, evaluate, pick_device, source_data, train_batch

FORMAT = "otas.teacher/1"
KD_MODES = ("soft", "hard")
LAYERS = {"resnet18": [2, 2, 2, 2], "resnet34": [3, 4, 6, 3]}


@dataclass
class TeacherConfig:
    arch: str = "resnet18"
    """A key of LAYERS: timm's ResNet of basic blocks in the CIFAR form."""
    task: str = "source"
    epochs: int = 60
    batch_size: int = 512
    lr: float = 0.2
    """Peak SGD (Nesterov) learning rate at batch 512, scaled linearly with the batch size."""
    weight_decay: float = 5e-4
    warmup_epochs: int = 2
    compile: bool = True
    augment: str | None = None
    """An `otas.data.transforms.AUGMENTS` policy before crop and flip ("trivial"), or None."""
    seed: int = 0
    limit: int | None = None
    """Use only the first `limit` training and test images (smoke tests)."""

    def __post_init__(self) -> None:
        check_optim(self.lr, self.weight_decay, None)
        if self.arch not in LAYERS:
            raise ValueError(f"unknown teacher {self.arch!r}; known: {sorted(LAYERS)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1, got {self.epochs}, {self.batch_size}")
        if self.augment is not None and self.augment not in AUGMENTS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTS)} or None, got {self.augment!r}")


class Teacher(nn.Module):
    """A CIFAR ResNet with the interface the training code expects (`preprocess`, `model(x)`)."""

    def __init__(self, arch: str, num_classes: int):
        super().__init__()
        from timm.models.resnet import BasicBlock, ResNet

        if arch not in LAYERS:
            raise ValueError(f"unknown teacher {arch!r}; known: {sorted(LAYERS)}")
        net = ResNet(BasicBlock, LAYERS[arch], num_classes=num_classes)
        net.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)  # 32×32 inputs: keep the resolution
        net.maxpool = nn.Identity()
        self.net = net
        self.arch, self.num_classes = arch, num_classes
        self.preprocess = Preprocess(size=32)  # CIFAR-10 statistics, as the ViT students

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, 32, 32) normalised -> (B, classes)
        return self.net(x)


def save_teacher(teacher: Teacher, path: Path, meta: dict) -> None:
    header = {"format": FORMAT, "arch": teacher.arch, "num_classes": teacher.num_classes, "meta": meta}
    state = {k: v.detach().float().contiguous().cpu() for k, v in teacher.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path), metadata={"otas": json.dumps(header)})


def load_teacher(path: str | Path, device: str | torch.device = "cpu") -> Teacher:
    """A teacher saved by `train_teacher`, in eval mode on `device` (safetensors only, never pickle)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"teacher {path}: no such file; make one with `otas train teacher --out {path}`")
    with safe_open(str(path), "pt") as f:
        header = json.loads((f.metadata() or {}).get("otas", "{}"))
    if header.get("format") != FORMAT:
        raise ValueError(f"{path} is not an otas teacher (format {header.get('format')!r}, expected {FORMAT})")
    try:
        teacher = Teacher(header["arch"], int(header["num_classes"]))
        teacher.load_state_dict(load_file(str(path)))
    except (KeyError, TypeError, RuntimeError) as e:
        raise ValueError(f"teacher {path}: its weights do not match its header ({type(e).__name__}: {e})") from None
    teacher.meta = header.get("meta", {})
    return teacher.to(device).eval()


def train_teacher(cfg: TeacherConfig, out: Path, data: Path | None = None, device: str | None = None, log=print):
    dev = pick_device(device)
    torch.manual_seed(cfg.seed)
    src = source_data(cfg.task, data, dev, cfg.limit)
    spec, n_cls = src.spec, src.num_classes
    xtr, ytr, xte, yte = src.x_train, src.y_train, src.x_test, src.y_test
    teacher = Teacher(cfg.arch, n_cls).to(dev)
    if dev.type == "cuda":
        teacher = teacher.to(memory_format=torch.channels_last)
    lr = cfg.lr * cfg.batch_size / 512
    decay = [p for p in teacher.parameters() if p.ndim >= 2]
    no_decay = [p for p in teacher.parameters() if p.ndim < 2]
    opt = torch.optim.SGD(
        [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr,
        momentum=0.9,
        nesterov=True,
    )
    fwd = torch.compile(teacher) if cfg.compile and dev.type == "cuda" else teacher
    steps = len(ytr) // cfg.batch_size
    total, warmup = cfg.epochs * steps, cfg.warmup_epochs * steps
    history = []
    with Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[msg]}"), TimeRemainingColumn(),
    ) as bar:  # fmt: skip
        job = bar.add_task(f"train teacher {cfg.arch}", total=cfg.epochs, msg="")
        for epoch in range(1, cfg.epochs + 1):
            teacher.train()
            te, loss_sum = time.time(), torch.zeros((), device=dev)
            for i, idx in enumerate(batches(len(ytr), cfg.batch_size, dev)):
                for g in opt.param_groups:
                    g["lr"] = cosine_lr((epoch - 1) * steps + i, total, warmup, lr)
                xb = train_batch(xtr[idx], spec.corruption, teacher.preprocess, cfg.augment)
                x, target = mix(xb, ytr[idx], n_cls)
                with autocast(dev):
                    loss = F.cross_entropy(fwd(x), target)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                loss_sum += loss.detach()
            rec = {"epoch": epoch, "loss": float(loss_sum) / max(1, steps), "epoch_s": round(time.time() - te, 2)}
            history.append(rec)
            bar.update(job, completed=epoch, msg=f"loss {rec['loss']:.3f}")
            log(json.dumps(rec))
    teacher.eval()
    acc = evaluate(teacher, xte, yte, gamma=None)
    save_teacher(teacher, out, {"config": asdict(cfg), "source_test_acc": acc, "history": history})
    log(f"teacher {cfg.arch}: source test accuracy {acc:.4f} on {len(yte)} images -> {out}")
    return {"test_acc": acc, "history": history}


def distill_loss(
    student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0, mode: str = "soft"
) -> torch.Tensor:
    """Distillation from teacher logits (B, classes) into student logits (B, classes).

    "soft": KL(teacher ‖ student) of the softened distributions, × T² (so its gradients keep their scale);
    "hard": cross entropy to the teacher's top class (DeiT's hard distillation; `temperature` unused)."""
    if mode == "hard":
        return F.cross_entropy(student.float(), teacher.argmax(-1))
    if mode != "soft":
        raise ValueError(f"kd mode must be one of {', '.join(KD_MODES)}, got {mode!r}")
    t = temperature
    return (
        F.kl_div(
            F.log_softmax(student.float() / t, -1), F.log_softmax(teacher.float() / t, -1),
            log_target=True, reduction="batchmean",
        ) * t * t
    )  # fmt: skip
