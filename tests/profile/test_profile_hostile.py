"""Profiles are files from anywhere: a malformed one is a ValueError naming the field, at load,
never a crash of the serving engine later (a NaN accuracy or an infinite latency used to reach the
scheduler)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from otas.profile.table import Profile

SHIPPED = Path(__file__).resolve().parents[2] / "profiles" / "vit_tiny_p2_c5__cpu.json"


@pytest.fixture(scope="module")
def good() -> dict:
    return json.loads(SHIPPED.read_text())


def edit(d: dict, path: tuple, value) -> dict:
    d = copy.deepcopy(d)
    node = d
    for k in path[:-1]:
        if node.get(k) is None:  # an optional table the shipped profile leaves out
            node[k] = {}
        node = node[k]
    if value is KeyError:
        del node[path[-1]]
    else:
        node[path[-1]] = value
    return d


EDITS = [
    (("model",), 5), (("model",), KeyError), (("gammas",), KeyError), (("gammas",), "abc"), (("gammas",), [0, True]),
    (("gammas",), [0.5]), (("batch_sizes",), [0, 1]), (("batch_sizes",), [-1]), (("batch_sizes",), None),
    (("accuracy",), [1]), (("accuracy",), None), (("accuracy", "novel", "0"), float("nan")),
    (("accuracy", "novel", "0"), 7.0), (("accuracy", "novel", "0"), -0.1), (("accuracy", "novel", "0"), "x"),
    (("accuracy", "novel", "0"), None), (("accuracy", "novel", "0"), 10**400), (("accuracy", "novel"), [0.5]),
    (("latency_ms",), KeyError), (("latency_ms",), [1]), (("latency_ms", "0"), {}), (("latency_ms", "0"), [1]),
    (("latency_ms", "0", "1"), 0), (("latency_ms", "0", "1"), -3.0), (("latency_ms", "0", "1"), float("inf")),
    (("latency_ms", "0", "1"), "fast"), (("latency_ms", "0", "1"), None), (("latency_ms", "0", "1"), True),
    (("latency_ms", "0", "1"), 10**400), (("latency_ms", "0", "abc"), 1.0), (("latency_ms", "0", "0"), 1.0),
    (("latency_ms", "0", "-8"), 1.0), (("latency_ms", "abc"), {"1": 1.0}), (("memory_mb", "0", "1"), float("nan")),
    (("memory_mb",), "x"), (("latency_p90_ms", "0", "1"), -1.0), (("gflops",), [1]), (("tasks",), [1]),
    (("meta",), [1]), (("latency_p90_ms", "16"), KeyError), (("model_load_ms",), "x"), (("model_load_ms",), -5),
    (("schema",), "x"),
]  # fmt: skip


@pytest.mark.parametrize("path,value", EDITS, ids=[f"{'.'.join(p)}={str(v)[:12]}" for p, v in EDITS])
def test_a_malformed_profile_is_a_value_error(good, tmp_path, path, value):
    if path[0] == "latency_ms" and len(path) == 3 and path[2] in ("abc", "0", "-8"):
        d = copy.deepcopy(good)
        d["latency_ms"]["0"][path[2]] = value
    else:
        d = edit(good, path, value)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))
    with pytest.raises(ValueError, match="bad.json"):
        Profile.load(p)


@pytest.mark.parametrize("raw", ["", "[1]", "null", '"text"', "[" * 100_000, '{"schema": "otas.profile/1"}'])
def test_a_profile_file_that_is_not_a_profile_object_is_a_value_error(tmp_path, raw):
    p = tmp_path / "bad.json"
    p.write_text(raw)
    with pytest.raises(ValueError, match="bad.json|not an otas profile"):
        Profile.load(p)


@pytest.mark.parametrize("seed", range(30))
def test_randomly_damaged_profiles_load_or_are_value_errors(good, tmp_path, seed):
    """A value anywhere replaced by a random JSON value: it loads (and every latency and accuracy is
    then finite and in range) or it is a ValueError."""
    rng = np.random.default_rng(seed)
    d = copy.deepcopy(good)
    for _ in range(3):
        node, key = d, None
        while True:
            keys = list(node) if isinstance(node, dict) else list(range(len(node))) if isinstance(node, list) else []
            if not keys or (key is not None and rng.random() < 0.3):
                break
            key = keys[int(rng.integers(len(keys)))]
            parent, node = node, node[key]
        if key is not None:
            parent[key] = [None, True, -1, 0, 1e308, float("nan"), "x", [], {}, 10**30][int(rng.integers(10))]
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))
    try:
        prof = Profile.load(p)
    except ValueError:
        return
    for g in prof.gammas:
        for b in prof.batch_sizes:
            assert np.isfinite(prof.lat(g, b)) and prof.lat(g, b) > 0
    for task, row in prof.accuracy.items():
        assert all(0.0 <= a <= 1.0 for a in row.values()), task
