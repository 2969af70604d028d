"""Images decoded per second by the server's decoder (`otas.engine.images.Decoder`) with N threads
against N processes, on this host's cores, for small PNGs (the 32×32 shipped sample) and larger JPEGs.

    python bench/decode_scaling.py [--workers 1,2,4,8] [--images 2048] [--rounds 3] [--out bench/results/decode]

Each round times every (mode, N) cell once, in a fresh random order, with requests of `--per-request`
images, `--concurrency` of them in flight (as a server's event loop would submit them); the median
over rounds is reported. Writes decode_scaling.json (with the machine, commit and command) and a plot.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from otas.engine.images import Decoder  # noqa: E402
from otas.plotting import pyplot, save  # noqa: E402
from otas.provenance import run_meta  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def payloads(kind: str, n: int) -> list[bytes]:
    if kind == "png32":
        files = sorted((REPO / "otas" / "assets" / "sample").glob("*/*/*.png"))
        data = [f.read_bytes() for f in files]
    else:  # a camera-sized JPEG, decoded reduced (DCT scaling) to the model's 32 px
        rng = np.random.default_rng(0)
        data = []
        for _ in range(16):
            buf = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (480, 640, 3), dtype=np.uint8)).save(buf, "JPEG", quality=85)
            data.append(buf.getvalue())
    return [data[i % len(data)] for i in range(n)]


async def throughput(dec: Decoder, data: list[bytes], per_request: int, concurrency: int) -> float:
    reqs = [data[i : i + per_request] for i in range(0, len(data), per_request)]
    it = iter(reqs)

    async def client():
        for r in it:
            await dec.many(r)

    t0 = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(concurrency)))
    return len(data) / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    cores = os.cpu_count() or 1
    ap.add_argument("--workers", default=",".join(str(w) for w in (1, 2, 4, 8, 16) if w <= max(cores, 2)))
    ap.add_argument("--images", type=int, default=2048)
    ap.add_argument("--per-request", default="1,64")
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--kinds", default="png32,jpeg640")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results" / "decode")
    args = ap.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    per_req = [int(p) for p in args.per_request.split(",")]
    kinds = args.kinds.split(",")
    data = {k: payloads(k, args.images if k == "png32" else args.images // 8) for k in kinds}
    decoders = {(m, w): Decoder(32, w, max_queue=1 << 20, processes=m == "processes") for m in ("threads", "processes")
                for w in workers}  # fmt: skip
    cells = [(k, m, w, p) for k in kinds for (m, w) in decoders for p in per_req]
    runs: dict[tuple, list[float]] = {c: [] for c in cells}
    for r in range(args.rounds):
        random.Random(r).shuffle(cells)
        for k, m, w, p in cells:
            runs[k, m, w, p].append(asyncio.run(throughput(decoders[m, w], data[k], p, args.concurrency)))
        print(f"round {r + 1}/{args.rounds} done", flush=True)
    for d in decoders.values():
        d.shutdown()
    rows = [
        {"kind": k, "mode": m, "workers": w, "per_request": p, "images_per_s": round(statistics.median(v), 1),
         "rounds": [round(x, 1) for x in v]}
        for (k, m, w, p), v in sorted(runs.items())
    ]  # fmt: skip
    cmd = "python bench/decode_scaling.py " + " ".join(sys.argv[1:])
    meta = {**run_meta(), "command": cmd.strip(), "cores": cores, "concurrency": args.concurrency}
    out = {"meta": meta, "rows": rows}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "decode_scaling.json").write_text(json.dumps(out, indent=1))
    plt = pyplot()
    fig, axes = plt.subplots(1, len(kinds), figsize=(5 * len(kinds), 3.6), squeeze=False)
    for ax, k in zip(axes[0], kinds, strict=True):
        for m in ("threads", "processes"):
            for p in per_req:
                pts = [(r["workers"], r["images_per_s"]) for r in rows
                       if (r["kind"], r["mode"], r["per_request"]) == (k, m, p)]  # fmt: skip
                ax.plot(*zip(*pts, strict=True), marker="o", ls="-" if m == "processes" else "--",
                        label=f"{m}, {p} per request")  # fmt: skip
        ax.set(title=f"{k} ({cores} cores)", xlabel="decode workers", ylabel="images / s", xscale="log", xticks=workers)
        ax.set_xticklabels([str(w) for w in workers])
        ax.legend(fontsize=7)
    save(fig, args.out / "decode_scaling.png")
    for r in rows:
        k, m, w, p = r["kind"], r["mode"], r["workers"], r["per_request"]
        print(f"{k:8s} {m:9s} x{w:<2d} {p:3d}/req {r['images_per_s']:9.0f} img/s")


if __name__ == "__main__":
    main()
