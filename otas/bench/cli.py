"""`otas bench`: trace replay and server overhead against a running server; GPU speed of models."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from otas import cli_options as opt

console = Console()


bench_app = typer.Typer(
    help="Benchmarks: trace replay and server overhead against a running server; GPU speed of models.",
    no_args_is_help=True,
)


@bench_app.command("replay")
def bench_replay_cmd(
    url: Annotated[str, typer.Option(help="Server base URL.")] = "http://127.0.0.1:8000",
    trace: opt.Trace = "azure",
    apps: Annotated[
        Path | None, typer.Option(help="Applications YAML (default: the server's, from /v1/config).")
    ] = None,
    load: Annotated[float, typer.Option(help="Load: × the γ=0 capacity of the server's profile.")] = 1.0,
    limit: Annotated[int, typer.Option(help="Replay the first N requests of the scaled trace (0 = all).")] = 1500,
    seed: opt.Seed = 0,
    out: Annotated[Path, typer.Option(help="Folder for JSON and plots.")] = Path("bench/results"),
    tag: Annotated[str, typer.Option(help="Name of this run in file names (default: the server's policy).")] = "",
    data: Annotated[Path | None, typer.Option(help="CIFAR-10 archive (default: $OTAS_CIFAR10).")] = None,
    format: Annotated[
        str,
        typer.Option(
            help="Request format: otas (KServe v2 JSON to otas, base64 PNGs), otas-uint8 (otas, raw pixels as "
            "KServe v2 binary tensors: nothing to decode), triton (KServe v2 JSON with priorities, "
            "bench/peers/pytriton_peer.py), json (Ray Serve / LitServe handlers, bench/peers/)."
        ),
    ] = "otas",
    model: Annotated[str, typer.Option(help="triton: the model name in /v2/models/{model}/infer.")] = "",
    profile: Annotated[
        Path | None, typer.Option(help="Not otas: the profile that sets the load (default: the shipped CPU one).")
    ] = None,
    max_batch: Annotated[int, typer.Option(help="Not otas: B_max of the γ=0 capacity (as otas simulate).")] = 64,
    duration_s: Annotated[
        float, typer.Option(help="Replay at most the first this many seconds of the scaled trace (0 = no limit).")
    ] = 0.0,
    coalesce_ms: Annotated[
        float,
        typer.Option(
            help="otas formats: send one application's arrivals within this many ms as one multi-image request, "
            "as a batching gateway would (each image still scored from its own arrival; 0 = one per arrival)."
        ),
    ] = 0.0,
    repeat: Annotated[
        int,
        typer.Option(
            help="Play the scaled trace this many times back to back (the hour-long Azure trace lasts under a "
            "second at a GPU's rate); --limit and --duration-s then cut the result."
        ),
    ] = 1,
    senders: Annotated[
        int,
        typer.Option(
            help="Sending processes (1..64): request k goes from process k % K, all on one schedule; one Python "
            "process falls behind at thousands of large requests a second (its send lag shows it)."
        ),
    ] = 1,
    state_wait: Annotated[
        bool,
        typer.Option(
            help="otas formats: each request states how long its first arrival waited before it was sent (the "
            "otas-waited-ms header: the coalescing window and any send lag), so the server times it from that arrival."
        ),
    ] = True,
) -> None:
    """Replay a trace open-loop against a server (otas, or a peer in bench/peers/) with labelled
    CIFAR-10 test images; report utility, SLO attainment, goodput, accuracy and latency per app, beside
    the simulator's prediction against otas."""
    from otas.bench.openloop import check_senders
    from otas.bench.replay import check_window
    from otas.bench.replay import main as replay_main

    try:
        check_window(load, limit, duration_s)  # before the server is asked anything (replay_main checks the rest first)
        check_senders(senders)
        replay_main(url, trace, apps, load, limit, seed, out, tag, data, console, format, model or "vit_tiny_p2_c5"
                    if format == "triton" else model, profile, max_batch, duration_s, coalesce_ms, repeat,
                    senders, state_wait)  # fmt: skip
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


@bench_app.command("overhead")
def bench_overhead_cmd(
    url: Annotated[
        str, typer.Option(help="Server base URL (start it with `otas serve --noop`).")
    ] = "http://127.0.0.1:8000",
    concurrency: Annotated[int, typer.Option(help="Requests in flight per client process (closed loop).")] = 64,
    duration_s: Annotated[float, typer.Option(help="Seconds measured per protocol and batch.")] = 5.0,
    warmup_s: Annotated[float, typer.Option(help="Seconds sent, not measured, before each.")] = 1.0,
    clients: Annotated[int, typer.Option(help="Client processes.")] = 1,
    protocols: Annotated[
        str, typer.Option(help="Comma-separated: json (base64 BYTES), binary, grpc (encoded PNGs), uint8 (raw pixels).")
    ] = "json,binary,grpc,uint8",
    batches: Annotated[str, typer.Option(help="Comma-separated images per request.")] = "1,64",
    grpc_target: Annotated[str, typer.Option(help="gRPC host:port (default: the server's, from /v1/config).")] = "",
    profile: Annotated[Path | None, typer.Option(help="A model profile to compare against (its throughput).")] = None,
    out: Annotated[Path, typer.Option(help="Folder for the JSON result.")] = Path("bench/results/overhead"),
) -> None:
    """Requests/s and latency the server sustains per protocol and batch (best run against
    `otas serve --noop`), vs a model's throughput."""
    from otas.bench.overhead import PROTOCOLS
    from otas.bench.overhead import main as overhead_main
    from otas.server.protocol import MAX_IMAGES

    chosen = tuple(p.strip() for p in protocols.split(",") if p.strip())
    if not chosen or any(p not in PROTOCOLS for p in chosen):
        raise typer.BadParameter(f"--protocols {protocols!r}: use a comma-separated subset of {','.join(PROTOCOLS)}")
    sizes = opt.ints(batches)
    if not sizes or min(sizes) < 1 or max(sizes) > MAX_IMAGES:
        raise typer.BadParameter(f"--batches {batches!r}: use comma-separated integers in 1..{MAX_IMAGES}")
    if not 1 <= concurrency <= 10_000 or not 1 <= clients <= 256:
        raise typer.BadParameter(f"--concurrency {concurrency}, --clients {clients}: use 1..10000 and 1..256")
    if not (0 < duration_s < math.inf and 0 <= warmup_s < math.inf):
        raise typer.BadParameter(f"--duration-s {duration_s}, --warmup-s {warmup_s}: use finite seconds, > 0 and >= 0")
    try:
        overhead_main(
            url, concurrency, duration_s, clients, profile, out, console, chosen, tuple(sizes), grpc_target, warmup_s
        )
    except (ValueError, OSError) as e:  # no server there, a bad profile, an unwritable folder
        opt.fail(str(e))


@bench_app.command("summary")
def bench_summary_cmd(
    files: Annotated[list[Path], typer.Argument(help="Replay JSON files from `otas bench replay`.")],
    out: Annotated[Path | None, typer.Option(help="Write the markdown table here too.")] = None,
) -> None:
    """One markdown table over several replays: utility and SLO attainment, live beside simulated."""
    from otas.bench.report import summary

    try:
        table = summary(files)
    except (ValueError, OSError, KeyError, TypeError) as e:  # not replay results
        opt.fail(f"{type(e).__name__}: {e}; give JSON files written by `otas bench replay`")
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
        result = run_gpu_bench(models, opt.ints(batch_sizes), out, data, console)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    plot(result, out / "gpu_bench.png")
    console.print(f"wrote {out / 'gpu_bench.json'} and {out / 'gpu_bench.png'}")


@bench_app.command("workloads")
def bench_workloads_cmd(
    n: Annotated[
        int, typer.Option(help="Workloads to draw (seeds FIRST_SEED..; even seeds tune, odd are held out).")
    ] = 60,
    quick: Annotated[bool, typer.Option(help="A small subset: 6 workloads, loads 0.5,1,2; writes quick.json.")] = False,
    first_seed: Annotated[int, typer.Option(help="Seed of the first workload.")] = 0,
    load: opt.Load = "0.5,1,1.5,2,3",
    profile_set: Annotated[
        list[str] | None,
        typer.Option(
            help="NAME=PATH,PATH2,...@MAX_BATCH, repeatable; served profile first, others for model-switch and the "
            "oracle, @MAX_BATCH optional (64). Default: cpu and h200, ViT-Tiny + ViT-Small, B_max 64 and 256."
        ),
    ] = None,
    policies: Annotated[
        str, typer.Option(help="Comma-separated policies to run (default: all of otas simulate).")
    ] = "",
    compare: Annotated[
        str, typer.Option(help="Policies reported against the best other, where they exist.")
    ] = "otas,otas-paper",
    jobs: Annotated[int, typer.Option(help="Worker processes (default: every CPU).")] = 0,
    azure: Annotated[
        Path | None, typer.Option(help="Azure-format CSV for azure workloads (default: the conv trace).")
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder for the JSON and the plot.")] = Path("bench/results/workloads"),
    requests: Annotated[
        str, typer.Option(help="MIN,MAX requests per workload's trace (drawn uniformly); longer cells, more batches.")
    ] = "3000,6000",
) -> None:
    """Every policy on a suite of seeded random workloads (2-6 apps, SLO spread 2-20×, utilities 0.5-5,
    Azure windows and synthetic traces) at several loads, per profile set: utility over the best other
    policy, over the oracle bound, and tightest-application SLO attainment, tuning and held-out splits."""
    import os

    from otas.bench.workloads import COMPARE, DEFAULT_SETS, ProfileSet, main, parse_requests

    loads = opt.loads("0.5,1,2" if quick and load == "0.5,1,1.5,2,3" else load)
    if jobs < 0:
        raise typer.BadParameter(f"--jobs {jobs}: use a count of processes, or 0 for every CPU")
    if first_seed < 0:
        raise typer.BadParameter(f"--first-seed {first_seed}: use a seed >= 0")
    try:
        n_requests = parse_requests(requests)
        sets = [ProfileSet.parse(s) for s in profile_set] if profile_set else list(DEFAULT_SETS)
        main(
            n=6 if quick else n,
            first_seed=first_seed,
            loads=loads,
            sets=sets,
            policies=[p for p in policies.split(",") if p] or None,
            compare=[c for c in compare.split(",") if c] or list(COMPARE),
            jobs=jobs or os.cpu_count() or 1,
            out=out,
            tag="quick" if quick else "workloads",
            azure=str(azure) if azure else None,
            console=console,
            n_requests=n_requests,
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
