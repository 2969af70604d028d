"""`otas serve` option checks for the ray backend (fail before anything starts; no Ray needed)."""

import pytest
from typer.testing import CliRunner

from otas.cli import app


@pytest.mark.parametrize(
    "args,msg",
    [
        (["--backend", "nope"], "use local (one process) or ray"),
        (["--replicas", "2"], "need --backend ray"),
        (["--paced"], "give --noop and --profile"),
        (["--backend", "ray", "--paced"], "give --noop and --profile"),
    ],
)
def test_serve_backend_options_are_checked(args, msg):
    res = CliRunner().invoke(app, ["serve", *args])
    assert res.exit_code == 2 and msg in " ".join(res.output.replace("│", " ").split()), res.output
