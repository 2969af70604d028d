"""A request's wait before it reached this server (a gateway that gathers several arrivals into one
request, a queue upstream), as its client states it in the `otas-waited-ms` HTTP header or gRPC
metadata entry: its deadline then runs from when it was first queued, not from its first byte here.
Without it, time spent before the server saw the request is invisible to the scheduler, which then
plans against a deadline later than the client's."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from otas.server.errors import ProtocolError

WAITED = "otas-waited-ms"
"""The header (HTTP) or metadata key (gRPC, lower case) that states the wait, in ms."""
MAX_WAITED_MS = 86_400_000.0
"""A day: a longer stated wait is a client's mistake (its request is long past any SLO anyway)."""
_DECIMAL = re.compile(r"\+?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


def waited_ms(values: Sequence[str]) -> float:
    """The stated wait from the header's values (none: 0). ProtocolError 400 `bad_waited` for more
    than one value, or one that is not a finite decimal number of ms in [0, MAX_WAITED_MS]."""
    if not values:
        return 0.0
    if len(values) > 1:
        raise ProtocolError(400, "bad_waited", f"{WAITED} given {len(values)} times; send it once")
    text = values[0].strip()
    try:
        ms = float(text) if len(text) <= 32 and _DECIMAL.fullmatch(text) else math.nan  # (not float's "1_0")
    except ValueError:
        ms = math.nan
    if not 0 <= ms <= MAX_WAITED_MS:  # NaN and ±inf fail too
        raise ProtocolError(
            400, "bad_waited",
            f"{WAITED}: {text[:40]!r} is not a wait in ms; send a decimal number of ms in [0, {MAX_WAITED_MS:.0f}] "
            "(how long the request waited before it was sent here), or leave the header out",
        )  # fmt: skip
    return ms
