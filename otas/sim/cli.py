"""`otas simulate`: run policies over a trace and a load sweep; print tables, write JSON and plots.

Registered in `otas/cli.py` as the `otas simulate` command.
"""

from __future__ import annotations

import errno
import math
import os
import platform
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated

import typer

from otas import cli_options as opt
from otas import jsonio
from otas.config import SchedulerConfig, default_apps_path, load_apps
from otas.profile.table import Profile, config_warnings
from otas.provenance import run_meta
from otas.sched.oracle import upper_bound
from otas.sched.policies import make_policy
from otas.sim import report
from otas.sim.simulator import SimResult, run
from otas.sim.traces import at_load, base_trace, capacity_per_s
from otas.types import App


def default_policies(profiles: Sequence[Profile]) -> list[str]:
    """otas, the paper's otas and its ablations, fixed:<γ> for every γ, the baselines, and the oracle bound."""
    names = [
        "otas",
        "otas-paper",
        "otas-greedy",
        "otas-fifo",
        *[f"fixed:{g}" for g in profiles[0].gammas],
        "edf",
        "clipper",
    ]
    if len(profiles) > 1:
        names += ["model-switch", "model-switch:resident"]
    return [*names, "oracle"]


def online_profiles(policy: str, profiles: Sequence[Profile]) -> list[Profile]:
    """The profiles a policy serves from: every model for model-switch, else the first (served) one."""
    return list(profiles) if is_model_switch(policy) else [profiles[0]]


def is_model_switch(policy: str) -> bool:
    """model-switch in either form (paying its swaps, or with every model resident)."""
    return policy in ("model-switch", "model-switch:resident")


def sweep(
    trace: str,
    apps: Sequence[App],
    profiles: Sequence[Profile],
    policies: Sequence[str],
    loads: Sequence[float],
    config: SchedulerConfig,
    seed: int = 0,
    noise: bool = False,
    n_synthetic: int = 20_000,
    plan_ahead: bool = False,
    host_ms: float = 0.0,
) -> tuple[dict[str, object], dict[float, list[SimResult]]]:
    """Run every policy at every load. Returns (JSON-ready results, SimResults per load)."""
    for name in policies:
        make_policy(name)  # fail fast on a bad name, before any simulation
    cap = capacity_per_s(profiles[0], apps, config.max_batch)
    base = base_trace(trace, apps, seed=seed, n=n_synthetic)
    runs: list[dict[str, object]] = []
    kept: dict[float, list[SimResult]] = {}
    for load in loads:
        tr = at_load(base, load, cap)
        bound = upper_bound(tr.requests(apps), apps, profiles, config)
        kept[load] = []
        for name in policies:
            t0 = time.perf_counter()
            if name == "oracle":
                row: dict[str, object] = {
                    "policy": "oracle (bound)",
                    "utility": bound.value,
                    "window_ms": bound.window_ms,
                    "offset_ms": bound.offset_ms,
                }
            else:
                res = run(
                    tr, apps, online_profiles(name, profiles), name, config, seed=seed, noise=noise,
                    plan_ahead=plan_ahead, host_ms=host_ms,
                )  # fmt: skip
                kept[load].append(res)
                row = res.summary(apps)
            row["vs_oracle"] = float(row["utility"]) / bound.value if bound.value > 0 else math.nan  # type: ignore[arg-type]
            row.update(load=load, trace=tr.name, requests=len(tr), wall_s=time.perf_counter() - t0)
            runs.append(row)
    out = {
        "meta": {
            **run_meta(),
            "python": platform.python_version(),
            "seed": seed,
            "noise": noise,
            "host_ms": host_ms,
            "profiles": [f"{p.model} on {p.device}" for p in profiles],
            "apps": [a.__dict__ for a in apps],
            "config": config.__dict__,
        },
        "capacity_per_s": cap,
        "runs": runs,
    }
    return out, kept


def simulate(
    trace: opt.Trace = "azure",
    apps: opt.Apps = None,
    profile: Annotated[str, typer.Option(help="Profile JSON; PROFILE,PROFILE2,... adds models for model-switch.")] = "",
    policies: Annotated[str, typer.Option(help="Comma-separated policy names; empty = all.")] = "",
    load: opt.Load = "1.0",
    seed: opt.Seed = 0,
    noise: Annotated[bool, typer.Option(help="Draw batch latencies from the profile's p90 spread.")] = False,
    plan_ahead: Annotated[
        bool, typer.Option(help="Plan the next batch while one runs when a full batch is queued, as `otas serve`.")
    ] = False,
    host_ms: Annotated[
        float,
        typer.Option(
            help="Host time per batch beyond the device's, in ms (a server's measured turn minus its device time, "
            "e.g. from `otas_batch_measured_seconds` and `otas_batch_device_seconds`); 0: the host takes no time."
        ),
    ] = 0.0,
    host_gap: opt.HostGap = True,
    lookahead: opt.Lookahead = 8,
    max_batch: opt.MaxBatch = 64,
    max_queue_delay_ms: opt.MaxQueueDelay = 0.0,
    slo_class_tolerance: opt.SloClassTolerance = 0.0,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write results JSON here.")] = None,
    plots: Annotated[Path | None, typer.Option(help="Write plots into this directory.")] = None,
) -> None:
    """Simulate scheduling policies on a trace with profiled latencies; print one table per load."""
    if not profile:
        raise typer.BadParameter("give --profile PATH (e.g. profiles/vit_tiny_p2_c5__cpu.json)")
    config = opt.scheduler_config(lookahead, max_batch, max_queue_delay_ms, slo_class_tolerance, host_gap)
    loads = opt.loads(load)
    if not 0.0 <= host_ms < math.inf:
        raise typer.BadParameter(f"--host-ms {host_ms}: use a finite number of ms >= 0")
    try:
        profs = [Profile.load(p) for p in profile.split(",") if p.strip()]
        if not profs:
            raise ValueError(f"--profile {profile!r}: give at least one profile JSON path")
        app_list = load_apps(apps or default_apps_path("cpu"))
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None
    if json_out is not None and json_out.is_dir():
        raise typer.BadParameter(f"--json {json_out}: a directory; give a file path")
    if plots is not None and plots.exists() and not plots.is_dir():
        raise typer.BadParameter(f"--plots {plots}: an existing file; give a directory")
    try:  # where the results go must be writable before anything runs: not a traceback after the run
        if json_out is not None:
            json_out.parent.mkdir(parents=True, exist_ok=True)
            if not os.access(json_out.parent, os.W_OK):
                raise PermissionError(errno.EACCES, "not writable", str(json_out.parent))
        if plots is not None:
            plots.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        msg = f"cannot write the results there ({e.strerror or e}: {e.filename}); give another path"
        raise typer.BadParameter(msg) from None
    # an SLO nothing can meet (every request of it refused) and a profile timed on a busy host: say so,
    # not only NaN or odd numbers later
    for line in config_warnings(app_list, profs):
        opt.warn(line)
    names = [p for p in policies.split(",") if p] or default_policies(profs)
    try:
        out, kept = sweep(
            trace, app_list, profs, names, loads, config, seed=seed, noise=noise, plan_ahead=plan_ahead, host_ms=host_ms
        )
    except (ValueError, OSError) as e:  # an unknown policy or trace, an unreadable file: a usage error
        opt.fail(str(e))
    runs = out["runs"]
    for x in loads:
        rows = [r for r in runs if r["load"] == x]  # type: ignore[index]
        report.table(rows, title=f"{trace} at load {x:g} × capacity of γ=0 ({rows[0]['requests']} requests)")
    if json_out is not None:
        try:  # NaN (no query served, nothing to compare) is null: strict JSON has no NaN
            json_out.write_text(jsonio.dumps(out))
        except OSError as e:
            opt.fail(f"--json {json_out}: {e.strerror or e}")
    if plots is not None:
        cap = float(out["capacity_per_s"])  # type: ignore[arg-type]
        for x, results in kept.items():
            if results:
                report.plot_over_time(results, cap, plots / f"over_time_{Path(trace).stem}_load{x:g}.png")
        by_policy: dict[str, dict[float, float]] = {}
        for r in runs:
            by_policy.setdefault(str(r["policy"]), {})[float(r["load"])] = float(r["vs_oracle"])  # type: ignore[arg-type]
        report.plot_sweep(by_policy, plots / f"sweep_{Path(trace).stem}.png")
