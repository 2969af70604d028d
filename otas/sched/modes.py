"""Which of two ways of running a policy earns more, judged online against one yardstick.

A policy with two modes (the floor: run free or as the leading fixed γ does; the price: plan with
the price of device time or without) cannot run both at once. Each mode is credited with what the
policy earned while in it and with what a yardstick earned over the same time (the fixed γ that led
the floor's shadows then), both as exponentially decayed sums; the mode whose own earnings are the
larger share of its yardstick's is the better one. Shares rather than sums: the load changes while
the modes take turns, and the yardstick moves with it.

The mode not in use is tried again once its evidence is about two windows old (decayed below 1/e²
of the other's), and a mode on trial runs until its evidence is 1/e of the other's before it is
judged: about a quarter window every two. A mode never measured is tried at once (`True` first).
Pure python; no clock of its own (times are passed in).
"""

from __future__ import annotations

import math

from otas.sched.decayed import Decayed


class ModeJudge:
    """Decayed evidence for modes `False` and `True`: (what the policy earned, what the yardstick
    earned) while in each, time constant `tau_ms`."""

    def __init__(self, tau_ms: float):
        self.gain = {m: (Decayed(tau_ms), Decayed(tau_ms)) for m in (False, True)}

    def credit(self, mode: bool, mine: float, yardstick: float, t_ms: float) -> None:
        """The policy earned `mine` and the yardstick `yardstick` since the last credit, in `mode`."""
        a, b = self.gain[mode]
        a.add(mine, t_ms)
        b.add(yardstick, t_ms)

    def choose(self, current: bool, t_ms: float) -> bool:
        """The mode to run next, from `current`."""
        (pf, sf), (pt, st) = (tuple(d.at(t_ms) for d in self.gain[m]) for m in (False, True))
        if st <= 0 or sf <= 0:  # a mode never measured yet: try `True`, then `False`
            return st <= 0
        mine, other = (st, sf) if current else (sf, st)
        if other < mine / math.e**2:
            return not current
        if mine < other / math.e:
            return current
        return pt / st >= pf / sf
