"""The latency model corrected by what the search's probes measured, learned as the search goes.

The latency model is unbiased on random policies (results/latency-model: 2-4% median error), but
a search prefers the policies it underestimates: on resnet18 the probed episodes measured +6.0%
over the prediction in the median (+13.3% with two workers), the winner having pruned the stride-2
downsample convolutions hardest (issue 33). What a probe measured is the evidence of that
residual, so the prediction the action wall sees is the model's times a learned factor:

    corrected(policy) = predict(policy) * exp(w . features(policy))

where the features are the policy's mean pruning ratio and every unit's pruning ratio, and w is
the ridge (least squares with a penalty `strength * |w|^2`) fit of log(measured / predicted) over
the probes so far. The penalty shrinks w toward zero, no correction, while the probes are few;
the unpruned network gets no correction at all (every feature is 0: it is its own reference).
The factor is bounded (`max_log`), so one wild probe cannot move the wall far.

    correction = ProbeCorrection(predict, units)
    correction(policy)                        # the prediction, corrected by the probes so far
    correction.observe(policy, measured=0.41)  # a probe's measured ratio
    correction.bias_median                    # median measured / predicted - 1 over the probes
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np


class Probed(NamedTuple):
    """One probe: the policy, the model's (uncorrected) prediction and the measured ratio."""

    policy: dict[str, float]
    predicted: float
    measured: float
    used: float
    """The prediction in use when it was probed: corrected by the probes before it (the
    model's own when the correction is off)."""


class ProbeCorrection:
    """Callable from a policy to its predicted latency ratio, corrected by the probes observed.

    `predict` is the latency model's ratio; `units` the policy's unit names (their pruning ratios
    are the features); `enabled` False records the probes (and their bias) without correcting.
    """

    def __init__(self, predict: Callable[[dict[str, float]], float], units: Sequence[str], *,
                 enabled: bool = True, strength: float = 1.0, max_log: float = 0.3):
        self.predict, self.units, self.enabled = predict, list(units), enabled
        self.strength, self.max_log = strength, max_log
        self.probes: list[Probed] = []
        self.weights = np.zeros(len(self.units) + 1)

    def features(self, policy: dict[str, float]) -> np.ndarray:
        """The mean pruning ratio, then each unit's (0 for a unit the policy leaves out)."""
        ratios = [float(policy.get(name, 0.0)) for name in self.units]
        return np.array([sum(ratios) / max(len(ratios), 1), *ratios])

    def log_factor(self, policy: dict[str, float]) -> float:
        """log(corrected / predicted) for `policy`, within +-`max_log`."""
        value = float(self.features(policy) @ self.weights)
        return min(max(value, -self.max_log), self.max_log)

    def __call__(self, policy: dict[str, float]) -> float:
        predicted = self.predict(policy)
        if not self.enabled:
            return predicted
        return predicted * math.exp(self.log_factor(policy))

    def observe(self, policy: dict[str, float], measured: float) -> Probed:
        """Record a probe of `policy` and refit the correction on every probe so far."""
        probed = Probed(dict(policy), self.predict(policy), measured, self(policy))
        self.probes.append(probed)
        self.weights = fit_log_residual(
            np.array([self.features(p.policy) for p in self.probes]),
            np.array([math.log(max(p.measured, 1e-9) / max(p.predicted, 1e-9))
                      for p in self.probes]), self.strength)
        return probed

    @property
    def bias_median(self) -> float | None:
        """Median of measured / predicted - 1 over the probes (the uncorrected model's bias on
        the policies probed); None before the first."""
        return _median_bias([(p.measured, p.predicted) for p in self.probes])

    @property
    def used_bias_median(self) -> float | None:
        """Median of measured / predicted - 1 over the probes, each against the prediction in
        use when it was probed (what the wall saw); None before the first."""
        return _median_bias([(p.measured, p.used) for p in self.probes])

    def replay(self, probes: Sequence[tuple[dict[str, float], float]]) -> None:
        """Observe `(policy, measured)` pairs again in order (a resumed search's earlier probes),
        so that it corrects as the uninterrupted search did."""
        for policy, measured in probes:
            self.observe(policy, measured)


def _median_bias(pairs: Sequence[tuple[float, float]]) -> float | None:
    if not pairs:
        return None
    return statistics.median(measured / max(predicted, 1e-9) - 1 for measured, predicted in pairs)


def fit_log_residual(features: np.ndarray, log_ratios: np.ndarray, strength: float
                     ) -> np.ndarray:
    """Ridge regression without an intercept: argmin |features @ w - log_ratios|^2 +
    strength * |w|^2, solved in the probes' dual form (fewer probes than features, mostly)."""
    gram = features @ features.T + strength * np.eye(len(features))
    return features.T @ np.linalg.solve(gram, log_ratios)


__all__ = ["ProbeCorrection", "Probed", "fit_log_residual"]
