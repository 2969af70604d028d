"""Checks shared by the training configs: numbers a user types that would otherwise train for hours
on NaN or never stop."""

from __future__ import annotations

import math


def check_optim(lr: float, weight_decay: float, time_budget_s: float | None, drop_path: float | None = None) -> None:
    """ValueError naming the field and the fix for a learning rate, weight decay, time budget or
    drop-path rate out of range (NaN and infinities included)."""
    if not (0 < lr < math.inf):
        raise ValueError(f"lr={lr!r}: use a positive finite learning rate, e.g. 1e-3")
    if not (0 <= weight_decay < math.inf):
        raise ValueError(f"weight_decay={weight_decay!r}: use a finite number >= 0, e.g. 0.05")
    if time_budget_s is not None and not (0 < time_budget_s < math.inf):
        raise ValueError(f"time_budget_s={time_budget_s!r}: use a positive number of seconds, or none")
    if drop_path is not None and not (0 <= drop_path < 1):
        raise ValueError(f"drop_path={drop_path!r}: use a rate in [0, 1), e.g. 0.1")
