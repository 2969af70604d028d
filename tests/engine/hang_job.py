"""A chunk job for decode-process tests: light to import in a spawned process (numpy only)."""

import time

import numpy as np


def hangs_on_request(payloads: list[bytes]) -> list:
    """Never finishes a chunk holding b"hang"; 8×8 zero images otherwise."""
    if b"hang" in payloads:
        time.sleep(600)
    return [np.zeros((8, 8, 3), np.uint8) for _ in payloads]
