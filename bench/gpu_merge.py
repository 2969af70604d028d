"""Merge implementations on a GPU: latency against stock and the no-merge-work limit, accuracy, SDPA, timm+compile.

Each phase appends JSON lines to --out (a phase cut short keeps what it measured); `report` turns
them into gpu_merge.json, gpu_merge.md and gpu_merge.png and prints the summary. On a GPU:

    bash scripts/gpu_merge_session.sh        # every phase, within ~9 minutes on an H100

By hand (a CPU runs the eager path, for a check of the code):

    python bench/gpu_merge.py time --model tiny --device cpu --mode eager --batches 2 --gammas=-20,0 \\
        --variants reference,matmul+column --rounds 2 --out /tmp/gm/parts.jsonl
    python bench/gpu_merge.py report /tmp/gm/parts.jsonl --out-dir /tmp/gm

`step` times the merge steps alone (kernel variants of `otas.adapt.triton_merge`, one CUDA graph per
forward's steps); `compare` puts two variants of the same `time` records side by side, e.g. the kernels
of another tree (`time --old PATH`, served as "column+triton") against the current ones:

    python bench/gpu_merge.py time --model tiny --variants triton+column/fusednorm,column+triton/fusednorm \\
        --old /tmp/old/otas/adapt/triton_merge.py --out /tmp/gm/parts.jsonl
    python bench/gpu_merge.py compare /tmp/gm/parts.jsonl --variants column+triton/fusednorm,triton+column/fusednorm
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import time
from pathlib import Path


def _ints(s: str) -> list[int]:
    return [int(x) for x in s.split(",") if x.strip()]


def _variant(label: str):  # -> otas.profile.gpumerge.Variant
    """A variant by its label: any `merge_impl` (e.g. "triton+column"), optionally with the suffixes of
    `Variant.label` ("/noprop", "/every<k>", "/fusednorm", "@<mode>"), such as
    "matmul+column/every2@compiled-graphs" or "triton+column/fusednorm"."""
    from otas.adapt.fast import MODES
    from otas.adapt.ops import check_merge_impl
    from otas.profile.gpumerge import COMPILED, VARIANTS, Variant

    head, _, mode = label.partition("@")
    impl, *flags = head.split("/")
    every = [f.removeprefix("every") for f in flags if f.startswith("every")]
    try:
        check_merge_impl(impl)
        if mode and mode not in MODES:
            raise ValueError(f"mode {mode!r}: use one of {', '.join(MODES)}")
        if every and (not every[0].isdigit() or int(every[0]) < 1):
            raise ValueError(f"every{every[0]}: merge in every k-th block, k >= 1")
        v = Variant(impl, "noprop" not in flags, int(every[0]) if every else 1, mode, fused_norm="fusednorm" in flags)
    except ValueError as e:
        raise SystemExit(f"variant {label!r}: {e}") from e
    if v.label != label:  # an unknown or misplaced suffix
        known = sorted(k.label for k in VARIANTS + COMPILED)
        raise SystemExit(f"variant {label!r}: write it as {v.label!r}; e.g. {known}")
    return v


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("phase", choices=["time", "step", "accuracy", "sdpa", "timm-compile", "report", "compare"])
    ap.add_argument("parts", nargs="*", type=Path, help="report, compare: the JSON-lines files to combine")
    ap.add_argument(
        "--model",
        default="tiny",
        help='"tiny" (shipped), a checkpoint path, timm:<name> or arch:<name> (random weights)',
    )
    ap.add_argument("--gammas", type=_ints, default=None, help="γ to run, with 0 (default: the model's, timm: -16..0)")
    ap.add_argument("--batches", type=_ints, default=[256, 8, 64, 1], help="in order of importance")
    ap.add_argument(
        "--variants",
        default="all",
        help="comma-separated merge_impl[/noprop][/every<k>][/fusednorm][@mode] (gpumerge.VARIANTS)",
    )
    ap.add_argument(
        "--kernels",
        default="old,image,split",
        help="step: comma-separated old (the module at --old), image or split (the match kernels of "
        "triton_merge), with /j<BLOCK_J>, /s<BLOCK_S> (split), /w<warps>",
    )
    ap.add_argument(
        "--old",
        type=Path,
        default=None,
        help="a triton_merge.py (e.g. the committed kernels) to time beside the current one: in step, as the "
        "kernel variant 'old'; in time, as the merge of the variants spelt 'column+triton' (the current "
        "kernels serve 'triton+column')",
    )
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--mode", default="graphs", help="FastForward mode: graphs on a GPU, eager on a CPU")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--profile-batches", type=_ints, default=[256, 8], help="time: list kernels at these batches")
    ap.add_argument("--budget-s", type=float, default=float("inf"), help="stop starting new groups after this")
    ap.add_argument("--limit", type=int, default=1000, help="accuracy: test images per task")
    ap.add_argument("--data", type=Path, default=None, help="accuracy: CIFAR-10 archive (default $OTAS_CIFAR10)")
    ap.add_argument("--out", type=Path, default=Path("bench/results/gpu_merge_parts.jsonl"))
    ap.add_argument("--out-dir", type=Path, default=Path("bench/results"))
    args = ap.parse_args(argv)
    deadline = time.monotonic() + args.budget_s

    if args.phase == "report":
        from otas.profile.gpumerge_report import build, load_records, markdown, plot, summary

        result = build(load_records(args.parts))
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "gpu_merge.json").write_text(json.dumps(result, indent=1) + "\n")
        (args.out_dir / "gpu_merge.md").write_text(markdown(result))
        try:
            plot(result, args.out_dir / "gpu_merge.png")
        except ImportError as e:  # no matplotlib on this machine: the tables still stand
            print(f"no plot: {e}")
        print(summary(result))
        return
    if args.phase == "compare":
        labels = args.variants.split(",") if args.variants != "all" else []
        if len(labels) != 2:
            raise SystemExit("compare: give --variants OLD,NEW, two variant labels of the same runs")
        table = compare(args.parts, *labels)
        args.out_dir.mkdir(parents=True, exist_ok=True)
        (args.out_dir / "compare.md").write_text(table)
        print(table)
        return

    import torch

    from otas.profile import gpumerge, gpumerge_checks

    torch.backends.cuda.matmul.allow_tf32 = True
    for knob in ("recompile_limit", "cache_size_limit"):  # the compiled merge step meets many shapes
        if hasattr(torch._dynamo.config, knob):
            setattr(torch._dynamo.config, knob, 64)
    device = torch.device(args.device)
    rec = gpumerge.Recorder(args.out)
    rec.meta(device, phase=args.phase, model=args.model)
    variants = gpumerge.VARIANTS
    if args.variants != "all":
        variants = tuple(_variant(label) for label in args.variants.split(","))
    if args.phase == "sdpa":
        # Tiny before and after merging, Small (6 heads), ViT-B/16 before and after merging
        kinds = [(3, 257), (3, 161), (6, 193), (12, 197), (12, 101)]
        shapes = [(b, h, n, 64) for b in args.batches for h, n in kinds]
        gpumerge_checks.sdpa_rows(rec, shapes)
        return
    name, model = gpumerge.load_model(args.model, tuple(args.gammas) if args.gammas else None)
    if args.old is not None and args.phase == "time":
        _serve_old_kernels(args.old)
    if args.phase == "step":
        time_steps(
            name, model, rec, device, args.batches, args.kernels.split(","), args.old, args.rounds, args.profile_batches
        )
    elif args.phase == "time":
        gpumerge.time_model(
            name,
            model,
            rec,
            device,
            args.batches,
            variants,
            args.mode,
            args.rounds,
            deadline,
            tuple(args.profile_batches),
        )
    elif args.phase == "accuracy":
        gpumerge_checks.accuracy(name, model, rec, device, args.data, args.limit, variants, args.mode, deadline)
    else:
        gpumerge_checks.timm_compile(name, model, rec, args.batches, deadline)


def _kernel_variant(label: str, old: Path | None):
    """(module, split, module constants) of a `step` kernel variant label."""
    from otas.adapt import triton_merge

    head, *opts = label.split("/")
    sizes = {o[0]: int(o[1:]) for o in opts if o[:1] in "sjwoctm" and o[1:].isdigit()}
    if head not in ("old", "image", "split") or len(sizes) != len(opts) or (head == "old" and opts):
        raise SystemExit(
            f"kernel variant {label!r}: use old, image[/j<n>][/w<n>] or split[/s<n>][/j<n>][/w<n>], each also with "
            "the merge kernel's /o<rows>/c<channels>/t<A tokens>/m<warps>"
        )
    if head == "old":
        if old is None:
            raise SystemExit("kernel variant 'old' needs --old PATH (a triton_merge.py)")
        return _load_module(old, "triton_merge_old"), None, {}
    consts = {"BLOCK_S": sizes["s"]} if "s" in sizes else {}
    if "w" in sizes:
        consts["MATCH_WARPS"] = (sizes["w"], sizes["w"])
    if "j" in sizes:
        consts["SPLIT_BLOCK_J" if head == "split" else "BLOCK_J"] = sizes["j"]
    for opt, const in (("o", "BLOCK_O"), ("c", "BLOCK_C"), ("t", "BLOCK_T"), ("m", "MERGE_WARPS")):
        if opt in sizes:
            consts[const] = sizes[opt]
    return triton_merge, head == "split", consts


@contextlib.contextmanager
def _constants(module, consts: dict):
    """`module`'s attributes set to `consts` inside the block (kernel tile sizes read at call time)."""
    before = {k: getattr(module, k) for k in consts}
    for k, v in consts.items():
        setattr(module, k, v)
    try:
        yield
    finally:
        for k, v in before.items():
            setattr(module, k, v)


def _step_inputs(model, batch: int, gamma: int, device, dtype) -> list[tuple]:
    """(x, size, keys, r) of every merge step of one forward at γ: random tokens and sizes, and keys as the
    view of a padded qkv output that `triton+column` passes (B, H, N, hd)."""
    import torch

    vit, C = model.vit, model.vit.embed_dim
    H, hd = vit.blocks[0].attn.num_heads, vit.blocks[0].attn.head_dim
    hp = -(-(hd + 1) // 8) * 8  # the size column's padded head dim
    gen = torch.Generator(device).manual_seed(batch * 1000 - gamma)
    inputs = []
    for n, r in zip(model.token_counts(gamma)[:-1], model.merge_schedule(gamma), strict=True):
        if r > 0:
            x = torch.randn(batch, n, C, device=device, generator=gen).to(dtype)
            size = torch.randint(1, 5, (batch, n, 1), device=device, generator=gen).to(dtype)
            qkv = torch.randn(batch, n, 3, H, hp, device=device, generator=gen).to(dtype)
            inputs.append((x, size, qkv.permute(2, 0, 3, 1, 4)[1][..., :hd], r))
    return inputs


def time_steps(name, model, rec, device, batches, labels, old, rounds, profile_batches=()) -> None:
    """Per (batch, γ < 0): the merge steps of one forward (`_step_inputs`) through each kernel variant, one
    CUDA graph per variant (eager on a CPU), timed interleaved; with each variant's largest difference from
    the first variant's output on the same inputs; at `profile_batches`, the device time of each kernel."""
    import torch

    from otas.profile.gpumerge import time_interleaved

    p = model.vit.num_prefix_tokens
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    variants = {label: _kernel_variant(label, old) for label in labels}
    for b in batches:
        for g in (g for g in model.config.gammas if g < 0):
            inputs = _step_inputs(model, b, g, device, dtype)
            cells, outs, eager = {}, {}, {}
            for label, (module, split, consts) in variants.items():
                kw = {} if split is None else {"split": split}
                run = lambda m=module, kw=kw, inputs=inputs: [
                    m.merge_triton(x, s, k, r, p, **kw) for x, s, k, r in inputs
                ]
                eager[label] = _constants(module, consts)(run)
                with _constants(module, consts):
                    outs[label] = run()  # compiles
                    if device.type == "cuda":
                        graph = torch.cuda.CUDAGraph()
                        with torch.cuda.graph(graph):
                            run()
                        cells[label] = graph.replay
                    else:
                        cells[label] = run
            diff = {label: _max_diff(out, outs[labels[0]]) for label, out in outs.items()}
            ms = time_interleaved(cells, device, rounds)
            kernels = {}
            if b in profile_batches and device.type == "cuda":  # device µs per kernel, one eager run of the steps
                kernels = {label: _kernel_us(fn) for label, fn in eager.items()}
            rec("step", model=name, batch=b, gamma=g, steps=len(inputs), ms=ms, max_diff=diff, kernels_us=kernels)
            print(f"  {name} b={b} γ={g}: " + ", ".join(f"{k} {v:.4f} ms ({diff[k]['x']:.2g})" for k, v in ms.items()))


def _kernel_us(fn) -> dict[str, float]:
    """Device µs per kernel name over one call of `fn` (`torch.profiler`)."""
    import torch
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    from otas.profile.gpumerge import _device_us

    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return {e.key[:40]: round(_device_us(e), 1) for e in prof.key_averages() if e.device_type == DeviceType.CUDA}


def _max_diff(outs, refs) -> dict:
    """The largest difference of the merged tokens, and the number of output sizes that differ."""
    pairs = list(zip(outs, refs, strict=True))
    return {
        "x": max((o[0].float() - f[0].float()).abs().max().item() for o, f in pairs),
        "sizes": sum((o[1] != f[1]).sum().item() for o, f in pairs),
    }


def compare(parts: list[Path], old: str, new: str) -> str:
    """A markdown table of two variants of the same `time` records, each against γ = 0 of its group."""
    from otas.profile.gpumerge_report import load_records

    def stock(label):
        return "stock/fusednorm" if "fusednorm" in label.partition("@")[0].split("/") else "stock"

    lines = [
        f"ms; old = `{old}`, new = `{new}`; x / γ = 0 below 1 is faster than γ = 0 (same group, same run)",
        "",
        "| model | batch | γ | γ = 0 | old | old / γ = 0 | new | new / γ = 0 | new / old |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    times = [t for t in load_records(parts) if t["kind"] == "time"]
    for t in sorted(times, key=lambda t: (t["model"], t["batch"], t["gamma"])):
        ms = t["ms"]
        if not {old, new, stock(old), stock(new)} <= ms.keys() or stock(old) != stock(new):
            continue
        s, a, b = ms[stock(new)], ms[old], ms[new]
        lines.append(
            f"| {t['model']} | {t['batch']} | {t['gamma']} | {s:.3f} | {a:.3f} | {a / s:.2f} | {b:.3f} | "
            f"**{b / s:.2f}** | {b / a:.2f} |"
        )
    return "\n".join(lines) + "\n"


def _load_module(path: Path, name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _serve_old_kernels(path: Path) -> None:
    """Bench only: a FastForward of `merge_impl="column+triton"` merges with `merge_triton` of the module at
    `path`, one of "triton+column" with the current one, so a group times both beside one γ = 0 and limit."""
    from otas.adapt import fast, ops

    old = _load_module(path, "triton_merge_old")

    def merge_ops(name, vit, *args, **kwargs):
        made = ops.merge_ops(name, vit, *args, **kwargs)
        if name == "column+triton":
            made._merge = old.merge_triton
            made._fuses_add = "add" in inspect.signature(old.merge_triton).parameters
        return made

    fast.merge_ops = merge_ops


if __name__ == "__main__":
    main()
