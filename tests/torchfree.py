"""The layering rule, checked: scheduling, simulation and benchmark-report code imports without torch."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

_BLOCK = (
    "import sys\n"
    "class Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name == 'torch' or name.startswith('torch.'):\n"
    "            raise ImportError('torch is blocked in this test')\n"
    "sys.meta_path.insert(0, Block())\n"
)


def assert_imports_without_torch(*modules: str) -> None:
    """Import `modules` in a fresh interpreter where importing torch raises; torch must stay unloaded."""
    code = _BLOCK + "".join(f"import {m}\n" for m in modules) + "assert 'torch' not in sys.modules\n"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
