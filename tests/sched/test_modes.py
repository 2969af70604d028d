"""The online judge between two modes: untried modes first, then the larger share of the yardstick,
with stale evidence refreshed by a trial."""

import math

from otas.sched.modes import ModeJudge


def test_untried_modes_are_tried_true_first():
    j = ModeJudge(tau_ms=100.0)
    assert j.choose(False, 0.0) is True  # neither measured: True first
    j.credit(True, 5.0, 10.0, 1.0)
    assert j.choose(True, 2.0) is False  # True measured, False not: try False


def test_the_mode_earning_the_larger_share_of_its_yardstick_wins():
    j = ModeJudge(tau_ms=1e9)  # no decay: shares are plain ratios
    j.credit(True, 8.0, 10.0, 0.0)  # 80 % of the yardstick
    j.credit(False, 12.0, 10.0, 0.0)  # 120 %
    assert j.choose(True, 1.0) is False and j.choose(False, 1.0) is False
    j.credit(True, 20.0, 10.0, 0.0)  # True: 28/20 = 140 %
    assert j.choose(False, 1.0) is True


def test_a_mode_on_trial_runs_until_its_evidence_counts_then_stale_evidence_is_refreshed():
    tau = 10.0
    j = ModeJudge(tau_ms=tau)
    j.credit(True, 9.0, 10.0, 0.0)  # the better share
    j.credit(False, 0.1, 1.0, 0.0)  # a short, poor trial: under 1/e of True's evidence
    assert j.choose(False, 0.0) is False  # the trial goes on
    j.credit(False, 2.0, 10.0, 0.0)  # now comparable evidence, and a worse share
    assert j.choose(False, 0.0) is True
    j.credit(True, 50.0, 50.0, 3 * tau)  # True kept running; False's evidence decays
    assert j.gain[False][1].at(3 * tau) < j.gain[True][1].at(3 * tau) / math.e**2
    assert j.choose(True, 3 * tau) is False  # stale: tried again
