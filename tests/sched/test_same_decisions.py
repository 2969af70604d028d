"""The scheduler decides exactly as recorded in decisions.json (before the decision path was
optimised): same batches, same γ, same planned values, same outcome for every query."""

import json

import pytest

from tests.sched.decisions import N_CASES, RECORD, case, decisions

WANT = json.loads(RECORD.read_text())


@pytest.mark.parametrize("seed", range(N_CASES))
def test_decides_as_recorded(seed):
    batches, digest = decisions(seed)
    want = WANT[str(seed)]
    _, _, policy, cfg, trace = case(seed)
    assert (batches, digest) == (want["batches"], want["digest"]), f"case {seed}: {policy}, {cfg}, {trace}"
