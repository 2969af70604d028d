"""`otas bench replay`: open-loop trace replay against a running server, over HTTP only.

Each trace arrival becomes one infer request (a base64 PNG of a labelled CIFAR-10 test image of
the application's task, corrupted exactly as evaluation does), sent at its timestamp whatever
happened to earlier ones (open loop, many in flight). Every request is counted once
(`otas.bench.scoring`).

With `coalesce_ms` W > 0 the client is a batching gateway: arrivals of one application within W ms
of the first are sent as one multi-image request when the window closes (or at 256 images), and
each image is still scored from its own arrival, so the wait counts against it. Each request states
its first arrival's wait when sent (`otas-waited-ms`, unless `state_wait` is off), so the server
times it from there, and the simulator's prediction sends the arrivals as the same gateway does
(`otas.sim.simulator.Gateway`). A fast device
serves more images per second than one Python front end takes requests (a ViT-Tiny at 32 px on
one H200: ~53,000/s); coalescing lets a replay reach it.

The request format is otas's KServe v2 JSON by default, or another server's (`otas.bench.formats`:
Triton's KServe v2 with priorities, or the plain JSON of a Ray Serve / LitServe handler), so one
load generator and one scoring serve every server compared. Against otas, the simulator's
prediction for the same workload (trace window, applications, profile, policy and scheduler config,
all read from the server's /v1/config) is written beside the live figures; another server has no
/v1/config, so the applications and profile come from the command line and no prediction is made.
"""

from __future__ import annotations

import base64
import io
import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from otas.bench.formats import Format, input_size, make_format
from otas.bench.openloop import Groups, check_senders, send_open_loop
from otas.bench.scoring import summarize
from otas.config import SchedulerConfig, default_apps_path, load_apps
from otas.profile.table import Profile
from otas.provenance import run_meta
from otas.server.waited import WAITED
from otas.sim.traces import MAX_LOAD, MIN_LOAD, Trace, capacity_per_s, make_trace
from otas.types import App

if TYPE_CHECKING:
    from otas.sim.simulator import Gateway


@dataclass
class Pool:
    """Test images of one task, as base64 PNGs (`bodies`) and as raw RGB pixels at the model's input
    size (`pixels`), and their true labels."""

    bodies: list[bytes]
    labels: list[str]
    pixels: list[bytes]


def check_out(out: Path, tag: str) -> None:
    """ValueError unless the replay's files can be written under `out` with `tag` in their names."""
    if tag and (tag in (".", "..") or not all(c.isalnum() or c in "._+=-" for c in tag)):
        raise ValueError(f"--tag {tag!r}: use letters, digits and . _ + = - (it names the output files)")
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; give a directory (made if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ValueError(f"--out {out}: cannot make it ({e.strerror}); give a writable directory") from None


def server_info(url: str) -> dict[str, Any]:
    """The server's /v1/config: model, policy, scheduler config, applications, profile."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"{url}/v1/config", timeout=10) as r:
            info = json.loads(r.read())
    except (urllib.error.URLError, OSError) as e:
        raise ValueError(f"cannot reach the server at {url} ({e}); start it with `otas serve`") from None
    except ValueError as e:  # (JSONDecodeError, UnicodeDecodeError)
        raise ValueError(f"{url}/v1/config is not JSON ({str(e)[:200]}); is this an otas server?") from None
    if not isinstance(info, dict):
        raise ValueError(f"{url}/v1/config is a JSON {type(info).__name__}, not an otas server's configuration")
    return info


def image_pools(apps: Sequence[App], needed: dict[str, int], data: Path | None, size: int = 32) -> dict[str, Pool]:
    """Per task, `needed[task]` images (cycling) of the CIFAR-10 test split, as evaluation sees them:
    PNGs at their own size, and the raw pixels the server decodes from each PNG for a `size` input."""
    from PIL import Image

    from otas.data.cifar import load_cifar10
    from otas.data.tasks import get_task
    from otas.engine.images import decode_image
    from otas.train.common import corrupt_set

    test_all = load_cifar10("test", data, progress=False)
    pools = {}
    for task in sorted({a.task for a in apps}):
        spec = get_task(task)
        ds = corrupt_set(test_all.subset(list(spec.classes)), spec.corruption, seed=1)  # as in evaluation
        n = min(len(ds), max(needed.get(task, 0), 1))
        idx = np.linspace(0, len(ds) - 1, n).astype(int)  # a spread over every class
        bodies, pixels = [], []
        for i in idx:
            buf = io.BytesIO()
            Image.fromarray(ds.images[i]).save(buf, format="PNG")
            bodies.append(bytes(base64.b64encode(buf.getvalue())))
            pixels.append(decode_image(buf.getvalue(), size).tobytes())
        pools[task] = Pool(bodies, [spec.classes[int(ds.labels[i])] for i in idx], pixels)
    return pools


MAX_REPEAT = 1000
"""Copies of the trace one replay plays at most."""

MAX_COALESCED = 256
"""Images in one coalesced request at most (the server takes 1..256)."""


def coalesce(trace: Trace, window_ms: float, most: int = MAX_COALESCED) -> Groups:
    """Requests as a batching gateway sends them: arrivals of one application within `window_ms` of
    the first of its open request join it; the request goes when its window closes, or at the arrival
    that fills it to `most`. Every arrival is in exactly one request."""
    if not (0 < window_ms < math.inf and most >= 1):
        raise ValueError(f"coalesce window {window_ms} ms, {most} images: use a finite window > 0 and >= 1 image")
    opened: dict[str, tuple[float, list[int]]] = {}
    out: list[tuple[float, list[int]]] = []
    for i, (t, a) in enumerate(zip(trace.arrival_ms.tolist(), trace.apps, strict=True)):
        g = opened.get(a)
        if g is not None and t > g[0] + window_ms:  # its window closed before this arrival
            out.append((g[0] + window_ms, g[1]))
            g = None
        if g is None:
            g = opened[a] = (t, [])
        g[1].append(i)
        if len(g[1]) == most:
            out.append((t, g[1]))
            del opened[a]
    out += [(t0 + window_ms, m) for t0, m in opened.values()]
    out.sort(key=lambda x: (x[0], x[1][0]))
    return Groups([t for t, _ in out], [m for _, m in out])


def gateway(trace: Trace, groups: Groups, told: bool) -> Gateway:
    """The coalescing client as the simulator models it: each arrival reaches the server when its
    request is sent; `told`: the request states its first arrival's wait (`otas-waited-ms`)."""
    from otas.sim.simulator import Gateway

    send, first = np.empty(len(trace)), np.empty(len(trace))
    for t, members in zip(groups.send_ms, groups.members, strict=True):
        send[members], first[members] = t, trace.arrival_ms[members[0]]
    return Gateway(send, first, told)


def sim_window(
    trace_spec: str, apps: Sequence[App], profile: Profile, load: float, seconds: float, repeat: int,
    coalesce_ms: float, max_batch: int = 256,
) -> tuple[Trace, Gateway]:  # fmt: skip
    """What a replay sends, for the simulator alone: `load` × the γ = 0 capacity × `seconds` arrivals of the
    trace played `repeat` times (as `scripts/gpu_serve_replay.sh` sizes a replay), and the coalescing
    gateway (`coalesce_ms`, waits stated) that sends them."""
    n = int(load * capacity_per_s(profile, apps, max_batch) * seconds)
    trace, _ = window(trace_spec, apps, profile, max_batch, load, n, 0, 0, repeat)
    return trace, gateway(trace, coalesce(trace, coalesce_ms), True)


def simulate(
    trace: Trace, apps: Sequence[App], profile: Profile, policy: str, cfg: SchedulerConfig, seed: int,
    plan_ahead: bool = False, via: Gateway | None = None,
) -> dict:  # fmt: skip
    """The simulator's run of the replayed trace, as the server schedules it (`plan_ahead`: as its
    engine) and as the client sends it (`via`: through a coalescing gateway; None: each arrival at once)."""
    from otas.sim.simulator import run

    out = {}
    for noise in (False, True):
        res = run(trace, apps, profile, policy, cfg, seed=seed, noise=noise, plan_ahead=plan_ahead, gateway=via)
        s = res.summary(apps)
        names = np.array(res.app_of)
        s["utility_per_app"] = {a.name: float(res.utility[names == a.name].sum()) for a in apps}
        out["noisy" if noise else "noise_free"] = s
    return out


@dataclass
class Workload:
    """One replay's requests: the trace window, the request bodies and the true labels (one per
    arrival); `groups` where arrivals are coalesced (`bodies` then one per request)."""

    trace: Trace
    bodies: list[bytes]
    labels: list[str]
    load: float
    capacity_per_s: float
    groups: Groups | None = None


def check_window(load: float, limit: int, duration_s: float) -> None:
    """ValueError unless the load is in [MIN_LOAD, MAX_LOAD] and the limits are finite and >= 0 (NaN included)."""
    if not (MIN_LOAD <= load <= MAX_LOAD and 0 <= duration_s < math.inf and limit >= 0):
        raise ValueError(
            f"--load {load}, --duration-s {duration_s}, --limit {limit}: use a load in [{MIN_LOAD:g}, {MAX_LOAD:g}], "
            "finite seconds >= 0 and a count >= 0"
        )


def window(trace_spec: str, apps: Sequence[App], profile: Profile, max_batch: int, load: float, limit: int,
           duration_s: float, seed: int, repeat: int = 1) -> tuple[Trace, float]:  # fmt: skip
    """The first `limit` requests (0 = all) and first `duration_s` seconds (0 = all) of the trace,
    time-scaled to `load` × the γ=0 capacity of `profile` (as `otas simulate` defines it), after
    playing the scaled trace `repeat` times back to back (each copy one mean gap after the last
    arrival of the one before: a fast device serves the hour-long Azure trace in under a second)."""
    check_window(load, limit, duration_s)
    if not 1 <= repeat <= MAX_REPEAT:
        raise ValueError(f"--repeat {repeat}: play the trace 1..{MAX_REPEAT} times")
    cap = capacity_per_s(profile, apps, max_batch)
    full = make_trace(trace_spec, apps, load, cap, seed=seed)
    t = full.arrival_ms - full.arrival_ms[0]
    if repeat > 1:
        period = t[-1] + (t[-1] / (len(t) - 1) if len(t) > 1 else 1.0)
        t = np.concatenate([t + k * period for k in range(repeat)])
        full = Trace(full.name, t, list(full.apps) * repeat)
    n = len(full) if limit <= 0 else min(limit, len(full))
    if duration_s > 0:
        n = min(n, int(np.searchsorted(t, duration_s * 1e3, side="right")))
    return Trace(full.name, t[:n], list(full.apps[:n])), cap


def encode(
    trace: Trace, apps: Sequence[App], pools: dict[str, Pool], fmt: Format, groups: Groups | None = None
) -> tuple[list[bytes], list[str]]:
    """Request bodies (one per arrival, or per request of `groups`) and true labels (one per arrival),
    images of each task taken in turn from its pool."""
    task_of = {a.name: a.task for a in apps}
    cursor = {t: 0 for t in pools}
    images, labels = [], []
    for a in trace.apps:
        pool, k = pools[task_of[a]], cursor[task_of[a]]
        cursor[task_of[a]] += 1
        source = pool.pixels if fmt.raw else pool.bodies
        images.append(source[k % len(source)])
        labels.append(pool.labels[k % len(pool.labels)])
    if groups is None:
        return [fmt.body(im, a) for im, a in zip(images, trace.apps, strict=True)], labels
    return [fmt.body_many([images[i] for i in m], trace.apps[m[0]]) for m in groups.members], labels


def needed_images(trace: Trace, apps: Sequence[App]) -> dict[str, int]:
    task_of = {a.name: a.task for a in apps}
    needed: dict[str, int] = {}
    for a in trace.apps:
        needed[task_of[a]] = needed.get(task_of[a], 0) + 1
    return needed


def run_live(
    url: str, fmt: Format, work: Workload, apps: Sequence[App], profile: Profile, senders: int = 1,
    state_wait: bool = False,
) -> tuple[dict, list, float]:  # fmt: skip
    """Replay a workload against a server from `senders` processes: (per-application summary,
    per-request records, wall s). `state_wait`: each request states its first arrival's wait when
    sent (`otas-waited-ms`), so the server times it from that arrival."""
    t0 = time.perf_counter()
    timeout_s = 30 + 10 * max(a.slo_ms for a in apps) / 1e3
    endpoint = f"{url.rstrip('/')}{fmt.path}"
    parse = fmt.parse if work.groups is None else fmt.parse_many
    recs = send_open_loop(
        endpoint,
        work.bodies,
        work.trace.arrival_ms,
        timeout_s,
        parse,
        work.groups,
        fmt.headers,
        senders=senders,
        waited=WAITED if state_wait else None,
    )
    wall = time.perf_counter() - t0
    return summarize(recs, work.trace, apps, work.labels, profile), recs, wall


def main(
    url: str,
    trace_spec: str,
    apps_path: Path | None,
    load: float,
    limit: int,
    seed: int,
    out: Path,
    tag: str,
    data: Path | None,
    console,
    fmt_name: str = "otas",
    model: str = "",
    profile_path: Path | None = None,
    max_batch: int = 64,
    duration_s: float = 0.0,
    coalesce_ms: float = 0.0,
    repeat: int = 1,
    senders: int = 1,
    state_wait: bool = True,
) -> dict[str, Any]:
    url = url.rstrip("/")
    if not 0 <= coalesce_ms < math.inf:
        raise ValueError(f"--coalesce-ms {coalesce_ms}: use a finite window >= 0 (0: one request per arrival)")
    check_senders(senders)
    check_out(out, tag)  # before the replay, not after it
    size = 32
    if fmt_name in ("otas", "otas-uint8"):
        info = server_info(url)
        try:
            served = [App(**a) for a in info["apps"]]
            profile = Profile.from_dict(info["profile"])
            cfg = SchedulerConfig(**info["scheduler"])
            policy, model = info["policy"], info["model"]
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(
                f"{url}/v1/config is not an otas server's configuration ({type(e).__name__}: {str(e)[:200]}); "
                "for another server, give --format and the applications and profile it serves"
            ) from None
        apps = load_apps(apps_path) if apps_path else served
        if unknown := sorted({a.name for a in apps} - {a.name for a in served}):
            raise ValueError(
                f"{apps_path}: applications {unknown[:5]} are not served by {url} (it serves "
                f"{sorted(a.name for a in served)[:10]}); add them there (POST /v1/apps) or leave --apps out"
            )
        plan_ahead = bool(info.get("plan_ahead", False))  # (a server from before planning ahead: none)
        max_batch, device = cfg.max_batch, info.get("device")
        if fmt_name == "otas-uint8":
            size = input_size(url, model)
    else:  # another server: no /v1/config; what otas would read from it comes from the command line
        from otas.sim.demo import default_profile_path

        apps = load_apps(apps_path or default_apps_path("cpu"))
        profile = Profile.load(profile_path or default_profile_path())
        cfg, policy, device, plan_ahead = None, f"peer:{fmt_name}", profile.device, False
    if coalesce_ms >= (slo := max(a.slo_ms for a in apps)):
        raise ValueError(
            f"--coalesce-ms {coalesce_ms:g}: a gateway holding arrivals that long sends them past every "
            f"application's SLO (the largest is {slo:g} ms); use a window well under it"
        )
    fmt = make_format(fmt_name, apps, model, size=size)
    if coalesce_ms > 0 and not fmt.speaks_otas:
        raise ValueError(
            f"--coalesce-ms needs the otas or otas-uint8 format (the {fmt.name!r} format sends one image per request)"
        )
    trace, cap = window(trace_spec, apps, profile, max_batch, load, limit, duration_s, seed, repeat)
    n = len(trace)
    groups = coalesce(trace, coalesce_ms) if coalesce_ms > 0 else None
    sent = f", coalesced into {len(groups.members)} requests" if groups else ""
    span = f"{trace.duration_ms / 1e3:.1f} s ({load:g} × {cap:.1f}/s)"
    console.print(f"{trace.name}: {n} arrivals over {span}{sent}; loading images")
    pools = image_pools(apps, needed_images(trace, apps), data, size)
    work = Workload(trace, *encode(trace, apps, pools, fmt, groups), load, cap, groups)
    console.print(f"replaying against {url} ({fmt.name} format, {policy})")
    started = time.time()  # unix time: matched against the server's and the device's own samples
    told = state_wait and fmt.speaks_otas  # (another server would not read the header)
    live, recs, wall = run_live(url, fmt, work, apps, profile, senders, told)
    via = gateway(trace, groups, told) if groups is not None else None
    sim = simulate(trace, apps, profile, policy, cfg, seed, plan_ahead, via) if cfg is not None else None
    result = {
        "meta": {"url": url, "format": fmt.name, "trace": trace.name, "load": load, "capacity_per_s": cap,
                 "requests": n, "seed": seed, "policy": policy, "model": model, "device": device, "wall_s": wall,
                 "started_unix": started,
                 "duration_s": trace.duration_ms / 1e3, "max_batch": max_batch, "coalesce_ms": coalesce_ms,
                 "repeat": repeat, "senders": senders, "state_wait": told,
                 "http_requests": len(groups.members) if groups else n,
                 "scheduler": cfg.__dict__ if cfg is not None else None, **run_meta()},
        "apps": [a.__dict__ for a in apps],
        "live": live,
        "sim": sim,
    }  # fmt: skip
    from otas.bench.report import plot_replay, print_replay

    print_replay(result, console)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"replay_{Path(trace.name).stem}_{(tag or policy).replace(':', '')}_x{load:g}"
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    plot_replay(result, recs, trace, apps, out / f"{stem}.png")
    console.print(f"wrote {out / stem}.json and .png")
    return result
