"""`otas bench gpu`: how close each γ and batch size gets to the hardware, on one CUDA device.

One run measures, side by side: the bf16 matrix rate of the device (the MFU denominator); SDPA
kernels with and without the proportional-attention bias; per model, γ and batch size the eager,
CUDA-graph and (at γ = 0 and the most-merged γ) torch.compile paths; stock timm with torch.compile
at γ = 0; and the accuracy cost of dropping the bias. Ratios come from this one run.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from otas.adapt import SOURCE
from otas.adapt.fast import FastConfig, FastForward
from otas.models.checkpoint import load_checkpoint
from otas.profile.measure import device_name, gflops
from otas.profile.report import realised_share
from otas.provenance import run_meta

COMPILE_BATCHES = (8, 256)  # torch.compile per shape is slow to build: compare it at two batch sizes


def _bench(fn, warmup: int = 5, reps: int = 30) -> float:
    """Median ms of fn() timed with CUDA events."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2]


def matmul_tflops(n: int = 8192) -> float:
    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    ms = _bench(lambda: a @ b, reps=20)
    return 2 * n**3 / ms / 1e9


def sdpa_kernels(B: int = 64, H: int = 3, N: int = 257, d: int = 64) -> list[dict]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = (torch.randn(B, H, N, d, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    bias = torch.rand(B, 1, 1, N, device="cuda").add(1).log().to(torch.bfloat16)
    rows = []
    for name, backend in [
        ("flash", SDPBackend.FLASH_ATTENTION),
        ("efficient", SDPBackend.EFFICIENT_ATTENTION),
        ("cudnn", SDPBackend.CUDNN_ATTENTION),
        ("math", SDPBackend.MATH),
    ]:
        for with_bias in (False, True):
            mask = bias if with_bias else None
            try:
                with sdpa_kernel(backend):
                    ms = _bench(lambda mask=mask: F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
            except RuntimeError as e:
                ms, note = None, str(e).splitlines()[0][:80]
            else:
                note = ""
            rows.append({"kernel": name, "bias": with_bias, "ms": ms, "note": note, "B": B, "H": H, "N": N, "d": d})
    return rows


def bench_model(path: Path, batch_sizes: list[int], peak_tflops: float, console: Console) -> dict:
    model = load_checkpoint(path, "cuda", torch.bfloat16)
    gammas = list(model.config.gammas)
    task = next(iter(model.config.tasks))
    eager = FastForward(model, "cuda", FastConfig(mode="eager"))
    graphs = FastForward(model, "cuda", FastConfig(mode="graphs", buckets=tuple(batch_sizes)))
    size = model.vit.patch_embed.img_size
    rows = []
    for g in gammas:
        t = SOURCE if g <= 0 else task
        for b in batch_sizes:
            x = torch.randint(0, 256, (b, *size, 3), dtype=torch.uint8, device="cuda")
            row = {"gamma": g, "batch": b, "gflops_per_image": gflops(model, g)}
            row["eager_ms"] = _bench(lambda x=x, g=g, t=t: eager(x, g, t))
            row["graphs_ms"] = _bench(lambda x=x, g=g, t=t: graphs(x, g, t))
            best = min(row["eager_ms"], row["graphs_ms"])
            row["images_per_s"] = b / best * 1e3
            row["mfu"] = row["gflops_per_image"] * b / best / peak_tflops  # GFLOP/ms = TFLOP/s
            rows.append(row)
            console.log(f"{path.stem} γ={g:+d} b={b}: eager {row['eager_ms']:.3f} ms, graphs {row['graphs_ms']:.3f} ms")
    # torch.compile (per shape) at γ = 0 and the most-merged γ, and stock timm + compile at γ = 0
    compiled = FastForward(model, "cuda", FastConfig(mode="compile", buckets=tuple(batch_sizes)))
    stock = torch.compile(model.vit)
    from otas.data.transforms import normalize

    for row in rows:
        if row["gamma"] not in (0, gammas[0]) or row["batch"] not in COMPILE_BATCHES:
            continue
        b, g = row["batch"], row["gamma"]
        x = torch.randint(0, 256, (b, *size, 3), dtype=torch.uint8, device="cuda")
        row["compile_ms"] = _bench(lambda x=x, g=g: compiled(x, g, SOURCE), warmup=3)
        if g == 0:

            def run_stock(x=x):
                with torch.inference_mode():
                    xin = normalize(x.permute(0, 3, 1, 2).float().div(255), model.preprocess).to(torch.bfloat16)
                    return stock(xin).float().softmax(-1)

            row["stock_timm_compile_ms"] = _bench(run_stock, warmup=3)
    base = {r["batch"]: r for r in rows if r["gamma"] == 0}
    for r in rows:
        f = r["gflops_per_image"] / base[r["batch"]]["gflops_per_image"]
        best = min(r["eager_ms"], r["graphs_ms"])
        base_best = min(base[r["batch"]]["eager_ms"], base[r["batch"]]["graphs_ms"])
        r["flop_ratio"] = f
        r["speedup"] = base_best / best
        r["realised"] = realised_share(best, base_best, f)
    return {"model": path.stem, "rows": rows}


def bias_accuracy_cost(path: Path, data: Path | None) -> list[dict]:
    """Accuracy at every γ < 0 with and without proportional attention (bf16, full test sets)."""
    from otas.data.cifar import load_cifar10
    from otas.data.tasks import get_task
    from otas.train.common import corrupt_set, evaluate, to_device

    model = load_checkpoint(path, "cuda", torch.bfloat16)
    test = load_cifar10("test", data, progress=False)
    out = []
    for t in model.tasks:
        spec = get_task(t)
        x, y = to_device(corrupt_set(test.subset(list(spec.classes)), spec.corruption, seed=1), torch.device("cuda"))
        for g in [g for g in model.config.gammas if g < 0]:
            row = {"task": t, "gamma": g}
            for prop in (True, False):
                model.config.proportional_attn = prop
                acc = evaluate(model, x, y, g, t, batch_size=250, dtype=torch.bfloat16)
                row["acc_bias" if prop else "acc_no_bias"] = acc
            model.config.proportional_attn = True
            out.append(row)
    return out


def run_gpu_bench(
    models: list[Path], batch_sizes: list[int], out: Path, data: Path | None = None, console: Console | None = None
) -> dict:
    console = console or Console()
    if not torch.cuda.is_available():
        raise ValueError("otas bench gpu needs a CUDA device; none is available here")
    missing = [str(m) for m in models if not Path(m).is_file()]
    if missing:
        raise ValueError(f"no such checkpoint: {', '.join(missing)}")
    torch.backends.cuda.matmul.allow_tf32 = True
    t0 = time.time()
    peak = matmul_tflops()
    console.log(f"bf16 matmul 8192^3: {peak:.0f} TFLOP/s")
    result = {
        "meta": {**run_meta(), "device": device_name(torch.device("cuda")), "torch": torch.__version__},
        "matmul_bf16_tflops": peak,
        "sdpa": sdpa_kernels(),
        "models": [bench_model(m, batch_sizes, peak, console) for m in models],
        "bias_cost": {m.stem: bias_accuracy_cost(m, data) for m in models},
    }
    result["meta"]["wall_s"] = time.time() - t0
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_bench.json").write_text(json.dumps(result, indent=1) + "\n")
    print_tables(result, console)
    return result


def print_tables(result: dict, console: Console) -> None:
    for m in result["models"]:
        t = Table(
            title=f"{m['model']} on {result['meta']['device']} (bf16; peak {result['matmul_bf16_tflops']:.0f} TFLOP/s)"
        )
        for c in (
            "γ",
            "batch",
            "eager ms",
            "graphs ms",
            "compile ms",
            "timm+compile ms",
            "img/s",
            "MFU %",
            "FLOP x",
            "speed-up x",
            "realised %",
        ):
            t.add_column(c, justify="right")
        for r in m["rows"]:
            f = lambda k, fmt=".3f", r=r: format(r[k], fmt) if r.get(k) is not None else "-"
            t.add_row(
                str(r["gamma"]),
                str(r["batch"]),
                f("eager_ms"),
                f("graphs_ms"),
                f("compile_ms"),
                f("stock_timm_compile_ms"),
                f("images_per_s", ".0f"),
                format(100 * r["mfu"], ".1f"),
                format(1 / r["flop_ratio"], ".2f"),
                format(r["speedup"], ".2f"),
                format(100 * r["realised"], ".0f") if r["realised"] is not None else "-",
            )
        console.print(t)


def plot(result: dict, path: Path) -> None:
    """Latency per γ at each batch size, eager vs CUDA graphs, one panel per model."""
    from otas.plotting import pyplot, save

    plt = pyplot()

    models = result["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.2), squeeze=False)
    for ax, m in zip(axes[0], models, strict=True):
        batches = sorted({r["batch"] for r in m["rows"]})
        for b in batches:
            rows = sorted((r for r in m["rows"] if r["batch"] == b), key=lambda r: r["gamma"])
            g = [r["gamma"] for r in rows]
            (line,) = ax.plot(g, [r["graphs_ms"] for r in rows], "o-", label=f"b={b} graphs")
            ax.plot(g, [r["eager_ms"] for r in rows], "x--", color=line.get_color(), alpha=0.5, label=f"b={b} eager")
        ax.set_yscale("log")
        ax.set_xlabel("γ (< 0 merge, > 0 prompts)")
        ax.set_ylabel("batch latency (ms)")
        ax.set_title(f"{m['model']} on {result['meta']['device']} (bf16)", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6, ncol=2)
    save(fig, path)
