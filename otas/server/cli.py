"""`otas serve`: build the serving config tree from the command line and run it."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from otas import cli_options as opt


def serve_cmd(
    model: Annotated[
        Path | None,
        typer.Option(
            help="Model package directory (model.safetensors, profiles/, apps.yaml) or checkpoint "
            "(default: the shipped model)."
        ),
    ] = None,  # fmt: skip
    profile: Annotated[
        Path | None,
        typer.Option(
            help="Profile of this model on this device (default: the package's profile for this device; "
            "the shipped model: its CPU profile)."
        ),
    ] = None,  # fmt: skip
    apps: opt.ServeApps = None,
    policy: opt.Policy = "otas",
    device: Annotated[str, typer.Option(help="cpu or cuda.")] = "cpu",
    mode: Annotated[
        str,
        typer.Option(
            help="Fast path: eager, traced (TorchScript, the GIL released), graphs (CUDA graphs), compile or "
            "compiled-graphs (default: graphs on cuda, else traced)."
        ),
    ] = "",
    dtype: Annotated[str, typer.Option(help="float32 | bfloat16 (default: bfloat16 on cuda, float32 on cpu).")] = "",
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0 for every interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port of the HTTP API.")] = 8000,
    grpc_port: Annotated[
        int, typer.Option(help="TCP port of the KServe v2 gRPC API, on --host (0 = no gRPC; local backend only).")
    ] = 8001,
    max_batch: opt.MaxBatch = 64,
    lookahead: opt.Lookahead = 8,
    max_queue_delay_ms: opt.MaxQueueDelay = 0.0,
    slo_class_tolerance: opt.SloClassTolerance = 0.0,
    max_queue: Annotated[
        int, typer.Option(help="Backpressure: queued requests before 429 (0 = from the profile).")
    ] = 0,
    max_body_mb: Annotated[float, typer.Option(help="Request body size limit in MiB (413 above).")] = 8.0,
    max_connections: Annotated[
        int, typer.Option(help="Open HTTP connections (and gRPC calls) at once; beyond: 503 too_many_connections.")
    ] = 2048,
    max_inflight_mb: Annotated[
        float, typer.Option(help="Request bodies received or held at once, MiB (bodies <= 64 KiB not counted); 503.")
    ] = 64.0,
    header_timeout_s: Annotated[
        float, typer.Option(help="A connection must send a request's headers within this (408, or closed).")
    ] = 10.0,
    body_timeout_s: Annotated[float, typer.Option(help="A request's body must arrive within this (408).")] = 10.0,
    keep_alive_s: Annotated[float, typer.Option(help="Idle keep-alive connections are closed after this.")] = 5.0,
    max_header_kb: Annotated[int, typer.Option(help="Request line and headers, KiB (431 above).")] = 32,
    max_pipelined: Annotated[
        int, typer.Option(help="Requests a connection may send ahead of their answers (pipelined); beyond: 503.")
    ] = 16,
    drain_s: Annotated[
        float, typer.Option(help="At SIGTERM: readiness fails and responses close connections this long first.")
    ] = 2.0,
    json_workers: Annotated[
        int, typer.Option(help="Processes parsing JSON bodies over 64 KiB off the event loop (0 = on the loop).")
    ] = 1,
    http_workers: Annotated[
        int,
        typer.Option(
            help="HTTP front-end processes feeding the one engine process (0 = HTTP on the engine's event loop; "
            "for a GPU that serves faster than one Python process parses requests)."
        ),
    ] = 0,
    front_budget: Annotated[
        float,
        typer.Option(
            help="Share of the tightest SLO an inference request may wait in the host's front end; beyond what "
            "the host finishes within it: 503 overloaded on arrival (0 = off)."
        ),
    ] = 0.5,
    torch_threads: Annotated[
        int, typer.Option(help="CPU threads of the forward (0: one per core; fewer leave cores to the front end).")
    ] = 0,
    switch_interval_ms: Annotated[
        float,
        typer.Option(
            help="GIL switch interval, ms: how long the forward's thread may wait for Python's lock (0 = Python's 5)."
        ),
    ] = 1.0,
    plan_ahead: Annotated[
        bool | None,
        typer.Option(
            help="Plan the next batch while one runs (at once for a full batch queued, else just before the running "
            "one ends: the device does not wait for the event loop); default: on for a GPU, off on a CPU."
        ),
    ] = None,
    launch_ahead: Annotated[
        bool,
        typer.Option(
            help="On a GPU, queue each batch on the device behind the running one, so the device does not wait "
            "for the host between batches (needs planning ahead; off: one batch at a time)."
        ),
    ] = True,
    host_gap: opt.HostGap = True,
    delivery_quantile: Annotated[
        float,
        typer.Option(
            help="Plan deadlines short by this quantile of recent delivery times (answer ready to response sent; "
            "the otas_delivery_seconds metric) and of batches' lateness against their plans; 0: not."
        ),
    ] = 0.95,
    decision_log: Annotated[
        str,
        typer.Option(help="Append one JSON line per batch, as decided (γ, size, the policy's notes), to this file."),
    ] = "",
    decode_workers: Annotated[
        int, typer.Option(help="Threads (or processes) decoding images (0 = the host's cores, 2 to 8).")
    ] = 0,
    decode_processes: Annotated[
        bool, typer.Option(help="Decode in processes, many images a hand-off (threads share the GIL).")
    ] = False,
    decode_queue: Annotated[
        int, typer.Option(help="Images waiting or decoding at once; a request that would overflow: 429.")
    ] = 256,
    image_formats: Annotated[
        str, typer.Option(help="Encoded image formats accepted (Pillow names), e.g. PNG,JPEG,WEBP.")
    ] = "PNG,JPEG",
    max_image_side: Annotated[int, typer.Option(help="Longest side an encoded image may declare, pixels.")] = 4096,
    max_image_pixels: Annotated[
        int, typer.Option(help="Width x height an image may decode to (default 4 MP; a JPEG at its DCT-scaled size).")
    ] = 1 << 22,
    max_image_aspect: Annotated[float, typer.Option(help="Longer / shorter side an encoded image may declare.")] = 16.0,
    noop: Annotated[bool, typer.Option(help="No-op model: measure HTTP + scheduling + collation only.")] = False,
    warmup: Annotated[bool, typer.Option(help="Run every γ (on cuda: capture every graph) before serving.")] = True,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error (JSON lines on stderr).")] = "info",
    backend: Annotated[
        str, typer.Option(help="local: one process; ray: Ray Serve replicas behind an application-aware router.")
    ] = "local",
    replicas: Annotated[
        int, typer.Option(help="ray: engine replicas, one per GPU (--device cuda) or per CPU slot.")
    ] = 1,
    address: Annotated[
        str, typer.Option(help="ray: cluster to join (auto, HOST:6379, ray://HOST:10001); empty = a new local Ray.")
    ] = "",
    admin_token: Annotated[
        str,
        typer.Option(
            envvar="OTAS_ADMIN_TOKEN",
            show_default=False,
            help="Turns on POST/PUT/DELETE /v1/apps (bearer token; or $OTAS_ADMIN_TOKEN). Off if empty.",
        ),
    ] = "",  # fmt: skip
    paced: Annotated[
        bool, typer.Option(help="With --noop --profile P: each batch sleeps P's latency (emulates that device).")
    ] = False,
) -> None:
    """Serve the model over HTTP (KServe v2 /v2/..., /v1/apps, /v1/apps/{app}/classify, /metrics) and
    KServe v2 gRPC (--grpc-port)."""
    from otas.config import (
        EngineConfig,
        HttpConfig,
        RayConfig,
        ServingConfig,
        default_apps_path,
    )

    sched = opt.scheduler_config(lookahead, max_batch, max_queue_delay_ms, slo_class_tolerance, host_gap)
    cuda = device.startswith("cuda")
    try:
        apps_file = apps if admin_token else None  # where changes over HTTP go: never the packaged default
        if model is not None:
            model, profile, apps = resolve_package(model, profile, apps, device, noop, bool(admin_token))
            apps_file = apps if admin_token else None
        elif profile is None and not noop and not cuda:
            from otas.sim.demo import default_profile_path

            profile = default_profile_path()
        cfg = ServingConfig(
            apps=_apps(apps or default_apps_path("h100" if cuda else "cpu"), bool(admin_token)),
            admin_token=admin_token,
            apps_file=apps_file,
            model=model,
            profile=profile,
            policy=policy,
            backend=backend,
            scheduler=sched,
            engine=EngineConfig(
                device,
                dtype,
                mode,
                warmup,
                noop,
                paced,
                torch_threads=torch_threads,
                switch_interval_ms=switch_interval_ms,
                plan_ahead=plan_ahead,
                launch_ahead=launch_ahead,
                delivery_quantile=delivery_quantile,
                decision_log=decision_log,
                decode_workers=decode_workers,
                decode_processes=decode_processes,
                decode_queue=decode_queue,
                max_queue=max_queue,
                image_formats=tuple(f for f in image_formats.split(",") if f.strip()),
                max_image_side=max_image_side,
                max_image_pixels=max_image_pixels,
                max_image_aspect=max_image_aspect,
            ),
            http=HttpConfig(
                host,
                port,
                max_body_mb,
                log_level,
                grpc_port,
                max_connections=max_connections,
                max_inflight_mb=max_inflight_mb,
                header_timeout_s=header_timeout_s,
                body_timeout_s=body_timeout_s,
                keep_alive_s=keep_alive_s,
                max_header_kb=max_header_kb,
                max_pipelined=max_pipelined,
                drain_s=drain_s,
                json_workers=json_workers,
                workers=http_workers,
                front_budget=front_budget,
            ),
            ray=RayConfig(replicas, address),
        )
        if backend == "ray":
            from otas.scale.launch import serve_ray

            if http_workers:
                raise ValueError("--http-workers is for the local backend; the ray backend has its own HTTP front end")
            if decision_log:
                raise ValueError("--decision-log is for the local backend (the ray backend's replicas keep no log)")
            serve_ray(cfg)
        else:
            from otas.server.main import serve

            serve(cfg)
    except ValueError as e:
        opt.fail(str(e))


def _apps(path: Path, admin: bool):
    """The applications of `path`; with the admin API on, a missing or empty file is no application
    yet (the first one is registered over HTTP)."""
    from otas.config import load_apps

    if admin and not path.exists():
        return []
    return load_apps(path, allow_empty=admin)


def resolve_package(
    model: Path, profile: Path | None, apps: Path | None, device: str, noop: bool, admin: bool = False
) -> tuple[Path, Path | None, Path | None]:
    """(checkpoint, profile, applications file) of `--model PATH` (`otas.models.package`): the
    package's profile for the device this server runs on and its apps.yaml, unless given. With the
    admin API on (`admin`), apps.yaml may not exist yet: applications are then registered over HTTP."""
    from otas.models.package import ModelPackage

    pkg = ModelPackage.open(model)
    if profile is None and not noop:
        import torch

        from otas.profile.measure import device_name, device_slug

        if device.startswith("cuda") and not torch.cuda.is_available():
            raise ValueError("--device cuda given but no CUDA device is available")
        profile = pkg.find_profile(device_slug(device_name(torch.device(device))), device)
    if apps is None and pkg.apps_path is not None:
        if not pkg.apps_path.is_file() and not admin:
            raise ValueError(
                f"{pkg.apps_path} does not exist: write the applications there (format: otas/configs/apps.yaml), "
                "or register them over HTTP (--admin-token)"
            )
        apps = pkg.apps_path
    return pkg.checkpoint, profile, apps
