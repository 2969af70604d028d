"""The online correction of a latency profile: measured ≈ factor × profiled + offset, fitted as batches run.

A profile is measured in a harness (the model's forward, timed on its own); a live device thread also
copies each batch in, launches it and waits for it, a cost per batch that does not grow with the batch.
One multiplicative factor fitted to both small and large batches blows that fixed cost up in proportion
to the batch: measured on one H100, a device thread 0.15-0.2 ms slower than the profile per batch of 1-8
(0.49 → 0.65 ms) but 4 % slower at 256 (5.6 → 5.8 ms); live servers there learned a factor of about 1.45
(part of it the padding of batches to their CUDA-graph bucket, which profiles now name: `Profile.buckets`),
which predicted the large batch at 8.1 ms, so the policy ran small fast batches, and more of them, each
paying the fixed cost again. An affine fit keeps the two apart.

The fit is least squares over the batches seen, each weighted by an exponential decay (the newest by
`a`, as the scheduler's EWMA of the factor was), against a prior of the profile itself (factor 1, offset 0)
that starts with the weight of one batch and decays as the batches' do (so a first slow batch moves the
prediction part of the way, as the EWMA did), plus a weak permanent ridge: where every batch had one size,
the two cannot be told apart and the excess is split between them; the prediction at that size is the
measured one either way. The offset is kept ≥ 0 (a serving path does work beyond the harness's, not
less); where the fit asks for less, the factor alone fits. Pure: no torch.
"""

from __future__ import annotations

import math

RIDGE = 0.01
"""The prior's permanent weight, per unit of decayed evidence: a few batches of two sizes outweigh it."""


class AffineFit:
    """measured ≈ factor × profiled + offset, by exponentially weighted least squares against a prior."""

    def __init__(self) -> None:
        # decayed sums over batches: weight, x, x², and the excess e = y − x against 1 and x; the prior's weight
        self._w = self._x = self._xx = self._e = self._xe = 0.0
        self._prior = 1.0

    def observe(self, profiled_ms: float, measured_ms: float, a: float) -> None:
        """One batch: predicted `profiled_ms` by the profile, measured `measured_ms`; `a` ∈ (0, 1] its weight."""
        x, e, keep = profiled_ms, measured_ms - profiled_ms, 1.0 - a
        self._w = keep * self._w + a
        self._x = keep * self._x + a * x
        self._xx = keep * self._xx + a * x * x
        self._e = keep * self._e + a * e
        self._xe = keep * self._xe + a * x * e
        self._prior *= keep

    def relax(self, keep: float) -> None:
        """Age the evidence by an idle spell: every batch's weight × `keep` ∈ [0, 1], the prior back towards its
        first weight (one batch) by as much, so a fit no batch has confirmed for long returns to the profile."""
        self._w, self._x, self._xx = keep * self._w, keep * self._x, keep * self._xx
        self._e, self._xe = keep * self._e, keep * self._xe
        self._prior = keep * self._prior + (1.0 - keep)

    def solve(
        self, factor_range: tuple[float, float] = (0.0, math.inf), max_offset_ms: float = math.inf
    ) -> tuple[float, float]:
        """(factor, offset ms ≥ 0), the factor within `factor_range` and the offset at most `max_offset_ms`: where
        either bound holds, the other is fitted again with it fixed (bounding one alone left the pair off the
        measured time: a factor clamped to 4 beside the offset fitted for 6.5 predicted 0.47 ms for 0.6).
        Exactly (1, 0) while every batch measured what the profile said."""
        if self._w == 0.0:
            return 1.0, 0.0
        # in the deviations d = factor − 1 and c = offset, the prior weighing q batches at the data's mean x²:
        #   (Sxx + q Sxx / S1) d + Sx c = Sxe,    Sx d + (S1 + q) c = Se
        q = self._prior + RIDGE * self._w
        sxx, sx, s1 = self._xx * (1.0 + q / self._w), self._x, self._w + q
        det = sxx * s1 - sx * sx
        d = (self._xe * s1 - sx * self._e) / det
        c = (sxx * self._e - sx * self._xe) / det
        if c < 0.0:  # no offset: the factor alone, fitted to the same evidence
            d, c = self._xe / sxx, 0.0
        lo, hi = factor_range[0] - 1.0, factor_range[1] - 1.0
        if not lo <= d <= hi:  # the factor at its bound, the offset fitted again beside it
            d = min(max(d, lo), hi)
            c = max((self._e - sx * d) / s1, 0.0)
        if c > max_offset_ms:  # the offset at its bound, the factor fitted again beside it
            c = max_offset_ms
            d = min(max((self._xe - sx * c) / sxx, lo), hi)
        return 1.0 + d, c
