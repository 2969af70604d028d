"""Tables and plots of profiles: the accuracy-latency trade-off per γ, FLOP reduction vs speed-up."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.table import Table

from otas.profile.table import Profile


def realised_share(lat: float, base: float, flop_ratio: float) -> float | None:
    """Share of a γ's FLOP saving realised as time saved, (1 - lat/base) / (1 - flop_ratio); None
    unless the γ saves FLOPs (flop_ratio < 1)."""
    return (1 - lat / base) / (1 - flop_ratio) if flop_ratio < 1 else None


def speedup_rows(prof: Profile) -> list[dict]:
    """Per (γ, batch): latency, speed-up over γ = 0, FLOP ratio, and the share of the FLOP saving realised."""
    rows = []
    for g in prof.gammas:
        f = prof.gflops[g] / prof.gflops[0] if prof.gflops else None
        for b in prof.batch_sizes:
            lat, base = prof.latency_ms[g][b], prof.latency_ms[0][b]
            speedup = base / lat
            realised = realised_share(lat, base, f) if f is not None else None
            rows.append(
                {
                    "gamma": g,
                    "batch": b,
                    "latency_ms": lat,
                    "speedup": speedup,
                    "flop_ratio": f,
                    "flop_speedup": 1 / f if f else None,
                    "realised": realised,
                }
            )
    return rows


def _acc(prof: Profile, task: str, gamma: int) -> str:
    """Accuracy in %, or '–' where the pair is not servable (the source task has no prompts)."""
    return f"{100 * prof.accuracy[task][gamma]:.2f}" if gamma in prof.accuracy[task] else "–"


def print_profile(prof: Profile, console: Console | None = None) -> None:
    console = console or Console()
    t = Table(title=f"{prof.model} on {prof.device} ({prof.dtype})")
    t.add_column("γ", justify="right")
    t.add_column("GFLOPs", justify="right")
    for task in prof.accuracy:
        t.add_column(f"acc {task}", justify="right")
    for b in prof.batch_sizes:
        t.add_column(f"ms @{b}", justify="right")
    for g in prof.gammas:
        cells = [str(g), f"{prof.gflops[g]:.3f}" if prof.gflops else "-"]
        cells += [_acc(prof, task, g) for task in prof.accuracy]
        cells += [f"{prof.latency_ms[g][b]:.2f}" for b in prof.batch_sizes]
        t.add_row(*cells)
    console.print(t)


def markdown(prof: Profile) -> str:
    lines = [f"### {prof.model} on {prof.device} ({prof.dtype})", ""]
    tasks = list(prof.accuracy)
    head = ["γ", "GFLOPs/img", *[f"acc {t} %" for t in tasks]]
    for b in prof.batch_sizes:
        head += [f"ms @b{b}", f"speed-up @b{b} (FLOP-ideal, realised)"]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = {(r["gamma"], r["batch"]): r for r in speedup_rows(prof)}
    for g in prof.gammas:
        cells = [str(g), f"{prof.gflops[g]:.3f}" if prof.gflops else "-"]
        cells += [_acc(prof, t, g) for t in tasks]
        for b in prof.batch_sizes:
            r = rows[(g, b)]
            ideal = f"{r['flop_speedup']:.2f}x" if r["flop_speedup"] else "-"
            real = f", {100 * r['realised']:.0f}%" if r["realised"] is not None else ""
            cells += [f"{r['latency_ms']:.2f}", f"{r['speedup']:.2f}x ({ideal}{real})"]
        lines.append("| " + " | ".join(cells) + " |")
    meta = prof.meta
    lines += ["", f"commit `{meta.get('commit')}`, command `{meta.get('command')}`, created {meta.get('created')}"]
    if meta.get("accuracy_from"):
        here = meta.get("accuracy_measured")
        measured = f"; γ {', '.join(map(str, here))} measured on this device" if here else ""
        lines += ["", f"Accuracy from {meta['accuracy_from']}{measured}."]
    if meta.get("latency_from"):
        lines += ["", f"Latency, memory and load time from {meta['latency_from']}."]
    if prof.buckets:
        sizes = ", ".join(map(str, prof.buckets))
        lines += ["", f"Served padded to the batch buckets {sizes}: a batch takes its bucket's time."]
    return "\n".join(lines) + "\n"


def plot_tradeoff(profiles: list[Profile], path: Path, batch: int | None = None) -> None:
    """Accuracy vs latency per task, one point per γ, one panel per profile."""
    from otas.plotting import pyplot, save

    plt = pyplot()

    cols = min(len(profiles), 2)
    rows = -(-len(profiles) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(6 * cols, 4.4 * rows), squeeze=False)
    for ax in axes.flat[len(profiles) :]:
        ax.set_visible(False)
    for ax, prof in zip(axes.flat, profiles, strict=False):
        b = batch if batch in prof.batch_sizes else prof.batch_sizes[min(1, len(prof.batch_sizes) - 1)]
        for task, acc in prof.accuracy.items():
            gammas = [g for g in prof.gammas if g in acc]  # the task's servable γ (source has no prompts)
            xs = [prof.latency_ms[g][b] for g in gammas]
            ys = [100 * acc[g] for g in gammas]
            ax.plot(xs, ys, "o-", label=task)
            for g, x, y in zip(gammas, xs, ys, strict=True):
                ax.annotate(f"{g:+d}" if g else "0", (x, y), textcoords="offset points", xytext=(3, 3), fontsize=7)
        ax.set_xlabel(f"latency of a batch of {b} (ms)")
        ax.set_ylabel("test accuracy (%)")
        ax.set_title(f"{prof.model}\n{prof.device} ({prof.dtype})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save(fig, path)
