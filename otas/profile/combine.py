"""A profile put together from two measured ones: accuracy from one, latency from another.

Latency and memory depend on the architecture, the merge schedule and the device, not on the
weights: a retrained model of the same architecture runs exactly the same arithmetic as the one
profiled before it. So a new checkpoint's profile for a device where timing it again is costly
(a CPU: hours for a larger model's accuracy alone) can take its accuracy from where it was
measured (`otas profile --dtype float32` on a GPU) and its latency from a profile of the same
architecture measured on that device, e.g. next to the models it is compared with.

The two must describe the same compute: the same architecture and, per γ, the same GFLOPs (the
merge schedule). Anything else is refused. The result says where each part came from.
Pure Python (no torch).
"""

from __future__ import annotations

from dataclasses import replace

from otas.profile.table import Profile
from otas.provenance import run_meta


def combine(
    model: str, arch: str, accuracy_from: Profile, latency_from: Profile, header_meta: dict | None = None
) -> Profile:
    """`model`'s profile (architecture `arch`, from its checkpoint's header): accuracy of
    `accuracy_from` (a profile of this model), latency/memory/load time of `latency_from` (a profile
    of the same architecture and merge schedule on the target device). ValueError if they differ."""
    if accuracy_from.model != model:
        raise ValueError(f"--accuracy-from profiles {accuracy_from.model!r}, not this model ({model!r})")
    other = latency_from.meta.get("arch")
    if other != arch:
        raise ValueError(f"--latency-from profiles architecture {other!r}, this model is {arch!r}: times differ")
    missing = sorted(set(latency_from.gammas) - set(accuracy_from.gammas))
    if missing:
        raise ValueError(f"--accuracy-from lacks γ {missing} that --latency-from times")
    a, b = accuracy_from.gflops or {}, latency_from.gflops or {}
    differ = [g for g in latency_from.gammas if g not in a or g not in b or abs(a[g] - b[g]) > 1e-3 * max(b[g], 1e-9)]
    if differ:
        raise ValueError(f"GFLOPs per image differ at γ {differ}: another merge schedule, so other times")
    ka, kb = accuracy_from.merge_every, latency_from.merge_every
    if ka is not None and kb is not None and ka != kb:
        raise ValueError(f"--accuracy-from was measured with merge_every={ka}, --latency-from with {kb}")
    acc = {t: {g: v for g, v in row.items() if g in latency_from.gammas} for t, row in accuracy_from.accuracy.items()}
    meta = {
        **run_meta(),
        "arch": arch,
        "source_test_acc": (header_meta or {}).get("source_test_acc"),
        "accuracy_from": f"{accuracy_from.model} on {accuracy_from.device} ({accuracy_from.dtype})",
        "accuracy_measured": [],
        "latency_from": f"{latency_from.model} on {latency_from.device} ({latency_from.dtype}), "
        f"created {latency_from.meta.get('created')}: same architecture and GFLOPs per γ",
    }
    if (k := kb or ka) is not None:
        meta["merge_every"] = k
    return replace(latency_from, model=model, accuracy=acc, tasks=dict(accuracy_from.tasks), meta=meta)
