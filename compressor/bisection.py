"""Bisection on a monotone yes/no question: the one helper behind every "least ratio that fits".

Costs here are step functions of a ratio (channels are rounded), so the helpers never return a
midpoint: they return the end of the final bracket that is known to answer yes. It sits below
every user (the budget wall, the latency fit, the pruning policies, the sensitivity search).

    >>> round(least_feasible(lambda x: x >= 0.3, 0.0, 1.0), 6)  # a little above 0.3, never below
    0.3
    >>> round(greatest_feasible(lambda x: x <= 0.3, 0.0, 1.0), 6)
    0.3
"""

from __future__ import annotations

from collections.abc import Callable


def least_feasible(feasible: Callable[[float], bool], low: float, high: float, *,
                   tol: float = 0.0, steps: int = 40) -> float:
    """The least x in [low, high] with feasible(x), for feasible going False ... True.

    The caller has checked feasible(high) (it is returned as is when nothing smaller is found).
    Halves the bracket `steps` times or until it is no wider than `tol`, keeping `high` feasible.
    """
    for _ in range(steps):
        if high - low <= tol:
            break
        mid = (low + high) / 2
        if feasible(mid):
            high = mid
        else:
            low = mid
    return high


def greatest_feasible(feasible: Callable[[float], bool], low: float, high: float, *,
                      tol: float = 0.0, steps: int = 40) -> float:
    """The greatest x in [low, high] with feasible(x), for feasible going True ... False.

    The caller has checked feasible(low). The mirror of `least_feasible`: `low` stays feasible.
    """
    for _ in range(steps):
        if high - low <= tol:
            break
        mid = (low + high) / 2
        if feasible(mid):
            low = mid
        else:
            high = mid
    return low
