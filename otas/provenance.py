"""Where a result came from: the commit it was measured at (torch-free, for every report)."""

from __future__ import annotations

import subprocess


def git_commit(short: bool = False) -> str:
    """The checkout's HEAD, or "unknown" outside a git checkout."""
    cmd = ["git", "rev-parse", *(["--short"] if short else []), "HEAD"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out or "unknown"
