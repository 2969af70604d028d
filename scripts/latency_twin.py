"""A latency twin: a checkpoint with random weights and the same architecture, Γ, tasks, classes and
preprocessing as another model, for profiling latency where the trained weights are not at hand (a
GPU machine that can carry only the small shipped checkpoint). Latency does not depend on the
weights: merging takes |γ| tokens per block whichever they are. Reuse the real model's accuracy with
`otas profile TWIN --accuracy-from REAL_PROFILE`; the profile's meta then names both.

    python scripts/latency_twin.py --like otas/assets/vit_tiny_p2_c5.safetensors --arch vit_small_p2 \\
        --out /tmp/twin/vit_small_p2_c5_kd.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from otas.adapt.vit import AdaptiveViT
from otas.models.checkpoint import model_from_header, read_header, save_checkpoint


def twin(like: Path, arch: str, seed: int = 0) -> AdaptiveViT:
    torch.manual_seed(seed)
    return model_from_header(read_header(like), arch=arch)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--like", type=Path, required=True, help="checkpoint whose Γ, tasks and classes the twin copies")
    ap.add_argument("--arch", required=True, help="architecture of the twin (otas.models.registry.ARCHS)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    model = twin(args.like, args.arch, args.seed)
    note = f"latency twin: random weights, {args.arch}, Γ and tasks of {args.like.name}; its accuracy means nothing"
    save_checkpoint(model, args.out, meta={"note": note}, dtype=torch.float16)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
