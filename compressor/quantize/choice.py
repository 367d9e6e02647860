"""What INT8 is worth on this machine: the format chosen by measurement, and a latency curve.

Both are measured against the dense FP32 model in paired windows, like every latency here, so the
budget stays a ratio of dense FP32 whatever the shipped precision.

* `choose_format` quantizes one network in each candidate format, times each against dense FP32
  and keeps the fastest; when none beats the FP32 network itself it says so (ship FP32).
* `measure_curve` times a few networks (dense and uniformly pruned) in FP32 and in the chosen INT8
  format. INT8 gains less on a pruned network than on the dense one (resnet18 here: 0.59 of FP32
  dense, 0.70-0.85 pruned to 0.46; ../shared/MEASURED.md), so the curve holds the INT8/FP32 factor
  as a function of the FP32 ratio and `Int8Curve.ratio` interpolates it. The search's latency model
  predicts FP32 and the curve turns that into the INT8 model's ratio: coarse (one factor per FP32
  ratio, not per layer), and the final stage measures the real INT8 model anyway.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from compressor.errors import InternalError
from compressor.latency.probe import (
    ProbeSettings,
    Session,
    fresh_rounds,
    make_session,
    measure_pair,
    pool_rounds,
)
from compressor.quantize.int8 import (
    FORMATS,
    MEASURED_BY_DEFAULT,
    Int8Format,
    QuantizeConfig,
    preprocess,
    quantize_bytes,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FormatTrial:
    """One INT8 format of one network, timed against dense FP32."""

    format: str
    ratio: float | None
    """Median paired ratio of the INT8 network to dense FP32; None when quantizing failed."""
    spread: tuple[float, float] | None = None
    error: str | None = None
    rounds: int = 1
    """Paired rounds pooled into `ratio` (the chosen format's is re-measured on fresh sessions)."""


@dataclass(frozen=True)
class FormatChoice:
    chosen: str | None
    """The fastest format, or None when no INT8 format beat the FP32 network."""
    fp32_ratio: float
    """The FP32 network itself against dense FP32, in the same run."""
    trials: list[FormatTrial] = field(default_factory=list)
    warning: str | None = None

    @property
    def chosen_ratio(self) -> float:
        """The chosen format's network against dense FP32."""
        return next(t.ratio for t in self.trials if t.format == self.chosen)

    def as_dict(self) -> dict:
        return asdict(self)


def _paired(data: bytes, reference: Session, settings: ProbeSettings):
    return measure_pair(make_session(data, settings), reference, settings)


def choose_format(fp32: bytes, reference: Session, settings: ProbeSettings,
                  calibration: Sequence[np.ndarray], config: QuantizeConfig,
                  candidates: Sequence[str] | None = None, rounds: int = 2) -> FormatChoice:
    """Quantize `fp32` in each candidate format (default: `config.format`, else
    MEASURED_BY_DEFAULT), time each against `reference` (dense FP32), keep the fastest.

    The fastest is then timed `rounds` more times on fresh sessions of both models and its ratio
    is the pooled median: that one ratio scales every INT8 latency the search predicts, and one
    pair of sessions moved it by 2-3% between runs here (a fresh FP32 session measured 0.998-1.031
    of the reference's). Those rounds pair the INT8 graph with `fp32` itself, so `rounds` > 0
    needs `fp32` to be `reference`'s model (the dense network)."""
    names = list(candidates or ([config.format] if config.format else MEASURED_BY_DEFAULT))
    pre = preprocess(fp32)
    fp32_ratio = _paired(fp32, reference, settings).ratio
    trials, measured = [], {}
    for name in names:
        try:
            data = quantize_bytes(pre, calibration, FORMATS[name], config, preprocessed=True)
        except InternalError as exc:
            trials.append(FormatTrial(name, None, error=str(exc)))
            continue
        paired = _paired(data, reference, settings)
        measured[name] = (data, paired)
        trials.append(FormatTrial(name, paired.ratio, paired.spread))
        log.info("INT8 %s: %.3f of dense FP32 (FP32 network %.3f)", name, paired.ratio, fp32_ratio)
    timed = [t for t in trials if t.ratio is not None]
    if not timed:
        raise InternalError("onnxruntime could not quantize the model in any INT8 format ("
                            + "; ".join(f"{t.format}: {t.error}" for t in trials)
                            + "); ship it as FP32 with --quantize none")
    best = min(timed, key=lambda t: t.ratio)
    if rounds > 0:
        data, first = measured[best.format]
        pooled = pool_rounds([first, *fresh_rounds(data, fp32, settings, rounds)])
        best = FormatTrial(best.format, pooled.ratio, pooled.spread, rounds=1 + rounds)
        trials = [best if t.format == best.format else t for t in trials]
        log.info("INT8 %s: %.3f of dense FP32 over %d rounds", best.format, best.ratio,
                 best.rounds)
    if best.ratio >= fp32_ratio:
        warning = (f"every INT8 format measured slower than FP32 on this machine (fastest "
                   f"{best.format} {best.ratio:.3f} vs FP32 {fp32_ratio:.3f} of dense FP32): "
                   "shipping FP32")
        return FormatChoice(None, fp32_ratio, trials, warning)
    return FormatChoice(best.format, fp32_ratio, trials)


@dataclass(frozen=True)
class Int8Curve:
    """The INT8/FP32 latency factor against the FP32 ratio, measured at a few networks."""

    format: str
    fp32_ratios: list[float]
    """Increasing FP32 ratios (of dense FP32) of the measured networks."""
    factors: list[float]
    """INT8 latency / FP32 latency of each."""

    def factor(self, fp32_ratio: float) -> float:
        """Linear in the FP32 ratio between measured points, flat beyond them."""
        xs, ys = self.fp32_ratios, self.factors
        if fp32_ratio <= xs[0]:
            return ys[0]
        if fp32_ratio >= xs[-1]:
            return ys[-1]
        i = bisect.bisect_right(xs, fp32_ratio)
        t = (fp32_ratio - xs[i - 1]) / (xs[i] - xs[i - 1])
        return ys[i - 1] + t * (ys[i] - ys[i - 1])

    def ratio(self, fp32_ratio: float) -> float:
        """Predicted INT8 latency as a ratio of dense FP32."""
        return fp32_ratio * self.factor(fp32_ratio)

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Int8Curve:
        return cls(d["format"], list(d["fp32_ratios"]), list(d["factors"]))


def measure_curve(networks: Sequence[bytes], reference: Session, settings: ProbeSettings,
                  calibration: Sequence[np.ndarray], fmt: Int8Format, config: QuantizeConfig,
                  known: Sequence[tuple[float, float]] = ()) -> Int8Curve:
    """Each FP32 network and its INT8 version timed against dense FP32 -> the factor curve.
    `known`: (FP32 ratio, INT8/FP32 factor) points measured already (the format choice's)."""
    points = list(known)
    for fp32 in networks:
        int8 = quantize_bytes(fp32, calibration, fmt, config)
        fp32_ratio = _paired(fp32, reference, settings).ratio
        int8_ratio = _paired(int8, reference, settings).ratio
        points.append((fp32_ratio, int8_ratio / fp32_ratio))
    points.sort()
    # Two networks measuring the same FP32 ratio would make the interpolation divide by zero.
    xs, ys = [], []
    for x, y in points:
        if xs and x <= xs[-1] + 1e-6:
            ys[-1] = (ys[-1] + y) / 2
        else:
            xs.append(x)
            ys.append(y)
    return Int8Curve(fmt.name, xs, ys)


__all__ = ["FormatChoice", "FormatTrial", "Int8Curve", "choose_format", "measure_curve"]
