"""Where a result came from: the commit it was measured at (torch-free, for every report)."""

from __future__ import annotations

import subprocess


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


def run_meta() -> dict[str, str]:
    """Commit, command line, machine and time of this run, for a benchmark's result file."""
    import os
    import platform
    import sys
    from datetime import UTC, datetime

    argv0, spec = sys.argv[0], getattr(sys.modules["__main__"], "__spec__", None)
    if spec is not None:  # python -m otas.cli ...
        program = f"python -m {spec.name}"
    else:  # a script, or the `otas` console command
        program = f"python {argv0}" if argv0.endswith(".py") else os.path.basename(argv0)
    return {
        "commit": git_commit(short=True),
        "command": " ".join([program, *sys.argv[1:]]),
        "machine": f"{platform.platform()}, {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
    }
