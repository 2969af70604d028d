"""The scheduling half of `otas demo`: OTAS against fixed γ on a synthetic workload whose rate steps.

Uses the CPU profile shipped with the default model, so it runs anywhere without measuring.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from rich.console import Console

from otas.config import SchedulerConfig, default_apps_path, load_apps
from otas.profile.table import Profile
from otas.sim import report
from otas.sim.cli import sweep

DEFAULT_PROFILE = "vit_tiny_p2_c5__cpu.json"


def default_profile_path() -> Path:
    return Path(str(resources.files("otas") / "assets" / DEFAULT_PROFILE))


def run(console: Console, loads: tuple[float, ...] = (0.5, 1.0, 2.0), requests: int = 4000) -> None:
    prof = Profile.load(default_profile_path())
    apps = load_apps(default_apps_path("cpu"))
    g = prof.gammas
    policies = ["otas", "fixed:0", f"fixed:{g[0]}", f"fixed:{g[-1]}", "edf", "clipper", "oracle"]
    console.print(
        f"\n[bold]scheduling[/] {len(apps)} applications ({', '.join(f'{a.name}: SLO {a.slo_ms:g} ms' for a in apps)}) "
        f"with the profile measured on {prof.device}; step trace of {requests} requests"
    )
    out, _ = sweep("step", apps, [prof], policies, loads, SchedulerConfig(), seed=0, n_synthetic=requests)
    for x in loads:
        rows = [r for r in out["runs"] if r["load"] == x]  # type: ignore[index]
        report.table(rows, title=f"load {x:g} × the capacity of γ = 0", console=console)
