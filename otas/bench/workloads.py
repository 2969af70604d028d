"""`otas bench workloads`: every policy on a suite of seeded workloads (`otas.sim.workloads`), at
several loads, on each profile set; JSON + plot under bench/results/workloads/.

One *cell* is (workload, profile set): its trace is drawn once, then time-scaled to each load
(× the γ = 0 capacity of the set's first profile, `otas.sim.traces.capacity_per_s`); every policy
is simulated noise-free on it, beside the oracle bound. Cells run in worker processes.
"""

from __future__ import annotations

import functools
import os
import platform
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from otas.bench import workloads_report as rep
from otas.bench.workloads_plot import plot_cdf, print_summary
from otas.config import SchedulerConfig
from otas.profile.table import Profile
from otas.provenance import run_meta
from otas.sched.oracle import upper_bound
from otas.sched.policies import POLICY_NAMES, make_policy
from otas.sim import workloads as wl
from otas.sim.cli import default_policies, is_model_switch, online_profiles
from otas.sim.simulator import run
from otas.sim.traces import AZURE_DEFAULT, Trace, at_load, capacity_per_s
from otas.types import App

LOADS = (0.5, 1.0, 1.5, 2.0, 3.0)
COMPARE = ("otas", "otas-paper")
"""Policies the report compares with the best other, where they exist."""


@dataclass(frozen=True)
class ProfileSet:
    """A device: the served profile first, then the other models (for model-switch and the oracle)."""

    name: str
    paths: tuple[str, ...]
    max_batch: int
    in_checkout: bool = False
    """Relative paths are the repository's (the default sets): found from any directory (`_located`)."""

    @classmethod
    def parse(cls, spec: str) -> ProfileSet:
        """NAME=PATH[,PATH2...][@MAX_BATCH], e.g. cpu=profiles/a__cpu.json,profiles/b__cpu.json@64."""
        name, eq, rest = spec.partition("=")
        paths, _, mb = rest.partition("@")
        try:
            max_batch = int(mb) if mb else 64
        except ValueError:
            max_batch = 0
        if not (eq and name and paths and max_batch > 0):
            raise ValueError(f"profile set {spec!r}: write NAME=PATH[,PATH2...][@MAX_BATCH], e.g. cpu=p.json@64")
        return cls(name, tuple(p for p in paths.split(",") if p), max_batch)

    def profiles(self) -> list[Profile]:
        return _load_profiles(tuple(_located(p) for p in self.paths) if self.in_checkout else self.paths)


_CHECKOUT = Path(__file__).resolve().parents[2]


def _located(path: str) -> str:
    """`path`, or, when a relative path is not found from here, the same path in the checkout this
    module runs from (the default sets name the repository's profiles/, so the suite runs from any
    directory; a path given by a user is read as given)."""
    p = Path(path)
    if p.is_absolute() or p.exists() or not (_CHECKOUT / p).exists():
        return path
    return str(_CHECKOUT / p)


# the model-size ladder (docs/models.md): the served Tiny model first, then the larger one, for model-switch;
# each set's profiles measured on one machine (the GPU's in one session, CUDA graphs)
DEFAULT_SETS = (
    ProfileSet("cpu", ("profiles/vit_tiny_p2_c5__cpu.json", "profiles/vit_small_p2_c5_grown__cpu.json"), 64, True),
    ProfileSet(
        "h200",
        ("profiles/vit_tiny_p2_c5__h200-graphs.json", "profiles/vit_small_p2_c5_grown__h200-graphs.json"),
        256,
        True,
    ),
)


@functools.lru_cache(maxsize=8)
def _load_profiles(paths: tuple[str, ...]) -> list[Profile]:
    return [Profile.load(p) for p in paths]


def available(name: str) -> bool:
    """Whether this checkout knows the policy `name` (otas-paper may not exist yet)."""
    if not name.startswith("fixed:") and name not in POLICY_NAMES:
        return False
    try:
        make_policy(name)
    except ValueError:
        return False
    return True


def policy_list(profiles: Sequence[Profile], policies: Sequence[str] | None, compare: Sequence[str]) -> list[str]:
    """The online policies to run on one set: the given ones (model-switch only with several
    profiles), or the compared ones that exist plus every default policy of `otas simulate`."""
    if policies:
        bad = [p for p in policies if not available(p)]
        if bad:
            raise ValueError(f"unknown policies {bad}; valid names: {', '.join(POLICY_NAMES)}")
        names = list(policies)
    else:
        names = [c for c in compare if available(c)] + default_policies(profiles)
    names = [p for p in dict.fromkeys(names) if p != "oracle" and (not is_model_switch(p) or len(profiles) > 1)]
    return [p for p in names if not p.startswith("fixed:") or int(p.split(":")[1]) in profiles[0].gammas]


def draw_suite(n: int, sets: Sequence[ProfileSet], first_seed: int = 0, n_requests=wl.N_REQUESTS) -> list[wl.Workload]:
    """The suite's workloads: tasks drawn from those every set's profiles serve."""
    return wl.suite(n, wl.served_tasks([p for s in sets for p in s.profiles()]), first_seed, n_requests)


@dataclass
class CellInputs:
    """What every policy of one (workload, profile set) cell runs on; `trace(load)` scales its trace."""

    profiles: list[Profile]
    apps: list[App]
    config: SchedulerConfig
    capacity_per_s: float
    """of the served profile at γ = 0 (the first of `profiles`): what load 1 means"""
    base: Trace

    def trace(self, load: float) -> Trace:
        return at_load(self.base, load, self.capacity_per_s)


def cell_inputs(workload: wl.Workload, pset: ProfileSet, azure: str) -> CellInputs:
    profs = pset.profiles()
    apps = workload.apps_for(profs[0])
    cfg = SchedulerConfig(max_batch=pset.max_batch)
    return CellInputs(profs, apps, cfg, capacity_per_s(profs[0], apps, cfg.max_batch), workload.base_trace(apps, azure))


def parse_requests(text: str) -> tuple[int, int]:
    """'3000,6000' -> (3000, 6000): the range of requests a workload's trace draws from."""
    try:
        lo, hi = (int(x) for x in text.split(","))
    except ValueError:
        raise ValueError(f"--requests {text!r}: write MIN,MAX, e.g. 3000,6000") from None
    if not 2 <= lo <= hi:
        raise ValueError(f"--requests {text!r}: need 2 <= MIN <= MAX (a trace of at least two requests)")
    return lo, hi


PROFILE_SET_HELP = (
    f"one of the suite's default profile sets ({', '.join(s.name for s in DEFAULT_SETS)}), or "
    "NAME=PATH[,PATH2...][@MAX_BATCH] as given a run"
)
"""The help of the bench scripts' --profile-set, which `seeded_cell` reads."""


def seeded_cell(
    seed: int,
    set_name: str,
    azure: str | None = None,
    n_requests: tuple[int, int] = wl.N_REQUESTS,
    sets: Sequence[ProfileSet] = DEFAULT_SETS,
) -> tuple[wl.Workload, CellInputs]:
    """The suite's workload of one seed and its inputs on one of the profile sets `sets` (by name; the
    default sets unless a run was given others, whose draw then serves their tasks), or on a set given
    as `NAME=PATH[,PATH2...][@MAX_BATCH]` (`ProfileSet.parse`), drawn for that set alone."""
    if "=" in set_name:  # a set of its own, NAME=PATH[,PATH2...][@MAX_BATCH]
        sets = [ProfileSet.parse(set_name)]
        set_name = sets[0].name
    by_name = {s.name: s for s in sets}
    if set_name not in by_name:
        raise ValueError(f"profile set {set_name!r}: use one of {', '.join(by_name)}")
    (w,) = draw_suite(1, sets, first_seed=seed, n_requests=n_requests)  # the suite's draw of this seed
    return w, cell_inputs(w, by_name[set_name], azure or str(AZURE_DEFAULT.resolve()))


def summary_line(name: str, s: dict) -> str:
    """One policy's run on a cell, as the bench scripts print it: utility, SLO attainment per
    application, mean batch and γ, and the queries lost (`SimResult.summary`)."""
    per = " ".join(f"{k} {v:.3f}" for k, v in s["slo_attainment_per_app"].items())
    return (
        f"{name:>14}  utility {s['utility']:9.1f}  SLO {s['slo_attainment']:.3f} [{per}]  mean batch "
        f"{s['mean_batch']:.1f}  mean γ {s['mean_gamma']:.1f}  expired {s['expired']}  late {s['late']}"
    )


def run_cell(
    workload: wl.Workload, pset: ProfileSet, loads: Sequence[float], policies: Sequence[str], azure: str
) -> list[dict[str, object]]:
    """Every policy at every load on one workload and one profile set: one record per load."""
    cell = cell_inputs(workload, pset, azure)
    profs, apps, cfg, cap = cell.profiles, cell.apps, cell.config, cell.capacity_per_s
    out = []
    for load in loads:
        t0 = time.perf_counter()
        tr = cell.trace(load)
        bound = upper_bound(tr.requests(apps), apps, profs, cfg)
        per: dict[str, dict[str, object]] = {}
        for name in policies:
            s = run(tr, apps, online_profiles(name, profs), name, cfg, seed=workload.seed).summary(apps)
            per[name] = {
                "utility": rep.rnd(s["utility"]),
                "slo": rep.rnd(s["slo_attainment"]),
                "slo_per_app": {a: rep.rnd(v) for a, v in s["slo_attainment_per_app"].items()},  # type: ignore[union-attr]
                "mean_gamma": rep.rnd(s["mean_gamma"]),
            }
        out.append(
            {
                "seed": workload.seed,
                "split": workload.split,
                "set": pset.name,
                "load": load,
                "trace": tr.name,
                "requests": len(tr),
                "capacity_per_s": rep.rnd(cap),
                "tightest_app": apps[0].name,
                "oracle": rep.rnd(bound.value),
                "policies": per,
                "wall_s": round(time.perf_counter() - t0, 3),
            }
        )
    return out


def run_suite(
    workloads: Sequence[wl.Workload],
    sets: Sequence[ProfileSet],
    loads: Sequence[float],
    policies: dict[str, list[str]],
    azure: str,
    jobs: int,
    progress: Callable[[str], None] = lambda s: None,
) -> list[dict[str, object]]:
    """Every cell, in `jobs` worker processes (inline for jobs=1); records sorted by set, seed, load."""
    tasks = [(w, s) for s in sets for w in workloads]
    tasks.sort(key=lambda t: -t[0].n * len(policies[t[1].name]) * (4 if t[1].max_batch <= 64 else 1))  # big first
    records: list[dict[str, object]] = []
    if jobs <= 1:
        for k, (w, s) in enumerate(tasks, 1):
            records += run_cell(w, s, loads, policies[s.name], azure)
            progress(f"{k}/{len(tasks)} cells (workload {w.seed}, {s.name})")
    else:
        with ProcessPoolExecutor(max_workers=jobs) as ex:
            futs = {ex.submit(run_cell, w, s, loads, policies[s.name], azure): (w, s) for w, s in tasks}
            for k, f in enumerate(as_completed(futs), 1):
                records += f.result()
                w, s = futs[f]
                progress(f"{k}/{len(tasks)} cells (workload {w.seed}, {s.name})")
    order = {s.name: i for i, s in enumerate(sets)}
    records.sort(key=lambda r: (order[str(r["set"])], int(r["seed"]), float(r["load"])))  # type: ignore[call-overload]
    return records


def main(
    n: int,
    first_seed: int,
    loads: Sequence[float],
    sets: Sequence[ProfileSet],
    policies: Sequence[str] | None,
    compare: Sequence[str],
    jobs: int,
    out: Path,
    tag: str,
    azure: str | None,
    console,
    n_requests: tuple[int, int] = wl.N_REQUESTS,
) -> dict[str, object]:
    """Draw, run, summarise; write {out}/{tag}.json and {tag}.png; print the summary tables."""
    t0 = time.perf_counter()
    azure = str(Path(azure).resolve() if azure else AZURE_DEFAULT.resolve())
    workloads = draw_suite(n, sets, first_seed, n_requests)
    per_set = {s.name: policy_list(s.profiles(), policies, compare) for s in sets}
    compared = [p for p in dict.fromkeys(p for ps in per_set.values() for p in ps) if not rep.is_baseline(p)]
    if not compared or not any(rep.is_baseline(p) for ps in per_set.values() for p in ps):
        raise ValueError(f"policies {per_set}: give at least one of {list(compare)} and one baseline (fixed:0, edf...)")
    console.print(f"{len(workloads)} workloads × {len(loads)} loads × {len(sets)} profile sets, {jobs} processes")
    records = run_suite(workloads, sets, loads, per_set, azure, jobs, progress=lambda s: console.print(s))
    features = {w.seed: w.features() for w in workloads}
    headline = [c for c in compare if c in compared]
    result = {
        "meta": {
            **run_meta(),
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "jobs": jobs,
            "wall_s": None,
            "loads": list(loads),
            "sets": {
                s.name: {
                    "profiles": list(s.paths),
                    "max_batch": s.max_batch,
                    "reference_ms": wl.reference_ms(s.profiles()[0]),
                    "policies": per_set[s.name],
                }
                for s in sets
            },
            "compared": compared,
            "headline": headline,
            "baselines": "the hindsight best, per workload and load, of every fixed:<γ>, edf, clipper, model-switch",
            "split": "seed % 2 == 0: tuning; odd: held-out",
            "azure": azure,
            "generator": {**rep.generator_constants(), "n_requests": list(n_requests)},
        },
        "workloads": [{**w.to_dict(), "features": features[w.seed]} for w in workloads],
        "cells": records,
    }
    result.update(rep.analyse(records, compared, loads, features))
    result["meta"]["wall_s"] = round(time.perf_counter() - t0, 1)  # type: ignore[index]
    out.mkdir(parents=True, exist_ok=True)
    rep.write_json(result, out / f"{tag}.json")
    plot_cdf(records, compared, [s.name for s in sets], out / f"{tag}.png")
    print_summary(result, console)
    console.print(f"wrote {out / (tag + '.json')} and {out / (tag + '.png')} in {result['meta']['wall_s']} s")  # type: ignore[index]
    return result
