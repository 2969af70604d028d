"""Shared by the CLI tests: run `otas` in-process and read what a user would see."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner


def invoke(args: list[str]):
    """`otas ARGS` in this process; the result has `exit_code` and `output`."""
    from otas.cli import app

    return CliRunner().invoke(app, args, terminal_width=300)


def flat(output: str) -> str:
    """The output as one line of words: a usage error comes in a box, wrapped."""
    return " ".join(output.replace("│", " ").split())


def assert_refused(res, message: str) -> None:
    """A usage error (exit 2) that says `message`, with no traceback."""
    assert res.exit_code == 2 and message in flat(res.output) and "Traceback" not in res.output, res.output


def write(path: Path, data: bytes) -> str:
    path.write_bytes(data)
    return str(path)
