"""Options shared by several commands, so one knob has one name, one help text and one default
everywhere (`otas serve`, `otas simulate`, `otas bench replay`), and the one builder of the config
tree they map to."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, NoReturn

import typer

from otas.config import SchedulerConfig
from otas.sim.traces import MAX_LOAD, MIN_LOAD

Policy = Annotated[
    str,
    typer.Option(
        help="otas, otas-paper, otas-greedy, otas-fifo, fixed:<γ>, edf, clipper "
        "(model-switch, model-switch:resident need several profiles; the offline bound oracle: otas simulate)."
    ),
]
Apps = Annotated[Path | None, typer.Option(help="Applications YAML (default: otas/configs/apps.yaml).")]
ServeApps = Annotated[
    Path | None,
    typer.Option(
        help="Applications YAML (default: otas/configs/apps.yaml; otas/configs/apps-h100.yaml with --device cuda)."
    ),
]
Lookahead = Annotated[int, typer.Option(help="Optimizer lookahead n (batches planned; only the first runs).")]
HostGap = Annotated[
    bool,
    typer.Option(
        help="Planning ahead, plan each batch with the device's measured idle time before batches whose work waited "
        "for it (a host-bound server: the batches' true spacing); off: measured only (the simulator's host: --host-ms)."
    ),
]
MaxBatch = Annotated[int, typer.Option(help="Largest batch B_max.")]
MaxQueueDelay = Annotated[float, typer.Option(help="Hold a batch below B_max this long in ms (0 = work-conserving).")]
SloClassTolerance = Annotated[
    float, typer.Option(help="Apps whose SLOs are within this factor share a batch queue (0 = equal SLOs only).")
]
Load = Annotated[str, typer.Option(help="Load: × the γ=0 capacity of the profile; a sweep like 0.5,1,2 where allowed.")]
Seed = Annotated[int, typer.Option(min=0, help="Seed for synthetic traces and the request-to-application mapping.")]
Trace = Annotated[str, typer.Option(help="CSV path (Azure format) or azure|poisson|step|diurnal|mmpp.")]
CifarData = Annotated[Path | None, typer.Option(help="CIFAR-10 JPEG archive (default: $OTAS_CIFAR10).")]
TrainDevice = Annotated[str | None, typer.Option(help="cuda or cpu (default: cuda if present).")]


def scheduler_config(
    lookahead: int = 8,
    max_batch: int = 64,
    max_queue_delay_ms: float = 0.0,
    slo_class_tolerance: float = 0.0,
    host_gap: bool = True,
) -> SchedulerConfig:
    """The `SchedulerConfig` of the shared scheduler options (a bad value is a usage error)."""
    try:
        return SchedulerConfig(
            lookahead=lookahead,
            max_batch=max_batch,
            max_queue_delay_ms=max_queue_delay_ms,
            slo_class_tolerance=slo_class_tolerance,
            host_gap=host_gap,
        )
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


def ints(value: str) -> list[int]:
    """'1,8,64' -> [1, 8, 64] (a bad value is a usage error)."""
    try:
        return [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {value!r}") from None


def loads(value: str) -> list[float]:
    """'0.5,1,2' -> [0.5, 1.0, 2.0], each a positive load (at least MIN_LOAD)."""
    try:
        out = [float(x) for x in value.split(",")]  # an empty element ("1,,2") is a typo, not a skip
    except ValueError:
        raise typer.BadParameter(f"--load {value!r}: write a number or comma-separated numbers, e.g. 0.5,1,2") from None
    if any(not MIN_LOAD <= x <= MAX_LOAD for x in out):
        raise typer.BadParameter(f"--load {value!r}: every load must be a number in [{MIN_LOAD:g}, {MAX_LOAD:g}]")
    if twice := sorted({x for x in out if out.count(x) > 1}):  # (a typo: its tables and plots would repeat)
        raise typer.BadParameter(f"--load {value!r}: load {twice[0]:g} is given twice; give each load once")
    return out


def _say(kind: str, message: str) -> None:
    """One line on stderr, as typed (no rich markup or highlighting of the user's own values)."""
    from rich.console import Console

    Console(stderr=True).print(f"{kind}: {message}", soft_wrap=True, highlight=False, markup=False)


def warn(message: str) -> None:
    """A warning about the input: one line on stderr; the command goes on."""
    _say("warning", message)


def fail(message: str) -> NoReturn:
    """A usage or input error: one line on stderr, exit status 2, no traceback."""
    _say("error", message)
    raise typer.Exit(2)
