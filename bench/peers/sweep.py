"""otas against Triton (PyTriton), Ray Serve and LitServe on this machine: the same model, trace,
load generator and scoring, live.

For every server the sweep starts it, waits until it answers, replays the Azure conv trace
(`otas bench replay`'s code, in this process) at each load, and stops it (process group, then the
port is checked free) even on failure. otas runs its own policy; each peer runs
  1. a screen of its (max batch, delay) grid at load --screen-load with the best fixed γ there,
     --screen-s seconds each; the best setting by utility is kept for the rest;
  2. γ = 0 (the stock model) at every load;
  3. the best fixed γ in hindsight at every load: the --gamma-candidates γ that the simulator ranks
     best for that load's trace window (fixed:γ policies), each run live; the best live run of these
     and of γ = 0 is kept.
Then the no-op model through every server: the highest open-loop Poisson rate answered with
p99 <= --overhead-p99-ms, and `otas bench overhead` against `otas serve --noop`.

Writes under --out: one replay JSON per run, sweep.json (every run, settings, provenance),
summary.md and utility_vs_load.png, overhead.json, logs/ (each server's output).

    .venv/bin/python bench/peers/sweep.py                  # the whole sweep (about 20 min on this 2-core CPU)
    .venv/bin/python bench/peers/sweep.py --servers otas,litserve --loads 1 --duration-s 10 --grid 8:5
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from procs import FORMAT, MODEL, PEERS, ROOT, ServerFailed, server, server_cmd


class Sweep:
    def __init__(self, a: argparse.Namespace):
        from otas.bench.formats import make_format
        from otas.bench.replay import Workload, encode, image_pools, needed_images, window
        from otas.config import default_apps_path, load_apps
        from otas.profile.table import Profile
        from otas.sim.demo import default_profile_path

        self.a = a
        self.apps = load_apps(a.apps or default_apps_path("cpu"))
        self.profile = Profile.load(a.profile or default_profile_path())
        self.formats = {n: make_format(FORMAT[n], self.apps, MODEL) for n in ["otas", *PEERS]}
        windows = {}
        for load in sorted(set(a.loads) | {a.screen_load}):
            windows[load] = window(a.trace, self.apps, self.profile, a.max_batch, load, 0, a.duration_s, a.seed)
        if a.screen_s < a.duration_s:
            t, cap = window(a.trace, self.apps, self.profile, a.max_batch, a.screen_load, 0, a.screen_s, a.seed)
            windows["screen"] = (t, cap)
        need: dict[str, int] = {}
        for t, _ in windows.values():
            for task, n in needed_images(t, self.apps).items():
                need[task] = max(need.get(task, 0), n)
        print(f"loading {sum(need.values())} test images", flush=True)
        pools = image_pools(self.apps, need, a.data)
        self.work: dict[tuple[str, object], Workload] = {}
        for key, (t, cap) in windows.items():
            load = a.screen_load if key == "screen" else key
            for n, fmt in self.formats.items():
                self.work[(n, key)] = Workload(t, *encode(t, self.apps, pools, fmt), load, cap)
        self.loadavg_start = os.getloadavg()[0]
        self.runs: list[dict] = []
        self.failures: dict[str, str] = {}
        self.out = a.out
        self.out.mkdir(parents=True, exist_ok=True)

    def replay(self, url: str, name: str, key: object, variant: str, setting: str, gamma: int | None,
               server_args: list[str]) -> dict:  # fmt: skip
        from otas.bench.compare import run_record
        from otas.bench.replay import run_live
        from otas.provenance import run_meta

        w = self.work[(name, key)]
        load_before = os.getloadavg()[0]  # other work on the machine shows here (the server idles before a replay)
        live, _, wall = run_live(url, self.formats[name], w, self.apps, self.profile)
        a = live["all"]
        slug = {"γ=0": "gamma0", "best fixed γ": "hindsight"}.get(variant, variant.replace(" ", "_"))
        knobs = "" if name == "otas" else "_b" + setting.split(",")[0].split()[-1] + "_d" + setting.split()[-2]
        tag = f"{name}_{slug}{knobs}_g{'adaptive' if gamma is None else gamma}_x{w.load:g}"
        if key == "screen":
            tag = "screen_" + tag
        meta = {"server": name, "variant": variant, "setting": setting, "gamma": gamma, "load": w.load,
                "format": self.formats[name].name, "trace": w.trace.name, "requests": len(w.trace),
                "duration_s": w.trace.duration_ms / 1e3, "capacity_per_s": w.capacity_per_s, "wall_s": wall,
                "server_command": " ".join(server_args), "shared_machine": self.a.shared_machine,
                "loadavg_1min_before": load_before, "loadavg_1min_after": os.getloadavg()[0],
                **run_meta()}  # fmt: skip
        path = self.out / "runs" / f"{tag}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {"meta": meta, "apps": [x.__dict__ for x in self.apps], "live": live, "sim": None}
        path.write_text(json.dumps(doc, indent=1, default=float) + "\n")
        print(f"  {tag}: utility {a['utility_expected']:.1f}, SLO {100 * a['slo_attainment']:.1f}%, "
              f"sent {a['sent']} = {a['answered']} + {a['rejected']} rejected + {a['errors']} errors "
              f"+ {a['lost']} lost, "
              f"p99 {a['latency_ms']['p99']:.0f} ms", flush=True)  # fmt: skip
        rec = run_record(name, variant, setting, gamma, w.load, live, os.path.relpath(path, ROOT))
        if key != "screen":
            self.runs.append(rec)
        return rec

    def serve_and_replay(self, name: str, plan: list[tuple[object, str]], gamma: int | None, batch: int = 0,
                         delay_ms: float = 0.0) -> list[dict]:  # fmt: skip
        """One server start, then one replay per (workload key, variant) in `plan`."""
        setting = "B_max 64, policy otas" if name == "otas" else f"batch {batch}, delay {delay_ms:g} ms"
        port = self.a.port
        args = server_cmd(name, port, gamma or 0, batch, delay_ms, max_queue=self.a.max_queue, apps=self.a.apps)
        fmt = self.formats[name]
        probe = ("/v2/health/ready", None) if name == "otas" else (fmt.path, self.work[(name, plan[0][0])].bodies[0])
        print(f"{name} {setting} γ={gamma if gamma is not None else 'adaptive'}", flush=True)
        out = []
        with server(name, args, port, probe, self.out / "logs" / f"{name}.log", self.a.start_timeout_s) as url:
            for key, variant in plan:
                time.sleep(self.a.pause_s)
                out.append(self.replay(url, name, key, variant, setting, gamma, args))
        return out

    def hindsight(self) -> dict[float, list[int]]:
        """Per load, the fixed γ the simulator ranks best on that load's window, best first."""
        from otas.config import SchedulerConfig
        from otas.sim.simulator import run

        tasks = {a.task for a in self.apps}
        gammas = [g for g in self.profile.gammas if all(g in self.profile.servable(t) for t in tasks)]
        cfg = SchedulerConfig(max_batch=self.a.max_batch)
        picks = {}
        for load in self.a.loads:
            w = self.work[("otas", load)]
            u = {g: run(w.trace, self.apps, self.profile, f"fixed:{g}", cfg, seed=self.a.seed).summary(self.apps)
                 ["utility"] for g in gammas}  # fmt: skip
            picks[load] = sorted(gammas, key=lambda g: -u[g])[: self.a.gamma_candidates]
            print(f"load {load:g}: fixed γ by simulated utility " + ", ".join(f"{g}: {u[g]:.0f}" for g in picks[load]))
        return picks

    def peer(self, name: str, picks: dict[float, list[int]]) -> None:
        from otas.bench.compare import GAMMA0, HINDSIGHT

        screen_key = "screen" if ("otas", "screen") in self.work else self.a.screen_load
        g_screen = picks.get(self.a.screen_load, [0])[0]
        best, best_u = self.a.grid[0], -1.0
        if len(self.a.grid) > 1:
            for batch, delay in self.a.grid:
                rec = self.serve_and_replay(name, [(screen_key, "screen")], g_screen, batch, delay)[0]
                if rec["all"]["utility_expected"] > best_u:
                    best, best_u = (batch, delay), rec["all"]["utility_expected"]
            print(f"{name}: best setting batch {best[0]}, delay {best[1]:g} ms", flush=True)
        self.settings[name] = {"grid": self.a.grid, "screen_gamma": g_screen, "best": best}
        self.serve_and_replay(name, [(x, GAMMA0) for x in self.a.loads], 0, *best)
        by_gamma: dict[int, list[float]] = {}
        for load, gs in picks.items():
            for g in gs:
                if g != 0:  # γ=0 was just run at every load
                    by_gamma.setdefault(g, []).append(load)
        for g, loads in sorted(by_gamma.items()):
            self.serve_and_replay(name, [(x, HINDSIGHT) for x in loads], g, *best)

    def main(self) -> None:
        self.settings: dict[str, dict] = {}
        t0 = time.monotonic()
        picks = self.hindsight() if set(self.a.servers) - {"otas"} else {}
        for name in self.a.servers:
            try:
                if name == "otas":
                    self.serve_and_replay("otas", [(x, "policy otas") for x in self.a.loads], None)
                else:
                    self.peer(name, picks)
            except ServerFailed as e:
                print(f"{name}: FAILED: {e}", flush=True)
                self.failures[name] = str(e)
            self.write(picks, time.monotonic() - t0)
        if self.a.overhead:
            self.overhead()
        self.write(picks, time.monotonic() - t0)

    def overhead(self) -> None:
        from noop import noop_rate

        res = {}
        for name in self.a.servers:
            batch, delay = self.settings.get(name, {}).get("best", self.a.grid[0])
            try:
                res[name] = noop_rate(self, name, batch, delay)
            except ServerFailed as e:
                print(f"{name} no-op: FAILED: {e}", flush=True)
                res[name] = {"failed": str(e)}
        from otas.provenance import run_meta

        doc = {"meta": {**run_meta(), "shared_machine": self.a.shared_machine, "p99_ms": self.a.overhead_p99_ms},
               "servers": res}  # fmt: skip
        (self.out / "overhead.json").write_text(json.dumps(doc, indent=1, default=float) + "\n")

    def write(self, picks: dict, elapsed_s: float) -> None:
        from otas.provenance import run_meta

        a = self.a
        doc = {"meta": {**run_meta(), "elapsed_s": elapsed_s, "shared_machine": a.shared_machine,
                        "loadavg_1min_at_start": self.loadavg_start,
                        "trace": a.trace, "loads": a.loads, "duration_s": a.duration_s, "screen_s": a.screen_s,
                        "screen_load": a.screen_load, "grid": a.grid, "max_queue": a.max_queue,
                        "gamma_candidates": a.gamma_candidates,
                        "capacity_per_s": self.work[("otas", a.loads[0])].capacity_per_s},
               "hindsight_gammas": {str(k): v for k, v in picks.items()}, "settings": self.settings,
               "failures": self.failures, "runs": self.runs}  # fmt: skip
        report(self.out, doc)


def with_hindsight(runs: list[dict]) -> list[dict]:
    """The runs, with every γ=0 run of a peer also a candidate for its best fixed γ in hindsight."""
    from otas.bench.compare import GAMMA0, HINDSIGHT

    return [r for r in runs if r["variant"] != HINDSIGHT or r["gamma"] != 0] + [
        dict(r, variant=HINDSIGHT) for r in runs if r["variant"] == GAMMA0]  # fmt: skip


def report(out: Path, doc: dict) -> None:
    """sweep.json (with the otas / best peer ratios), summary.md and the plot, from `doc["runs"]`."""
    from otas.bench.compare import markdown, plot, ratios

    runs = with_hindsight(doc["runs"])
    doc["ratios"] = {str(k): v for k, v in ratios(runs).items()}
    (out / "sweep.json").write_text(json.dumps(doc, indent=1, default=float) + "\n")
    if runs:
        (out / "summary.md").write_text(markdown(runs))
        title = f"Azure conv, {doc['meta']['duration_s']:g} s per point, CPU ({os.cpu_count()} cores)"
        plot(runs, out / "utility_vs_load.png", title)


def rebuild(out: Path) -> None:
    """Re-read every replay under out/runs/ (screens aside) into sweep.json, summary.md and the plot,
    keeping the rest of sweep.json: for a sweep that was cut short or re-run in parts."""
    from otas.bench.compare import run_record
    from otas.provenance import run_meta

    doc = json.loads((out / "sweep.json").read_text())
    runs = []
    for f in sorted((out / "runs").glob("*.json")):
        if not f.name.startswith("screen_"):
            d = json.loads(f.read_text())
            m = d["meta"]
            runs.append(run_record(m["server"], m["variant"], m["setting"], m["gamma"], m["load"], d["live"],
                                   os.path.relpath(f, ROOT)))  # fmt: skip
    doc["runs"], doc["meta"]["rebuilt"] = runs, run_meta()
    report(out, doc)
    print(f"rebuilt {out / 'sweep.json'} from {len(runs)} replays")


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--servers", default="otas,triton,ray,litserve", help="comma-separated subset")
    p.add_argument("--loads", default="0.5,1,1.5,2", help="× the γ=0 capacity of the profile")
    p.add_argument("--duration-s", type=float, default=12.0, help="seconds of scaled trace per replay")
    p.add_argument("--grid", default="4:5,16:20", help="peer settings MAX_BATCH:DELAY_MS,...")
    p.add_argument("--screen-load", type=float, default=1.0, help="load at which the grid is screened")
    p.add_argument("--screen-s", type=float, default=8.0, help="seconds of trace per screening replay")
    p.add_argument("--gamma-candidates", type=int, default=1, help="fixed γ per load run live (besides 0)")
    p.add_argument("--max-queue", type=int, default=256, help="peers' queue-size limit (Triton, Ray Serve)")
    p.add_argument("--max-batch", type=int, default=64, help="B_max of the capacity the loads scale (as otas)")
    p.add_argument("--trace", default="azure")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--apps", type=Path, default=None, help="applications YAML (default: otas/configs/apps.yaml)")
    p.add_argument("--profile", type=Path, default=None, help="default: the shipped CPU profile")
    p.add_argument("--data", type=Path, default=None, help="CIFAR-10 archive (default: $OTAS_CIFAR10)")
    p.add_argument("--port", type=int, default=8140, help="servers listen here (Triton: also +1, +2)")
    p.add_argument("--pause-s", type=float, default=2.0, help="idle seconds before each replay")
    p.add_argument("--start-timeout-s", type=float, default=180.0)
    p.add_argument("--overhead", action=argparse.BooleanOptionalAction, default=True, help="no-op runs at the end")
    p.add_argument("--overhead-p99-ms", type=float, default=50.0)
    p.add_argument("--overhead-s", type=float, default=1.5, help="seconds per rate step")
    p.add_argument("--shared-machine", default="", help="a note recorded with the results (e.g. what else ran)")
    p.add_argument("--out", type=Path, default=ROOT / "bench/results/peers")
    p.add_argument("--rebuild", action="store_true", help="only re-read --out/runs/ into the report; run nothing")
    a = p.parse_args(argv)
    a.servers = [s for s in a.servers.split(",") if s]
    bad = [s for s in a.servers if s != "otas" and s not in PEERS]
    if bad:
        p.error(f"--servers: unknown {bad}; use a subset of otas,{','.join(PEERS)}")
    try:
        a.loads = [float(x) for x in a.loads.split(",") if x]
        a.grid = [(int(b), float(d)) for b, d in (x.split(":") for x in a.grid.split(",") if x)]
    except ValueError:
        p.error(f"--loads {a.loads!r} / --grid {a.grid!r}: use e.g. --loads 0.5,1 --grid 8:5,16:10")
    if not a.loads or min(a.loads) <= 0 or not a.grid or min(b for b, _ in a.grid) < 1:
        p.error("--loads must be positive and --grid batches >= 1")
    if a.gamma_candidates < 1 or a.duration_s <= 0 or a.screen_s <= 0:
        p.error("--gamma-candidates must be >= 1, --duration-s and --screen-s > 0")
    return a


def _interrupt(*_) -> None:
    raise KeyboardInterrupt  # so that every server's finally-block stops it


def main(argv: list[str] | None = None) -> None:
    a = parse(argv)
    if a.rebuild:
        return rebuild(a.out)
    signal.signal(signal.SIGTERM, _interrupt)
    t0 = time.monotonic()
    Sweep(a).main()
    print(f"done in {(time.monotonic() - t0) / 60:.1f} min; results in {a.out}", flush=True)


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
