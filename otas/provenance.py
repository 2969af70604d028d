"""Where a result came from: the commit it was measured at (torch-free, for every report)."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
"""The repository (the checkout holding the `otas` package): a bench script's command names its path from here."""


def _git(*args: str) -> str | None:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def git_commit(short: bool = False) -> str:
    """The checkout's HEAD, with "-dirty" when tracked files differ from it; "unknown" outside git."""
    head = _git("rev-parse", *(["--short"] if short else []), "HEAD")
    if not head:
        return "unknown"
    dirty = _git("status", "--porcelain", "--untracked-files=no")
    return f"{head}-dirty" if dirty else head


def run_meta(script: str | None = None, argv: Sequence[str] | None = None) -> dict[str, str]:
    """Commit, command line, machine and time of this run, for a benchmark's result file. `script` (a bench
    script's `__file__`) and `argv` (what its `main(argv)` was given; None: this process's arguments): the command
    is `python <script, relative to the repository> <argv>`, also when a test calls `main` under pytest; no
    `script`: this process's own command line."""
    import os
    import platform
    import sys
    from datetime import UTC, datetime

    args = list(sys.argv[1:] if argv is None else argv)
    argv0, spec = sys.argv[0], getattr(sys.modules["__main__"], "__spec__", None)
    if script is not None:
        path = Path(script).resolve()
        program = f"python {path.relative_to(REPO) if path.is_relative_to(REPO) else path}"
    elif spec is not None:  # python -m otas.cli ...
        program = f"python -m {spec.name}"
    else:  # a script, or the `otas` console command
        program = f"python {argv0}" if argv0.endswith(".py") else os.path.basename(argv0)
    return {
        "commit": git_commit(short=True),
        "command": " ".join([program, *args]),
        "machine": f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
