"""The scheduler decides exactly as recorded in decisions.json: same batches, same γ, same planned
values, same outcome for every query. Recorded before the decision path was optimised, and again
at each deliberate change of a decision rule: when shared and per-class batching came to be
compared at the utility rate each sustains, when plans equal to within 1e-9 became ties broken
by order (`policies._first_best`), when reordering came to pull forward only classes more
urgent than the head's, and when `max_queue_delay_ms` stopped holding a batch past the moment its
most urgent member can still make its deadline, when the price's arrival rates came to be read
unbiased from the first arrival (`DevicePrice.rates`), and when the price came to move across the
marginal application's switch instead of jumping to it (`DevicePrice._smoothed`), and when the online
latency correction came to fit a factor and an offset per batch (`latency_fit.AffineFit`: only the cases
with noisy latencies changed; where every batch takes its profiled time the fit is exactly 1 and 0), and when the
arrivals a query blocked by a long batch waits for next came to be every served application's, not its own
application's alone (`Otas(blocked="all")`), and when a batch that drops members it would end late came to take
the queries queued next in their place, as many as end on time (`Scheduler._refill`), and when the price of device
time came to weigh the one-setting-for-all price by the share of recent decisions that shared a batch
(`Otas(price_batching="blend")`) and the online corrections came to age over idle time (`Scheduler.age`): before
the tie rule, such ties went to whichever sum came out larger in its last bits, which differs between CPUs
(numpy's SIMD reductions with and without AVX-512). `test_decisions_do_not_hang_on_simd` runs the
cases again with AVX-512 off."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.sched.decisions import N_CASES, RECORD, case, decisions

WANT = json.loads(RECORD.read_text())


@pytest.mark.parametrize("seed", range(N_CASES))
def test_decides_as_recorded(seed):
    batches, digest = decisions(seed)
    want = WANT[str(seed)]
    _, _, policy, cfg, trace = case(seed)
    assert (batches, digest) == (want["batches"], want["digest"]), f"case {seed}: {policy}, {cfg}, {trace}"


def test_decisions_do_not_hang_on_simd():
    """The same decisions with numpy's AVX-512 kernels disabled (another summation order): a few
    cases, in a subprocess (numpy reads the setting when it is imported). On a host without AVX-512
    the setting changes nothing and this only repeats the recorded cases."""
    root = Path(__file__).resolve().parents[2]
    path = os.pathsep.join(p for p in (str(root), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "NPY_DISABLE_CPU_FEATURES": "X86_V4 AVX512_ICL AVX512_SPR", "PYTHONPATH": path}
    code = (
        "import json; from tests.sched.decisions import decisions; "
        "print(json.dumps([decisions(s) for s in (20, 56, 7)]))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True, cwd=root)
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert [tuple(x) for x in got] == [(WANT[str(s)]["batches"], WANT[str(s)]["digest"]) for s in (20, 56, 7)]
