"""Strict JSON both ways: objects that name a key twice are refused on reading (json keeps the last,
a guess at what was meant), and non-finite floats are written as JSON can carry them. No torch."""

from __future__ import annotations

import json
import math
from collections import Counter
from typing import Any


class DuplicateKeyError(ValueError):
    """A JSON object names a key twice."""


def _unique(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [k for k, _ in pairs]
    if len(set(keys)) < len(keys):
        twice = sorted(k for k, n in Counter(keys).items() if n > 1)[:5]  # (linear: a body may hold many keys)
        msg = f"keys {twice} appear twice in one object (more than once leaves a guess); give each once"
        raise DuplicateKeyError(msg)
    return dict(pairs)


def loads_unique(text: str | bytes) -> Any:
    """json.loads, raising DuplicateKeyError for an object that names a key twice."""
    return json.loads(text, object_pairs_hook=_unique)


def safe(x: object) -> object:
    """JSON-safe: nan → null, ±inf → "inf" / "-inf", in nested dicts and lists."""
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    if isinstance(x, dict):
        return {k: safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [safe(v) for v in x]
    return x


def dumps(obj: object) -> str:
    """Strict JSON of `obj` (`safe`), indented, ending in a newline."""
    return json.dumps(safe(obj), indent=1, default=str, allow_nan=False) + "\n"
