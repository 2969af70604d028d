"""Factory helpers: small hand-made profiles and applications (not measured; shapes from the
brief's CPU orders of magnitude: ~60 / 350 / 2500 ms at batch 1 / 8 / 64 for ViT-Tiny, γ = -20
about 3× faster, γ = 16 about 8% slower, accuracy 0.80 → 0.86 → 0.90)."""

from __future__ import annotations

from otas.profile.table import Profile
from otas.types import App, Request

GAMMAS = [-20, -16, -12, -8, 0, 4, 8, 16]
SPEED = {-20: 0.34, -16: 0.42, -12: 0.52, -8: 0.65, 0: 1.0, 4: 1.02, 8: 1.04, 16: 1.08}
ACC = {-20: 0.80, -16: 0.82, -12: 0.835, -8: 0.845, 0: 0.86, 4: 0.875, 8: 0.885, 16: 0.90}
TASK_SHIFT = {"source": 0.10, "novel": 0.0, "lowlight": -0.05, "blur": -0.08}


def make_profile(
    model: str = "vit_tiny_handmade",
    base_ms: tuple[float, ...] = (60.0, 350.0, 2500.0),
    batch_sizes: tuple[int, ...] = (1, 8, 64),
    gammas: list[int] | None = None,
    acc_shift: float = 0.0,
    memory_mb: tuple[float, ...] | None = None,
    model_load_ms: float = 80.0,
    device: str = "cpu (hand-made)",
) -> Profile:
    gammas = gammas or GAMMAS
    speed = {g: SPEED.get(g, 1.0 + 0.005 * g) for g in gammas}
    acc = {g: ACC.get(g, 0.86 + 0.0025 * g) for g in gammas}
    lat = {g: {b: base * speed[g] for b, base in zip(batch_sizes, base_ms, strict=True)} for g in gammas}
    mem = None
    if memory_mb is not None:
        mem = {g: {b: m * speed[g] for b, m in zip(batch_sizes, memory_mb, strict=True)} for g in gammas}
    return Profile(
        model=model,
        device=device,
        dtype="float32",
        gammas=list(gammas),
        batch_sizes=list(batch_sizes),
        accuracy={  # the source task has no prompts: not servable at γ > 0
            t: {g: min(1.0, acc[g] + s + acc_shift) for g in gammas if t != "source" or g <= 0}
            for t, s in TASK_SHIFT.items()
        },
        latency_ms=lat,
        latency_p90_ms={g: {b: 1.1 * v for b, v in row.items()} for g, row in lat.items()},
        memory_mb=mem,
        model_load_ms=model_load_ms,
        meta={"note": "hand-made for tests, not measured"},
    )


def make_small_profile() -> Profile:
    """A slower, more accurate model for model-switch tests (ViT-Small-like)."""
    return make_profile("vit_small_handmade", (200.0, 1200.0, 8500.0), acc_shift=0.04, model_load_ms=250.0)


def make_apps() -> list[App]:
    return [
        App("novel", 500.0, 1.0, "novel"),
        App("lowlight", 1000.0, 2.0, "lowlight"),
        App("blur", 2000.0, 1.0, "blur"),
    ]


def make_request(i: int, app: App, arrival_ms: float) -> Request:
    return Request(i, app.name, arrival_ms, arrival_ms + app.slo_ms)
