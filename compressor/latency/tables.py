"""Channel-count tables: a latency measured over a grid of two counts, bilinear in between.

The per-layer tables of `latency.model` ((in, out) channels) and the per-block tables of
`latency.blocks` ((heads, hidden width)) are both of this kind.
"""

from __future__ import annotations

import bisect

import numpy as np


def channel_grid(full: int, step: int, points: int) -> list[int]:
    """Up to `points` channel counts from `step` to `full`: multiples of `step`, plus `full`."""
    if full <= step or points < 2:
        return [full]
    values = np.linspace(step, full, points)
    return sorted({min(full, max(step, int(round(v / step)) * step)) for v in values} | {full})


def interp(x: float, xs: list[float], ys: list[float]) -> float:
    """Piecewise-linear interpolation, clamped at the ends (plain Python: ~10x np.interp on these
    1-6 point grids, and the budget wall calls it thousands of times per episode)."""
    if len(xs) == 1 or x <= xs[0]:
        return ys[0]
    if x >= xs[-1]:
        return ys[-1]
    i = bisect.bisect_right(xs, x)
    x0, x1 = xs[i - 1], xs[i]
    return ys[i - 1] + (ys[i] - ys[i - 1]) * (x - x0) / (x1 - x0)


class LayerTable:
    """Latency (ms) of one layer over a grid of (in, out) channel counts, bilinear in between.

    Depthwise convs have one axis (in = out = groups): `ins` is then a single placeholder row.
    `entry_ms` and `exit_ms` (same grid, zero when not given) time the lone graph's `EDGE_OPS`
    before and after the layer: what the layer pays where the network switches precision at its
    input or output (`edges`).
    """

    def __init__(self, ins: list[int], outs: list[int], ms, depthwise: bool,
                 entry_ms=None, exit_ms=None):
        self.ins, self.outs = [float(v) for v in ins], [float(v) for v in outs]

        def grid(values) -> list[list[float]]:
            if values is None:
                return [[0.0] * len(self.outs) for _ in self.ins]
            shaped = np.asarray(values, float).reshape(len(self.ins), len(self.outs))
            return [[float(v) for v in row] for row in shaped]

        self.ms, self.entry_ms, self.exit_ms = grid(ms), grid(entry_ms), grid(exit_ms)
        self.depthwise = depthwise

    def _lookup(self, grid: list[list[float]], cin: int, cout: int) -> float:
        if len(self.ins) == 1:
            return interp(cout, self.outs, grid[0])
        i = bisect.bisect_right(self.ins, cin)
        if i == 0 or cin >= self.ins[-1]:  # clamped: one row
            return interp(cout, self.outs, grid[0 if i == 0 else -1])
        x0, x1 = self.ins[i - 1], self.ins[i]
        lo = interp(cout, self.outs, grid[i - 1])
        hi = interp(cout, self.outs, grid[i])
        return lo + (hi - lo) * (cin - x0) / (x1 - x0)

    def __call__(self, cin: int, cout: int) -> float:
        return self._lookup(self.ms, cin, cout)

    def edges(self, cin: int, cout: int) -> tuple[float, float]:
        """(entry, exit) ms of the layer's edge nodes at these channel counts."""
        return self._lookup(self.entry_ms, cin, cout), self._lookup(self.exit_ms, cin, cout)

    def to_json(self) -> dict:
        return {"ins": self.ins, "outs": self.outs, "ms": self.ms, "depthwise": self.depthwise,
                "entry_ms": self.entry_ms, "exit_ms": self.exit_ms}

    @classmethod
    def from_json(cls, d: dict) -> LayerTable:
        return cls(d["ins"], d["outs"], d["ms"], d["depthwise"], d["entry_ms"], d["exit_ms"])
