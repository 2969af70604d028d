"""Trace-driven simulation of the scheduler on a profile-backed clock. No torch."""

from otas.sim.simulator import SimResult, run
from otas.sim.traces import Trace, make_trace

__all__ = ["SimResult", "Trace", "make_trace", "run"]
