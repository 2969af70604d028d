"""The `otas` command: train, profile, predict, simulate, demo.

Heavy imports (torch, timm) happen inside the commands, so `otas --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from otas import cli_options as opt
from otas.bench.cli import bench_app
from otas.config import MAX_BATCH
from otas.server.cli import serve_cmd
from otas.sim.cli import simulate

app = typer.Typer(
    help="otas: elastic transformer serving by token adaptation.", no_args_is_help=True, pretty_exceptions_enable=False
)
train_app = typer.Typer(help="Train backbones (source task) and prompts (downstream tasks).", no_args_is_help=True)
app.add_typer(train_app, name="train")
console = Console()


@train_app.command("backbone")
def train_backbone_cmd(
    out: Annotated[Path, typer.Option(help="Checkpoint to write (.safetensors).")],
    arch: Annotated[str, typer.Option(help="Architecture: vit_tiny_p2, vit_small_p2, vit_base_p2.")] = "vit_tiny_p2",
    epochs: int = 150,
    batch_size: int = 512,
    lr: float = 1e-3,
    drop_path: float = 0.1,
    data: opt.CifarData = None,
    device: opt.TrainDevice = None,
    time_budget_s: Annotated[float | None, typer.Option(help="Save a resumable state and stop after this.")] = None,
    compile: bool = True,
    teacher: Annotated[
        Path | None, typer.Option(help="Distil from this teacher (`otas train teacher`) on the same batches.")
    ] = None,
    kd_weight: Annotated[float, typer.Option(help="Share of the distillation loss, with --teacher.")] = 0.5,
    kd_mode: Annotated[
        str, typer.Option(help="soft: KL to the teacher's distribution; hard: its top class (DeiT).")
    ] = "soft",
    augment: Annotated[str | None, typer.Option(help="Augmentation policy before crop and flip: trivial.")] = None,
    grow_from: Annotated[
        Path | None,
        typer.Option(help="Start as this narrower trained model, widened to --arch with the same function."),
    ] = None,
) -> None:
    """Train a ViT on the source task (5 CIFAR-10 classes), from scratch or grown from a smaller one; resumes if a
    state file exists."""
    from otas.train.backbone import BackboneConfig, train_backbone

    try:
        cfg = BackboneConfig(
            arch=arch,
            epochs=epochs,
            batch_size=batch_size,
            lr=lr,
            drop_path=drop_path,
            time_budget_s=time_budget_s,
            compile=compile,
            teacher=str(teacher) if teacher else None,
            kd_weight=kd_weight,
            kd_mode=kd_mode,
            augment=augment,
            grow_from=str(grow_from) if grow_from else None,
        )
        train_backbone(cfg, out, data, device, log=console.log)
    except ValueError as e:
        opt.fail(str(e))


@train_app.command("teacher")
def train_teacher_cmd(
    out: Annotated[Path, typer.Option(help="Teacher to write (.safetensors).")],
    arch: Annotated[str, typer.Option(help="resnet18 or resnet34 (CIFAR form).")] = "resnet18",
    epochs: int = 60,
    batch_size: int = 512,
    data: opt.CifarData = None,
    device: opt.TrainDevice = None,
    compile: bool = True,
    augment: Annotated[str | None, typer.Option(help="Augmentation policy before crop and flip: trivial.")] = None,
) -> None:
    """Train a CIFAR ResNet on the source task, to distil the ViT backbones from (`train backbone --teacher`)."""
    from otas.train.teacher import TeacherConfig, train_teacher

    try:
        cfg = TeacherConfig(arch=arch, epochs=epochs, batch_size=batch_size, compile=compile, augment=augment)
        train_teacher(cfg, out, data, device, log=console.log)
    except ValueError as e:
        opt.fail(str(e))


@train_app.command("prompts")
def train_prompts_cmd(
    out: Annotated[Path, typer.Option(help="Checkpoint to write, with heads, prompts and class names.")],
    checkpoint: Annotated[
        Path | None, typer.Argument(help="Backbone checkpoint from `otas train backbone` (or use --backbone).")
    ] = None,
    backbone: Annotated[
        str, typer.Option(help="timm:<model name> (any timm ViT) or a backbone checkpoint (.safetensors).")
    ] = "",
    pretrained: Annotated[bool, typer.Option(help="timm: download its pretrained weights from the hub.")] = False,
    pretrained_file: Annotated[
        Path | None, typer.Option(help="timm: its pretrained weights from a local .safetensors file.")
    ] = None,
    task: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=DIR: your image folder (DIR/CLASS/IMAGE, or DIR/train and DIR/val); or a "
            "built-in name (novel, lowlight, blur). Repeat for several tasks."
        ),
    ] = None,  # fmt: skip
    tasks: Annotated[str, typer.Option(help="Built-in tasks, comma-separated (default: novel,lowlight,blur).")] = "",
    gammas: Annotated[
        str, typer.Option(help="The set Γ (default: otas.adapt.DEFAULT_GAMMAS); prompts for every γ > 0.")
    ] = "",
    epochs: int = 20,
    head_epochs: int = 10,
    batch_size: int = 256,
    seed: Annotated[int, typer.Option(help="Seeds training and a folder's held-out split.")] = 0,
    val_fraction: Annotated[
        float, typer.Option(help="Share of each class held out in a folder without train/ and val/.")
    ] = 0.2,
    shallow: Annotated[bool, typer.Option(help="Shallow prompts (input only) instead of deep.")] = False,
    data: Annotated[Path | None, typer.Option(help="CIFAR-10 JPEG archive, for built-in tasks.")] = None,
    device: str | None = None,
    time_budget_s: Annotated[
        float | None, typer.Option(help="Stop after this; a second call with the same --out resumes.")
    ] = None,
) -> None:
    """Train per task the γ = 0 head and a prompt set + head per γ > 0, backbone frozen."""
    from otas.train.prompts import PromptConfig, train_prompts

    if (checkpoint is None) == (not backbone):
        opt.fail("give the backbone once: `otas train prompts CKPT` or --backbone timm:<name>|CKPT")
    chosen = tuple(task or ()) + tuple(t for t in tasks.split(",") if t.strip())
    try:
        cfg = PromptConfig(
            deep=not shallow, epochs=epochs, head_epochs=head_epochs, batch_size=batch_size, seed=seed,
            val_fraction=val_fraction, time_budget_s=time_budget_s, **({"tasks": chosen} if chosen else {}),
            **({"gammas": tuple(opt.ints(gammas))} if gammas else {}),
        )  # fmt: skip
        train_prompts(
            cfg, backbone or checkpoint, out, data, device, log=console.log, pretrained=pretrained,
            pretrained_file=pretrained_file,
        )  # fmt: skip
    except ValueError as e:
        opt.fail(str(e))


@app.command("profile")
def profile_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="Model package directory, or checkpoint (.safetensors).")],
    out: Annotated[
        Path | None,
        typer.Option(
            help="Profile JSON (default: PACKAGE/profiles/<device>.json, or profiles/<model>__<device>.json)."
        ),
    ] = None,
    device: str = "cpu",
    dtype: Annotated[str, typer.Option(help="float32 or bfloat16 (default: bfloat16 on cuda).")] = "",
    batch_sizes: str = "1,8,64",
    accuracy_from: Annotated[
        Path | None, typer.Option(help="Reuse accuracy from this profile; the γ it lacks are measured.")
    ] = None,
    gammas: Annotated[str, typer.Option(help="Profile only these γ of the model's set, e.g. -20,0,16.")] = "",
    accuracy_limit: Annotated[int | None, typer.Option(help="Test images per task (default: all).")] = None,
    min_time_s: Annotated[float, typer.Option(help="Timing seconds per (γ, batch) cell, cells interleaved.")] = 1.0,
    mode: Annotated[
        str,
        typer.Option(
            help="Timed path: eager, traced, graphs, compile or compiled-graphs (default: the one `otas serve` runs "
            "on the device: traced on a CPU, graphs on a GPU)."
        ),
    ] = "",
    task: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=DIR: measure task NAME's accuracy on this folder (its val/ split, or the split "
            "held out at training, or all of it). Default: the folders the tasks were trained from."
        ),
    ] = None,  # fmt: skip
    data: Annotated[Path | None, typer.Option(help="CIFAR-10 JPEG archive, for built-in tasks.")] = None,
    latency_from: Annotated[
        Path | None,
        typer.Option(
            help="With --accuracy-from: measure nothing, take latency, memory and load time from this profile "
            "of the same architecture and merge schedule (otas.profile.combine)."
        ),
    ] = None,
    merge_every: Annotated[
        int | None,
        typer.Option(
            help="Merge every k blocks, k·|γ| tokens at once (fewer, larger merge steps; the largest k that fits "
            "where k·|γ| does not). Default: the checkpoint's. The server runs the schedule its profile names."
        ),
    ] = None,
) -> None:
    """Measure accuracy per (task, γ) and latency/memory per (γ, batch size); write a JSON profile."""
    import torch

    from otas.models.package import ModelPackage
    from otas.profile.measure import device_slug, measure_profile
    from otas.profile.report import print_profile
    from otas.profile.table import Profile

    if not (device == "cpu" or device == "cuda" or device.startswith("cuda:") and device[5:].isdigit()):
        raise typer.BadParameter(f"--device {device!r}: use cpu, cuda or cuda:N")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise typer.BadParameter("--device cuda given but no CUDA device is available")
    dt = dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    if dt not in ("float32", "bfloat16", "float16"):
        raise typer.BadParameter(f"--dtype must be float32, bfloat16 or float16, got {dt!r}")
    sizes = opt.ints(batch_sizes)
    if not sizes or not all(1 <= b <= MAX_BATCH for b in sizes) or len(set(sizes)) < len(sizes):
        raise typer.BadParameter(
            f"--batch-sizes {batch_sizes!r}: use distinct comma-separated integers in 1..{MAX_BATCH}"
        )
    sizes = sorted(sizes)
    if not 0 < min_time_s <= 3600:
        raise typer.BadParameter(f"--min-time-s {min_time_s}: use seconds in (0, 3600]")
    if accuracy_limit is not None and accuracy_limit < 1:
        raise typer.BadParameter(f"--accuracy-limit {accuracy_limit}: use a number of images >= 1 (or leave it out)")
    if out is not None and out.is_dir():
        raise typer.BadParameter(f"--out {out}: a directory; give the profile's file path")
    if merge_every is not None and not 1 <= merge_every <= 64:
        raise typer.BadParameter(f"--merge-every {merge_every}: use an integer in 1..64 (1 = merge in every block)")
    if not mode:
        from otas.engine.runner import default_mode

        mode = default_mode(device)
    try:
        pkg = ModelPackage.open(checkpoint)
        if latency_from is not None:
            if accuracy_from is None:
                raise ValueError("--latency-from needs --accuracy-from: nothing is measured then")
            if merge_every is not None:
                raise ValueError("--merge-every with --latency-from: nothing is measured; the profiles keep theirs")
            from otas.models.checkpoint import read_header
            from otas.profile.combine import combine

            header = read_header(pkg.checkpoint)
            prof = combine(
                pkg.name, header["arch"], Profile.load(accuracy_from), Profile.load(latency_from), header["meta"]
            )
            prof.meta["checkpoint"] = pkg.checkpoint.name
        else:
            prof = measure_profile(
                pkg.checkpoint,
                device,
                getattr(torch, dt),
                sizes,
                data=data,
                accuracy_from=Profile.load(accuracy_from) if accuracy_from else None,
                accuracy_limit=accuracy_limit,
                min_time_s=min_time_s,
                mode=mode,
                gammas=opt.ints(gammas) if gammas else None,
                folders=task_folders(task or []),
                merge_every=merge_every,
            )
    except ValueError as e:
        opt.fail(str(e))
    prof.model = pkg.name
    out = out or pkg.profile_path(device_slug(prof.device))
    try:
        prof.save(out)
    except OSError as e:
        opt.fail(f"cannot write the profile to {out} ({e.strerror or e})")
    print_profile(prof, console)
    console.print(f"wrote {out}")


def task_folders(args: list[str]) -> dict[str, Path]:
    """--task NAME=DIR ... -> {NAME: DIR} (a bad argument is a ValueError)."""
    from otas.train.data import TaskSource

    folders = {}
    for arg in args:
        if "=" not in arg:
            raise ValueError(f"--task {arg!r}: write NAME=DIR, the folder to measure task NAME on")
        src = TaskSource.parse(arg)
        folders[src.name] = src.root
    return folders


@app.command("report")
def report_cmd(
    profiles: Annotated[list[Path], typer.Argument(help="Profile JSON files.")],
    out: Annotated[Path, typer.Option(help="Folder for the markdown table and plot.")] = Path("profiles"),
    batch: Annotated[int, typer.Option(help="Batch size of the trade-off plot.")] = 8,
) -> None:
    """Write the accuracy-latency table (with FLOP reduction vs speed-up) and plot for profiles."""
    from otas.profile.report import markdown, plot_tradeoff
    from otas.profile.table import Profile

    try:
        profs = [Profile.load(p) for p in profiles]
        if missing := [str(p) for p, prof in zip(profiles, profs, strict=True) if batch not in prof.batch_sizes]:
            raise ValueError(f"--batch {batch}: not a batch size of {', '.join(missing)}; use one the profiles hold")
        if out.exists() and not out.is_dir():
            raise ValueError(f"--out {out}: an existing file; give a folder")
        out.mkdir(parents=True, exist_ok=True)
        for p, prof in zip(profiles, profs, strict=True):
            (out / (p.stem + ".md")).write_text(markdown(prof))
        plot_tradeoff(profs, out / "tradeoff.png", batch)
    except (ValueError, OSError) as e:
        opt.fail(str(e))
    console.print(f"wrote {out}/*.md and {out / 'tradeoff.png'}")


@app.command("predict")
def predict_cmd(
    images: Annotated[list[Path], typer.Argument(help="Image files (any size; resized to the model's).")],
    task: Annotated[
        str | None, typer.Option(help="The task to classify for (default: the model's first task after source).")
    ] = None,
    gamma: int = 0,
    model: Annotated[
        Path | None, typer.Option(help="Model package or checkpoint (default: the shipped model).")
    ] = None,
    top_k: int = 3,
) -> None:
    """Classify images with the model at one γ and print the top-k labels."""
    from otas.adapt import SOURCE
    from otas.predict import Predictor

    if top_k < 1:
        opt.fail(f"--top-k {top_k}: use a number of labels >= 1")

    try:
        pred = Predictor.load(model)
        if task is None:  # a package trained for its own tasks has no `novel`
            task = next((t for t in pred.model.tasks if t != SOURCE), pred.model.tasks[0])
        results = pred.classify_files(images, task, gamma, top_k)
    except (ValueError, OSError) as e:
        opt.fail(str(e))
    for path, res in zip(images, results, strict=True):
        top = ", ".join(f"{lab} {p:.2f}" for lab, p in res)
        console.print(f"{path}: {top}")


@app.command("demo")
def demo_cmd(
    model: Annotated[Path | None, typer.Option(help="Checkpoint (default: the shipped model).")] = None,
) -> None:
    """The main job on the shipped default: classify the bundled sample at every γ, then schedule a trace."""
    from otas.demo import run_demo

    try:
        run_demo(model, console)
    except ValueError as e:  # a --model that is not a model
        opt.fail(str(e))


app.command("serve")(serve_cmd)
app.add_typer(bench_app, name="bench")
app.command("simulate")(simulate)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
