"""Triton kernels on the CPU: Triton's interpreter runs them when TRITON_INTERPRET=1 is set before triton
is imported (torch imports it), so a test file of kernels reruns itself in a process started with it
(`run_in_interpreter`); there its kernel tests run (`interpreted_module`), here they are skipped."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

INTERPRETING = os.environ.get("TRITON_INTERPRET") == "1"
"""Whether this is the interpreter's process."""


def run_in_interpreter(test_file: str) -> None:
    """Every test of `test_file` except the `gpu` ones, in a process with TRITON_INTERPRET=1; fails with its output."""
    pytest.importorskip("triton")
    root = Path(__file__).resolve().parents[2]
    path = os.pathsep.join([str(root), *filter(None, [os.environ.get("PYTHONPATH")])])
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": path}
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "not gpu", test_file]
    run = subprocess.run(args, cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]


def interpreted_module(name: str):
    """The kernel module `name`, in a process where the interpreter runs its kernels; else the test is skipped."""
    module = pytest.importorskip(name)
    from otas.adapt import triton_merge

    if not triton_merge.INTERPRETED:
        pytest.skip("runs in Triton's interpreter, in test_kernels_in_the_interpreter's process")
    return module


def kernel_tests(module: str, test_file: str):
    """The two pieces every kernel test file needs, as (fixture `interpreted`, test
    `test_kernels_in_the_interpreter`), to bind under those names at module level: the fixture gives
    `module` where the interpreter runs its kernels, the test reruns `test_file` in such a process."""

    @pytest.fixture
    def interpreted():
        return interpreted_module(module)

    @pytest.mark.skipif(INTERPRETING, reason="this is the interpreter's process")
    def test_kernels_in_the_interpreter():
        """Every test of this file that needs the kernels, in a process with TRITON_INTERPRET=1."""
        run_in_interpreter(test_file)

    return interpreted, test_kernels_in_the_interpreter
