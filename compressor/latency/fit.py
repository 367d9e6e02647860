"""Fit a policy to a measured latency budget: rescale it until the exported model measures within.

The latency model's error depends on the policy (results/latency_model.md; it is pessimistic for
heavily pruned networks), so a policy aimed just under the budget can measure over it, or far under
it and give away accuracy. Every unit's kept fraction is scaled by one shared factor, chosen on the
latency model corrected by this policy's own measured bias, and the result is measured again, until
it measures within the budget and no more than `band` under it. The allocation's shape (which units
keep more) is preserved. Every method in the benchmark goes through this same step, so it favours
none of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class FitStep:
    keep_scale: float
    predicted: float
    measured: float


@dataclass(frozen=True)
class FitResult:
    policy: dict[str, float]
    measured: float
    """The last measured latency ratio (of `policy`)."""
    ok: bool
    """`measured <= limit`."""
    steps: list[FitStep] = field(default_factory=list)
    """One per extra measurement after the first; empty when the policy already fitted."""


def scale_policy(policy: dict[str, float], units: Sequence[str], keep_scale: float,
                 max_ratio: float) -> dict[str, float]:
    """Every unit keeps `keep_scale` times the fraction it kept (at most all of it), removing at
    most `max_ratio` (or what it removed already, if that was more)."""
    out = {}
    for name in units:
        ratio = policy.get(name, 0.0)
        scaled = max(1.0 - (1.0 - ratio) * keep_scale, 0.0)
        out[name] = min(scaled, max(max_ratio, ratio))
    return out


def _bisect_scale(predict: Callable[[float], float], target: float, highest: float,
                  iterations: int = 30) -> float:
    """The largest keep scale in (0, highest] whose prediction is <= target."""
    if predict(highest) <= target:
        return highest
    low, high = 0.0, highest
    for _ in range(iterations):
        mid = (low + high) / 2
        if predict(mid) <= target:
            low = mid
        else:
            high = mid
    return low


def fit_to_latency(policy: dict[str, float], units: Sequence[str],
                   predict: Callable[[dict[str, float]], float],
                   measure: Callable[[dict[str, float]], float], limit: float,
                   max_ratio: float, margin: float = 0.04, band: float = 0.12, tries: int = 3,
                   measured: float | None = None) -> FitResult:
    """Rescale `policy` until its measured latency ratio is in [limit * (1 - band), safe], where
    safe = limit * (1 - margin) leaves room for the next measurement's noise.

    `predict(policy)` is the latency model's ratio, `measure(policy)` prunes, exports and measures
    it (paired with the dense model). Each try aims 1.5 `margin` under the limit on the prediction
    rescaled by the last measured/predicted ratio. Returns the largest measurement <= safe, else
    the largest <= limit (`ok`), or after `tries` with none within budget the last one (not `ok`).
    """
    if measured is None:
        measured = measure(policy)
    safe = limit * (1 - margin)
    steps: list[FitStep] = []
    current = policy
    tried = [(policy, measured)]
    for _ in range(tries):
        if limit * (1 - band) <= measured <= safe:
            break
        bias = measured / max(predict(current), 1e-9)
        target = limit * (1 - 1.5 * margin) / bias
        kept = [1.0 - current.get(name, 0.0) for name in units]
        scale = _bisect_scale(
            lambda s, start=current: predict(scale_policy(start, units, s, max_ratio)), target,
            highest=1.0 / max(min(kept), 1e-9))
        rescaled = scale_policy(current, units, scale, max_ratio)
        if rescaled == current:  # at max_ratio everywhere, or unpruned: nothing left to change
            break
        current = rescaled
        measured = measure(current)
        steps.append(FitStep(scale, predict(current), measured))
        tried.append((current, measured))
    within = [t for t in tried if t[1] <= limit]
    if not within:
        return FitResult(current, measured, False, steps)
    best = max(within, key=lambda t: (t[1] <= safe, t[1]))
    return FitResult(best[0], best[1], True, steps)
