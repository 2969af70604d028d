"""From the JSON lines of `bench/gpu_merge.py` to gpu_merge.json, a Markdown report, a summary and a plot.

A row per (model, γ, batch, merge variant): merged_ms, stock_ms (γ = 0) and limit_ms (the same token
counts with no merge work) from one interleaved group, flops_ratio, and realised = (stock/merged - 1)
/ (stock/limit - 1), the share of the limit's speed-up that the variant achieves (1 = merging is
free; 0 = no faster than γ = 0; negative = slower).
"""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path


def load_records(paths: list[Path]) -> list[dict]:
    out = []
    for p in paths:
        for line in Path(p).read_text().splitlines():
            if line.strip():
                out.append(json.loads(line))
    return out


def realised(stock: float, merged: float, limit: float) -> float | None:
    gain = stock / limit - 1
    return (stock / merged - 1) / gain if gain > 1e-3 else None


def _limit_label(label: str) -> str:
    label, _, mode = label.partition("@")
    every = next((p for p in label.split("/") if p.startswith("every")), None)
    norm = "/fusednorm" if "fusednorm" in label.split("/") else ""
    return "limit" + (f"/{every}" if every else "") + norm + (f"@{mode}" if mode else "")


def _stock_label(label: str) -> str:
    head, _, mode = label.partition("@")
    norm = "/fusednorm" if "fusednorm" in head.split("/") else ""
    return "stock" + norm + (f"@{mode}" if mode else "")


def _nearest_kernels(kernels: dict, model: str, batch: int, label: str) -> dict:
    """The kernel listing of (model, variant) at this batch, else at the nearest batch that was profiled."""
    have = [b for (m, b, v) in kernels if m == model and v == label]
    return kernels[model, min(have, key=lambda b: abs(b - batch)), label] if have else {}


def build(records: list[dict]) -> dict:
    by_kind = defaultdict(list)
    for r in records:
        by_kind[r["kind"]].append(r)
    kernels = {(k["model"], k["batch"], k["variant"]): k for k in by_kind["kernels"]}
    rows = []
    for t in by_kind["time"]:
        ms = t["ms"]
        for label, merged in ms.items():
            if label.startswith(("stock", "limit")):
                continue
            limit, stock = ms.get(_limit_label(label)), ms.get(_stock_label(label))
            if stock is None:
                continue
            k = _nearest_kernels(kernels, t["model"], t["batch"], label)
            rows.append(
                {
                    "model": t["model"],
                    "gamma": t["gamma"],
                    "batch": t["batch"],
                    "impl": label,
                    "merged_ms": merged,
                    "stock_ms": stock,
                    "limit_ms": limit,
                    "flops_ratio": t["flops_ratio"].get(label),
                    "speedup": stock / merged,
                    "limit_speedup": stock / limit if limit else None,
                    "realised": realised(stock, merged, limit) if limit else None,
                    "attention_kernels": k.get("attention"),
                    "kernels_per_forward": k.get("kernels"),
                    "kernels_profiled_at": {"batch": k["batch"], "gamma": k["gamma"]} if k else None,
                }
            )
    stock_kernels = {(k["model"], k["batch"]): k for k in by_kind["kernels"] if k["variant"] == "stock"}
    return {
        "meta": by_kind["meta"],
        "rows": rows,
        "timm_compile": [
            {
                **t,
                "ours_over_timm_compile": t["ms"]["stock"] / t["ms"]["timm_compile"],
                **{
                    f"ours_{key}_over_timm_compile": (
                        t["ms"][cell] / t["ms"]["timm_compile"] if cell in t["ms"] else None
                    )
                    for key, cell in (("compiled", "stock@compiled-graphs"), ("fused_norm", "stock/fusednorm"))
                },
            }
            for t in by_kind["timm_compile"]
        ],
        "stock_kernels": list(stock_kernels.values()),
        "sdpa": by_kind["sdpa"],
        "accuracy": by_kind["accuracy"],
        "errors": [
            {**t["errors"], "model": t["model"], "batch": t["batch"], "gamma": t["gamma"]}
            for t in by_kind["time"]
            if t.get("errors")
        ],
        "skipped": by_kind["skipped"],
    }


def _fmt(v, spec=".2f") -> str:
    return "-" if v is None else format(v, spec)


def summary(result: dict) -> str:
    """Per model, at its most-merged γ and a middle one: ms and realised share per variant and batch."""
    lines = []
    compiled = {(t["model"], t["batch"]): t["ms"]["timm_compile"] for t in result["timm_compile"]}
    for model in sorted({r["model"] for r in result["rows"]}):
        rows = [r for r in result["rows"] if r["model"] == model]
        gammas = sorted({r["gamma"] for r in rows})
        for g in sorted({gammas[0], gammas[len(gammas) // 2]}):
            cell = {(r["impl"], r["batch"]): r for r in rows if r["gamma"] == g}
            batches = sorted({b for _, b in cell})
            first = {b: next(r for (_, bb), r in cell.items() if bb == b) for b in batches}
            table = [
                ("stock (γ=0)", [_fmt(first[b]["stock_ms"], ".3f") for b in batches]),
                ("limit (no merge work)", [_fmt(first[b]["limit_ms"], ".3f") for b in batches]),
                ("timm+compile (γ=0)", [_fmt(compiled.get((model, b)), ".3f") for b in batches]),
            ]
            for impl in dict.fromkeys(i for i, _ in cell):
                rs = [cell.get((impl, b)) for b in batches]
                cells = [f"{r['merged_ms']:.3f} ({_fmt(r['realised'], '.0%')})" if r else "-" for r in rs]
                table.append((impl, cells + [_fmt(next(r for r in rs if r)["kernels_per_forward"], "d")]))
            lines.append(f"\n{model}  γ={g}: ms (share of the limit's speed-up realised); kernels in one eager forward")
            lines.append(f"{'':24s}" + "".join(f"b={b}".rjust(17) for b in batches) + "kernels".rjust(9))
            lines += [
                f"{name:24s}"
                + "".join(c.rjust(17) for c in cells[: len(batches)])
                + "".join(c.rjust(9) for c in cells[len(batches) :])
                for name, cells in table
            ]
    for t in result["timm_compile"]:
        ours, timm = t["ms"]["stock"], t["ms"]["timm_compile"]
        more = "".join(
            f", {cell} {t['ms'][cell]:.3f} ms"
            for cell in ("stock/fusednorm", "stock@compiled-graphs")
            if cell in t["ms"]
        )
        lines.append(f"γ=0 {t['model']} b={t['batch']}: ours {ours:.3f} ms{more}, timm+compile {timm:.3f} ms")
    errors, skipped = len(result["errors"]), len(result["skipped"])
    lines.append(f"errors: {errors} groups with a failed variant; skipped: {skipped} (details in gpu_merge.md)")
    return "\n".join(lines)


def markdown(result: dict) -> str:
    out = ["# Merge implementations on the GPU", "", f"Runs: {[m.get('command') for m in result['meta']]}", ""]
    out += [
        "| model | γ | batch | impl | merged ms | stock ms | limit ms | FLOP ratio | realised | attention kernels |"
    ]
    out += ["|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(result["rows"], key=lambda r: (r["model"], r["gamma"], r["batch"])):
        att = "; ".join(k[:48] for k in r["attention_kernels"] or [])
        out.append(
            f"| {r['model']} | {r['gamma']} | {r['batch']} | {r['impl']} | {r['merged_ms']:.3f} | {r['stock_ms']:.3f} "
            f"| {_fmt(r['limit_ms'], '.3f')} | {_fmt(r['flops_ratio'], '.3f')} | {_fmt(r['realised'], '.2f')} | {att} |"
        )
    out += [
        "",
        "## γ = 0: ours (CUDA graphs) vs stock timm + torch.compile",
        "",
        "| model | batch | ours ms | ours, compiled-graphs ms | timm+compile ms | build s |",
        "|---|---|---|---|---|---|",
    ]
    for t in result["timm_compile"]:
        ours_c = _fmt(t["ms"].get("stock@compiled-graphs"), ".3f")
        out.append(
            f"| {t['model']} | {t['batch']} | {t['ms']['stock']:.3f} | {ours_c} | {t['ms']['timm_compile']:.3f} "
            f"| {t['build_s']} |"
        )
    out += ["", "## Attention alone", "", "| B | H | N | case | head dim | backend | ms |", "|" + "---|" * 7]
    for s in result["sdpa"]:
        ms = f"{s['ms']:.4f}" if "ms" in s else f"error: {s.get('error', '?')}"
        where = f"| {s['B']} | {s['H']} | {s['N']} | {s['case']} | {s['head_dim']} | {s.get('backend', 'default')}"
        out.append(f"{where} | {ms} |")
    out += ["", "## Accuracy (served path, bf16) vs the reference of the same attention and schedule", ""]
    out += ["| variant | γ | mean acc | min agree | max Δprob |", "|---|---|---|---|---|"]
    acc = defaultdict(list)
    for a in result["accuracy"]:
        acc[a["variant"], a["gamma"]].append(a)
    for (v, g), xs in sorted(acc.items(), key=lambda kv: (kv[0][0], kv[0][1])):
        mean = sum(a["acc"] for a in xs) / len(xs)
        out.append(
            f"| {v} | {g} | {mean:.4f} | {min(a['agree'] for a in xs):.4f} | {max(a['max_dprob'] for a in xs):.4f} |"
        )
    for title, key in (("Errors", "errors"), ("Skipped", "skipped")):
        if result[key]:
            out += ["", f"## {title}", "", *[f"- {json.dumps(e)}" for e in result[key]]]
    return "\n".join(out) + "\n"


LOW, HIGH = -1.5, 1.25


def plot(result: dict, path: Path) -> None:
    """Realised share of the limit's speed-up vs γ: a panel per (model, batch), a line per variant."""
    from otas.plotting import pyplot, save

    plt = pyplot()

    models = sorted({r["model"] for r in result["rows"]})
    batches = sorted({r["batch"] for r in result["rows"]})
    if not models:
        return
    colors: dict[str, str] = {}
    fig, axes = plt.subplots(len(models), len(batches), figsize=(4 * len(batches), 3.4 * len(models)), squeeze=False)
    for ax_row, model in zip(axes, models, strict=True):
        for ax, b in zip(ax_row, batches, strict=True):
            rows = [r for r in result["rows"] if r["model"] == model and r["batch"] == b and r["realised"] is not None]
            for impl in dict.fromkeys(r["impl"] for r in rows):
                pts = sorted((r["gamma"], min(max(r["realised"], LOW), HIGH)) for r in rows if r["impl"] == impl)
                style = "--" if "/noprop" in impl else ":" if "/every" in impl else "-"
                color = colors.setdefault(impl, f"C{len(colors) % 10}")
                ax.plot([p[0] for p in pts], [p[1] for p in pts], style, color=color, marker="o", ms=3, label=impl)
            ax.axhline(1, color="k", lw=0.8)
            ax.axhline(0, color="grey", lw=0.6)
            ax.set_ylim(LOW - 0.05, HIGH + 0.05)
            ax.set_title(f"{model}, batch {b}", fontsize=9)
            ax.set_xlabel("γ")
            ax.set_ylabel(f"realised share (clipped to {LOW}..{HIGH})", fontsize=8)
            ax.grid(alpha=0.3)
    for ax_row in axes:
        ax_row[-1].legend(fontsize=6, loc="lower left")
    save(fig, path, dpi=110)
