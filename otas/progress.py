"""Progress of long work (training, profiling, decoding a dataset): a rich bar on a terminal, and lines in a log.

Rich draws its bar only on a terminal; piped into a file or a CI log it shows nothing until the work ends (and a
transient bar nothing at all), so an hour of training looks hung. `Progress` is rich's, plus: where its console is
not a terminal, it prints each task's state as one plain line at most every `every_s` seconds, and once at its end
(`train vit_tiny: 12/300 (4 %), 2m10s elapsed, about 52m left`). A task shorter than `every_s` prints nothing.
"""

from __future__ import annotations

import math

from rich.progress import Progress as _RichProgress
from rich.progress import TaskID
from rich.text import Text

EVERY_S = 30.0
"""Seconds between two lines of one task in a log."""


class Progress(_RichProgress):
    """`rich.progress.Progress` that also reports in a log (see the module docstring). `every_s`: the most
    often a task's line is printed where the console is not a terminal (first after `every_s`, and at its end)."""

    def __init__(self, *columns, every_s: float = EVERY_S, **kwargs) -> None:
        if not every_s > 0:
            raise ValueError(f"every_s={every_s!r}: use a positive number of seconds")
        super().__init__(*columns, **kwargs)
        self.every_s = float(every_s)
        self._logged: dict[TaskID, float] = {}  # when each task's last line was printed (or it was added)
        self._printed: set[TaskID] = set()  # tasks with a line printed
        self._ended: set[TaskID] = set()  # tasks whose end was printed (or that ended too soon for a line)

    def add_task(self, description: str, *args, **kwargs) -> TaskID:
        task_id = super().add_task(description, *args, **kwargs)
        self._forget(task_id)
        return task_id

    def reset(self, task_id: TaskID, **kwargs) -> None:  # type: ignore[override]
        super().reset(task_id, **kwargs)
        self._forget(task_id)  # a task started again reports again

    def remove_task(self, task_id: TaskID) -> None:
        super().remove_task(task_id)
        with self._lock:
            self._logged.pop(task_id, None)
            self._printed.discard(task_id)
            self._ended.discard(task_id)

    def update(self, task_id: TaskID, **kwargs) -> None:  # type: ignore[override]
        super().update(task_id, **kwargs)
        self._log(task_id)

    def advance(self, task_id: TaskID, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._log(task_id)

    def stop(self) -> None:
        try:
            for task_id in list(self._logged):  # a task with no total (or left short) ends with the work
                self._log(task_id, end=True)
        finally:
            super().stop()

    def _forget(self, task_id: TaskID) -> None:
        with self._lock:
            self._logged[task_id] = self.get_time()
            self._printed.discard(task_id)
            self._ended.discard(task_id)

    def _log(self, task_id: TaskID, end: bool = False) -> None:
        # rich draws where the console is interactive (a dumb terminal is not), and in a notebook's widget
        if self.disable or self.console.is_interactive or self.console.is_jupyter:
            return
        with self._lock:  # (re-entrant; rich's `track` advances from its own thread)
            task = self._tasks.get(task_id)
            if task is None or task_id in self._ended:
                return
            now = self.get_time()
            end = end or (task.total is not None and task.completed >= task.total)
            due = now - self._logged[task_id] >= self.every_s
            if end:
                self._ended.add(task_id)
                if not (due or task_id in self._printed):  # short work: no line
                    return
            elif not due:
                return
            self._logged[task_id] = now
            self._printed.add(task_id)
            what = Text.from_markup(task.description).plain
            text = line(what, task.completed, task.total, task.elapsed, task.time_remaining, end)
            note = task.fields.get("msg")  # the training loops' loss and accuracy column
        self.console.print(f"{text} ({note})" if note else text, markup=False, highlight=False)


def line(
    what: str, completed: float, total: float | None, elapsed_s: float | None, left_s: float | None, end: bool = False
) -> str:
    """One task's state as a log line: `what: done/total (pct %), elapsed, about left`; at its `end`, `done` where
    it completed its total, else `ended` (a task with no total, or work stopped short)."""
    n = f"{completed:g}" + (f"/{total:g} ({100 * completed / total:.0f} %)" if total else "")
    out = f"{what}: {n}, {_span(elapsed_s or 0.0)} elapsed"
    if end:
        return out + (", done" if total and completed >= total else ", ended")
    if left_s is not None and math.isfinite(left_s):
        out += f", about {_span(left_s)} left"
    return out


def _span(s: float) -> str:
    """Seconds as 45s, 2m10s or 1h05m."""
    s = max(0, round(s))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"
