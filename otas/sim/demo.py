"""The scheduling half of `otas demo`: OTAS against fixed γ on a synthetic workload whose rate steps.

Uses the CPU profile shipped with the default model, so it runs anywhere without measuring.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from otas.config import SchedulerConfig, asset_path, default_apps_path, load_apps
from otas.profile.table import Profile
from otas.sim.cli import sweep

DEFAULT_PROFILE = "vit_tiny_p2_c5__cpu.json"


def default_profile_path() -> Path:
    return asset_path(DEFAULT_PROFILE)


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
    t = Table(title="total utility relative to the offline upper bound (oracle), by offered load")
    t.add_column("policy")
    for x in loads:
        t.add_column(f"load {x:g}x", justify="right")
        t.add_column("SLO met", justify="right")
    for name in policies[:-1]:
        cells = []
        for x in loads:
            r = next(r for r in out["runs"] if r["load"] == x and r["policy"] == name)  # type: ignore[index]
            cells += [f"{float(r['vs_oracle']):.3f}", f"{100 * float(r['slo_attainment']):.0f}%"]
        t.add_row(name, *cells)
    console.print(t)
    console.print("`otas simulate --help` runs any trace, policy set and load sweep; `otas serve` serves the model.")
