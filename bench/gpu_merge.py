"""Merge implementations on a GPU: latency against stock and the no-merge-work limit, accuracy, SDPA, timm+compile.

Each phase appends JSON lines to --out (a phase cut short keeps what it measured); `report` turns
them into gpu_merge.json, gpu_merge.md and gpu_merge.png and prints the summary. On a GPU:

    bash scripts/gpu_merge_session.sh        # every phase, within ~9 minutes on an H100

By hand (a CPU runs the eager path, for a check of the code):

    python bench/gpu_merge.py time --model tiny --device cpu --mode eager --batches 2 --gammas=-20,0 \\
        --variants reference,matmul+column --rounds 2 --out /tmp/gm/parts.jsonl
    python bench/gpu_merge.py report /tmp/gm/parts.jsonl --out-dir /tmp/gm
"""

from __future__ import annotations

import argparse
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
    ap.add_argument("phase", choices=["time", "accuracy", "sdpa", "timm-compile", "report"])
    ap.add_argument("parts", nargs="*", type=Path, help="report: the JSON-lines files to combine")
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
        shapes = [(b, 3, 257, 64) for b in args.batches] + [(b, 12, 197, 64) for b in args.batches]
        gpumerge_checks.sdpa_rows(rec, shapes)
        return
    name, model = gpumerge.load_model(args.model, tuple(args.gammas) if args.gammas else None)
    if args.phase == "time":
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


if __name__ == "__main__":
    main()
