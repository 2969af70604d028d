"""Pure scheduling: selective batching, the token-adaptation optimizer, policies. No torch."""

from otas.sched.policies import POLICY_NAMES, Policy, make_policy
from otas.sched.scheduler import Scheduler

__all__ = ["POLICY_NAMES", "Policy", "Scheduler", "make_policy"]
