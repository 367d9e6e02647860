"""The one bisection helper every "least ratio that fits" uses (compressor/bisection.py)."""

from compressor.bisection import greatest_feasible, least_feasible


def test_bisection_keeps_the_feasible_end_of_a_step_function():
    def step(x):  # a cost that jumps: only x >= 0.375 fits
        return x >= 0.375

    least = least_feasible(step, 0.0, 1.0)
    assert step(least) and least - 0.375 < 1e-9
    assert least_feasible(step, 0.0, 1.0, tol=0.1) - 0.375 <= 0.1
    most = greatest_feasible(lambda x: x <= 0.6, 0.0, 1.0, steps=20)
    assert most <= 0.6 and 0.6 - most < 1e-5
