import gc
import subprocess
import sys


def test_freeze_heap_keeps_what_is_loaded_out_of_every_later_collection():
    """`otas serve` freezes the loaded heap before serving: a full collection then scans only what serving
    allocated, not torch and the model. Run in a fresh interpreter (freezing this one would keep the test
    session's cyclic garbage)."""
    code = (
        "import gc, torch\n"
        "from otas.server import memory\n"
        "before = len(gc.get_objects())\n"
        "memory.freeze_heap()\n"
        "print(before, gc.get_freeze_count(), len(gc.get_objects()))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    before, frozen, scanned = map(int, out.split())
    assert frozen > 0.9 * before  # what was loaded is frozen ...
    assert scanned < 0.01 * before  # ... and the collector no longer sees it
    assert gc.get_freeze_count() == 0  # this process untouched
