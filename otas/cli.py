"""The `otas` command: train, profile, predict, simulate, demo.

Heavy imports (torch, timm) happen inside the commands, so `otas --help` stays instant.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from otas.sim.cli import simulate

app = typer.Typer(
    help="otas: elastic transformer serving by token adaptation.", no_args_is_help=True, pretty_exceptions_enable=False
)
train_app = typer.Typer(help="Train backbones (source task) and prompts (downstream tasks).", no_args_is_help=True)
app.add_typer(train_app, name="train")
console = Console()


def _ints(s: str) -> list[int]:
    try:
        return [int(v) for v in s.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {s!r}") from None


@train_app.command("backbone")
def train_backbone_cmd(
    out: Annotated[Path, typer.Option(help="Checkpoint to write (.safetensors).")],
    arch: Annotated[str, typer.Option(help="Architecture: vit_tiny_p2, vit_small_p2, vit_base_p2.")] = "vit_tiny_p2",
    epochs: int = 150,
    batch_size: int = 512,
    lr: float = 1e-3,
    drop_path: float = 0.1,
    data: Annotated[Path | None, typer.Option(help="CIFAR-10 JPEG archive (default: $OTAS_CIFAR10).")] = None,
    device: Annotated[str | None, typer.Option(help="cuda or cpu (default: cuda if present).")] = None,
    time_budget_s: Annotated[float | None, typer.Option(help="Save a resumable state and stop after this.")] = None,
    compile: bool = True,
) -> None:
    """Train a ViT from scratch on the source task (5 CIFAR-10 classes); resumes if a state file exists."""
    from otas.train.backbone import BackboneConfig, train_backbone

    cfg = BackboneConfig(
        arch=arch,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        drop_path=drop_path,
        time_budget_s=time_budget_s,
        compile=compile,
    )
    train_backbone(cfg, out, data, device, log=console.log)


@train_app.command("prompts")
def train_prompts_cmd(
    backbone: Annotated[Path, typer.Argument(help="Backbone checkpoint from `otas train backbone`.")],
    out: Annotated[Path, typer.Option(help="Checkpoint to write, with heads and prompts.")],
    tasks: Annotated[str, typer.Option(help="Downstream tasks (default: novel,lowlight,blur).")] = "",
    gammas: Annotated[
        str, typer.Option(help="The set Γ (default: otas.adapt.DEFAULT_GAMMAS); prompts for every γ > 0.")
    ] = "",
    epochs: int = 20,
    head_epochs: int = 10,
    shallow: Annotated[bool, typer.Option(help="Shallow prompts (input only) instead of deep.")] = False,
    data: Path | None = None,
    device: str | None = None,
) -> None:
    """Train per task the γ = 0 head and a prompt set + head per γ > 0, backbone frozen."""
    from otas.train.prompts import PromptConfig, train_prompts

    given = {"tasks": tuple(t for t in tasks.split(",") if t), "gammas": tuple(_ints(gammas)) if gammas else ()}
    cfg = PromptConfig(
        deep=not shallow, epochs=epochs, head_epochs=head_epochs, **{k: v for k, v in given.items() if v}
    )
    train_prompts(cfg, backbone, out, data, device, log=console.log)


@app.command("profile")
def profile_cmd(
    checkpoint: Annotated[Path, typer.Argument(help="Model checkpoint (.safetensors).")],
    out: Annotated[Path | None, typer.Option(help="Profile JSON (default: profiles/<model>__<device>.json).")] = None,
    device: str = "cpu",
    dtype: Annotated[str, typer.Option(help="float32 or bfloat16 (default: bfloat16 on cuda).")] = "",
    batch_sizes: str = "1,8,64",
    accuracy_from: Annotated[
        Path | None, typer.Option(help="Reuse accuracy from this profile; the γ it lacks are measured.")
    ] = None,
    gammas: Annotated[str, typer.Option(help="Profile only these γ of the model's set, e.g. -20,0,16.")] = "",
    accuracy_limit: Annotated[int | None, typer.Option(help="Test images per task (default: all).")] = None,
    min_time_s: Annotated[float, typer.Option(help="Timing seconds per (γ, batch) cell, cells interleaved.")] = 1.0,
    mode: Annotated[str, typer.Option(help="Timed path: eager, graphs (CUDA graphs) or compile.")] = "eager",
    data: Path | None = None,
) -> None:
    """Measure accuracy per (task, γ) and latency/memory per (γ, batch size); write a JSON profile."""
    import torch

    from otas.profile.measure import device_slug, measure_profile
    from otas.profile.report import print_profile
    from otas.profile.table import Profile

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise typer.BadParameter("--device cuda given but no CUDA device is available")
    dt = dtype or ("bfloat16" if device.startswith("cuda") else "float32")
    if dt not in ("float32", "bfloat16", "float16"):
        raise typer.BadParameter(f"--dtype must be float32, bfloat16 or float16, got {dt!r}")
    prof = measure_profile(
        checkpoint,
        device,
        getattr(torch, dt),
        _ints(batch_sizes),
        data=data,
        accuracy_from=Profile.load(accuracy_from) if accuracy_from else None,
        accuracy_limit=accuracy_limit,
        min_time_s=min_time_s,
        mode=mode,
        gammas=_ints(gammas) if gammas else None,
    )
    out = out or Path("profiles") / f"{prof.model}__{device_slug(prof.device)}.json"
    prof.save(out)
    print_profile(prof, console)
    console.print(f"wrote {out}")


@app.command("report")
def report_cmd(
    profiles: Annotated[list[Path], typer.Argument(help="Profile JSON files.")],
    out: Annotated[Path, typer.Option(help="Folder for the markdown table and plot.")] = Path("profiles"),
    batch: Annotated[int, typer.Option(help="Batch size of the trade-off plot.")] = 8,
) -> None:
    """Write the accuracy-latency table (with FLOP reduction vs speed-up) and plot for profiles."""
    from otas.profile.report import markdown, plot_tradeoff
    from otas.profile.table import Profile

    profs = [Profile.load(p) for p in profiles]
    out.mkdir(parents=True, exist_ok=True)
    for p, prof in zip(profiles, profs, strict=True):
        (out / (p.stem + ".md")).write_text(markdown(prof))
    plot_tradeoff(profs, out / "tradeoff.png", batch)
    console.print(f"wrote {out}/*.md and {out / 'tradeoff.png'}")


@app.command("predict")
def predict_cmd(
    images: Annotated[list[Path], typer.Argument(help="Image files (any size; resized to the model's).")],
    task: str = "novel",
    gamma: int = 0,
    model: Annotated[Path | None, typer.Option(help="Checkpoint (default: the shipped model).")] = None,
    top_k: int = 3,
) -> None:
    """Classify images with the model at one γ and print the top-k labels."""
    from otas.predict import Predictor

    pred = Predictor.load(model)
    for path, res in zip(images, pred.classify_files(images, task, gamma, top_k), strict=True):
        top = ", ".join(f"{lab} {p:.2f}" for lab, p in res)
        console.print(f"{path}: {top}")


@app.command("demo")
def demo_cmd(
    model: Annotated[Path | None, typer.Option(help="Checkpoint (default: the shipped model).")] = None,
) -> None:
    """The main job on the shipped default: classify the bundled sample at every γ, then schedule a trace."""
    from otas.demo import run_demo

    run_demo(model, console)


@app.command("serve")
def serve_cmd(
    model: Annotated[Path | None, typer.Option(help="Checkpoint (default: the shipped model).")] = None,
    profile: Annotated[
        Path | None, typer.Option(help="Profile of this model on this device (default: the shipped CPU profile).")
    ] = None,
    apps: Annotated[Path | None, typer.Option(help="Applications YAML (default: otas/configs/apps.yaml).")] = None,
    policy: Annotated[str, typer.Option(help="otas, otas-greedy, otas-fifo, fixed:<γ>, edf, clipper.")] = "otas",
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    host: str = "127.0.0.1",
    port: int = 8000,
    max_batch: Annotated[int, typer.Option(help="Largest batch B_max.")] = 64,
    lookahead: Annotated[int, typer.Option(help="Optimizer lookahead (batches).")] = 8,
    max_queue: Annotated[
        int, typer.Option(help="Backpressure: queued requests before 429 (0 = from the profile).")
    ] = 0,
    max_queue_delay_ms: Annotated[
        float, typer.Option(help="Hold small batches this long (0 = work-conserving).")
    ] = 0.0,
    max_body_mb: Annotated[float, typer.Option(help="Request body size limit (413 above).")] = 8.0,
    dtype: Annotated[str, typer.Option(help="float32 | bfloat16 (default: bfloat16 on cuda, float32 on cpu).")] = "",
    noop: Annotated[bool, typer.Option(help="No-op model: measure HTTP + scheduling + collation only.")] = False,
    warmup: Annotated[bool, typer.Option(help="Run every γ once before serving.")] = True,
    log_level: str = "info",
    backend: Annotated[
        str, typer.Option(help="local: one process; ray: Ray Serve replicas behind an application-aware router.")
    ] = "local",
    replicas: Annotated[
        int, typer.Option(help="ray: engine replicas, one per GPU (--device cuda) or per CPU slot.")
    ] = 1,
    address: Annotated[
        str, typer.Option(help="ray: cluster to join (auto, HOST:6379, ray://HOST:10001); empty = a new local Ray.")
    ] = "",
    paced: Annotated[
        bool, typer.Option(help="ray, with --noop --profile P: batches sleep P's latency (emulates that device).")
    ] = False,
) -> None:
    """Serve the model over HTTP: KServe v2 (/v2/...), /v1/apps, /v1/apps/{app}/classify, /metrics."""
    from otas.config import SchedulerConfig, default_apps_path, load_apps
    from otas.server.main import serve

    try:
        if backend not in ("local", "ray"):
            raise ValueError(f"--backend {backend!r}: use local (one process) or ray (Ray Serve replicas)")
        if backend == "local" and (replicas != 1 or address or paced):
            raise ValueError("--replicas, --address and --paced need --backend ray")
        app_list = load_apps(apps or default_apps_path("h100" if device.startswith("cuda") else "cpu"))
        config = SchedulerConfig(lookahead=lookahead, max_batch=max_batch, max_queue_delay_ms=max_queue_delay_ms)
        from otas.sim.demo import default_profile_path

        prof = profile or (None if noop or device.startswith("cuda") else default_profile_path())
        if backend == "ray":
            from otas.scale.launch import make_spec, serve_ray

            spec = make_spec(
                model, prof, app_list, policy, device, config, noop=noop, paced=paced, warmup=warmup, dtype=dtype,
                max_queue=max_queue,
            )  # fmt: skip
            serve_ray(spec, replicas, host, port, address, int(max_body_mb * (1 << 20)), log_level)
            return
        serve(
            model, prof, app_list, policy, device, host, port, config, int(max_body_mb * (1 << 20)),
            noop=noop, warmup=warmup, log_level=log_level, dtype=dtype, max_queue=max_queue,
        )  # fmt: skip
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


bench_app = typer.Typer(
    help="Benchmarks: trace replay and server overhead against a running server; GPU speed of models.",
    no_args_is_help=True,
)
app.add_typer(bench_app, name="bench")


@bench_app.command("replay")
def bench_replay_cmd(
    url: Annotated[str, typer.Option(help="Server base URL.")] = "http://127.0.0.1:8000",
    trace: Annotated[str, typer.Option(help="CSV path (Azure format) or azure|poisson|step|diurnal|mmpp.")] = "azure",
    apps: Annotated[
        Path | None, typer.Option(help="Applications YAML (default: the server's, from /v1/config).")
    ] = None,
    scale: Annotated[float, typer.Option(help="Load: × the γ=0 capacity of the server's profile.")] = 1.0,
    limit: Annotated[int, typer.Option(help="Replay the first N requests of the scaled trace (0 = all).")] = 1500,
    seed: int = 0,
    out: Annotated[Path, typer.Option(help="Folder for JSON and plots.")] = Path("bench/results"),
    tag: Annotated[str, typer.Option(help="Name of this run in file names (default: the server's policy).")] = "",
    data: Annotated[Path | None, typer.Option(help="CIFAR-10 archive (default: $OTAS_CIFAR10).")] = None,
) -> None:
    """Replay a trace open-loop against a server with labelled CIFAR-10 test images; report utility,
    SLO attainment, accuracy and latency per app beside the simulator's prediction."""
    from otas.bench.replay import main as replay_main

    try:
        replay_main(url, trace, apps, scale, limit, seed, out, tag, data, console)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


@bench_app.command("overhead")
def bench_overhead_cmd(
    url: Annotated[
        str, typer.Option(help="Server base URL (start it with `otas serve --noop`).")
    ] = "http://127.0.0.1:8000",
    concurrency: Annotated[int, typer.Option(help="Requests in flight (closed loop).")] = 64,
    duration_s: float = 10.0,
    clients: Annotated[int, typer.Option(help="Client processes.")] = 1,
    profile: Annotated[Path | None, typer.Option(help="A model profile to compare against (its throughput).")] = None,
    out: Annotated[Path, typer.Option(help="Folder for the JSON result.")] = Path("bench/results"),
) -> None:
    """Requests/s the server sustains (best run against `otas serve --noop`), vs a model's throughput."""
    from otas.bench.overhead import main as overhead_main

    overhead_main(url, concurrency, duration_s, clients, profile, out, console)


@bench_app.command("summary")
def bench_summary_cmd(
    files: Annotated[list[Path], typer.Argument(help="Replay JSON files from `otas bench replay`.")],
    out: Annotated[Path | None, typer.Option(help="Write the markdown table here too.")] = None,
) -> None:
    """One markdown table over several replays: utility and SLO attainment, live beside simulated."""
    from otas.bench.report import summary

    table = summary(files)
    console.print(table, markup=False)
    if out is not None:
        out.write_text(table)


@bench_app.command("gpu")
def bench_gpu_cmd(
    models: Annotated[list[Path], typer.Argument(help="Model checkpoints (.safetensors).")],
    batch_sizes: str = "1,8,64,256",
    out: Annotated[Path, typer.Option(help="Folder for gpu_bench.json and gpu_bench.png.")] = Path("bench/results"),
    data: Annotated[Path | None, typer.Option(help="CIFAR-10 archive (default: $OTAS_CIFAR10).")] = None,
) -> None:
    """On a CUDA device: latency, images/s and MFU per model, γ and batch size (eager, CUDA graphs,
    compile, stock timm), SDPA kernels with and without the merging bias, and the bias's accuracy cost."""
    from otas.profile.gpubench import plot, run_gpu_bench

    try:
        result = run_gpu_bench(models, _ints(batch_sizes), out, data, console)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    plot(result, out / "gpu_bench.png")
    console.print(f"wrote {out / 'gpu_bench.json'} and {out / 'gpu_bench.png'}")


app.command("simulate")(simulate)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
