"""Capture every (γ, bucket) graph of the served path (FastForward with its defaults) three times over, in
one process, as a server's warm-up does: a check that captures do not fail, and how long a warm-up takes.

    PYTHONPATH=. python scripts/gpu_capture_probe.py        (on a CUDA machine)
"""

import time

import torch

from otas.adapt.fast import FastConfig, FastForward
from otas.profile.gpumerge import load_model

name, model = load_model("tiny")
for rep in range(3):
    t0 = time.monotonic()
    fast = FastForward(model, "cuda", FastConfig())
    for g in model.config.gammas:
        for b in fast.cfg.buckets:
            fast.replay(g, b)()  # captures (γ, bucket) on first use
    torch.cuda.synchronize()
    graphs = len(fast._graphs)
    print(f"rep {rep}: {fast.merge_impl}, {graphs} graphs captured in {time.monotonic() - t0:.1f}s", flush=True)
    del fast
    torch.cuda.empty_cache()
