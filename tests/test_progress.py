"""otas.progress: a bar on a terminal, plain lines in a log (where rich alone prints nothing until the end)."""

import io

import pytest
from rich.console import Console

from otas.progress import Progress, line


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def _lines(out: io.StringIO) -> list[str]:
    return [x for x in out.getvalue().splitlines() if x.strip()]  # (rich ends a transient display with a newline)


def _bar(terminal: bool, clock: Clock, interactive: bool | None = None, **kwargs) -> tuple[Progress, io.StringIO]:
    out = io.StringIO()
    console = Console(file=out, force_terminal=terminal, force_interactive=interactive, width=120, color_system=None)
    return Progress(console=console, get_time=clock, every_s=10, transient=True, **kwargs), out


def _advance(bar: Progress, clock: Clock, description: str, total: int | None, steps: int, dt: float) -> None:
    """A task of `total` advanced `steps` times, `dt` seconds apart."""
    job = bar.add_task(description, total=total)
    for _ in range(steps):
        clock.t += dt
        bar.advance(job)


def test_a_log_gets_a_line_per_interval_and_one_at_the_end():
    clock = Clock()
    bar, out = _bar(False, clock)
    with bar:
        _advance(bar, clock, "[bold]train tiny", 5, 5, 4)
    lines = _lines(out)
    assert lines == ["train tiny: 3/5 (60 %), 12s elapsed, about 8s left", "train tiny: 5/5 (100 %), 20s elapsed, done"]


def test_a_task_without_total_ends_with_the_work_and_its_note_is_shown():
    clock = Clock()
    bar, out = _bar(False, clock)
    with bar:
        job = bar.add_task("decoding", total=None, msg="")
        for i in range(3):
            clock.t += 6
            bar.update(job, advance=1, msg=f"loss {i}")
    assert _lines(out) == [
        "decoding: 2, 12s elapsed (loss 1)",
        "decoding: 3, 18s elapsed, ended (loss 2)",
    ]


def test_short_work_prints_nothing_in_a_log():
    clock = Clock()
    bar, out = _bar(False, clock)
    with bar:
        _advance(bar, clock, "quick", 3, 3, 1)
    assert out.getvalue().strip() == ""


def test_a_terminal_gets_the_bar_and_no_lines():
    clock = Clock()
    bar, out = _bar(True, clock, interactive=True)
    with bar:
        _advance(bar, clock, "train tiny", 2, 2, 20)
    assert "elapsed" not in out.getvalue()


def test_disabled_prints_nothing():
    clock = Clock()
    bar, out = _bar(False, clock, disable=True)
    with bar:
        job = bar.add_task("x", total=2)
        clock.t += 30
        bar.advance(job)
        bar.advance(job)
    assert out.getvalue() == ""


def test_line_spans_and_bad_interval():
    assert line("p", 1, 4, 3725, 90) == "p: 1/4 (25 %), 1h02m elapsed, about 1m30s left"
    assert line("p", 4, 4, 59.6, 0, end=True) == "p: 4/4 (100 %), 1m00s elapsed, done"
    with pytest.raises(ValueError, match="every_s"):
        Progress(every_s=0)


def test_a_dumb_terminal_gets_lines_as_a_log_does():
    """rich draws only where the console is interactive: a terminal that is not (TERM=dumb) gets the lines."""
    clock = Clock()
    bar, out = _bar(True, clock, interactive=False)
    with bar:
        _advance(bar, clock, "train tiny", 2, 2, 20)
    assert "train tiny: 2/2 (100 %), 40s elapsed, done" in out.getvalue()


def test_removed_and_reset_tasks():
    clock = Clock()
    bar, out = _bar(False, clock)
    with bar:
        gone = bar.add_task("gone", total=None)
        clock.t += 20
        bar.remove_task(gone)  # its state leaves with it: stopping does not look it up
        job = bar.add_task("again", total=1)
        clock.t += 20
        bar.advance(job)
        bar.reset(job, total=1)  # started again: reports again
        clock.t += 20
        bar.advance(job)
    assert _lines(out) == ["again: 1/1 (100 %), 20s elapsed, done", "again: 1/1 (100 %), 20s elapsed, done"]
    assert not bar.live.is_started
