"""The rank statistics behind the search-honesty benchmark."""

import math

from hypothesis import given
from hypothesis import strategies as st

from benchmarks.honesty import distinct_policies, spearman


@given(st.lists(st.integers(-1000, 1000), min_size=3, max_size=30, unique=True))
def test_spearman_is_one_for_any_increasing_transform(xs):
    assert math.isclose(spearman(xs, [x ** 3 + 5 for x in xs]), 1.0, abs_tol=1e-9)
    assert math.isclose(spearman(xs, [-x for x in xs]), -1.0, abs_tol=1e-9)


def test_spearman_gives_ties_their_mean_rank():
    # Ranks of [1, 2, 2, 3] are [0, 1.5, 1.5, 3]: a perfect monotone relation despite the tie.
    assert math.isclose(spearman([1, 2, 2, 3], [10, 20, 20, 30]), 1.0)
    assert 0 < spearman([1, 2, 3, 4], [1, 3, 2, 4]) < 1


def test_spearman_of_a_constant_is_undefined():
    assert math.isnan(spearman([1, 1, 1], [1, 2, 3]))


def test_distinct_policies_drops_repeats_and_spans_the_reward_range():
    episodes = [{"reward": r / 10, "policy": {"a": r % 7 / 10}} for r in range(30)]
    chosen = distinct_policies(episodes, 5)
    rewards = [e["reward"] for e in chosen]
    assert len(chosen) == 5 and rewards == sorted(rewards)
    assert len({e["policy"]["a"] for e in chosen}) == 5
    # 7 distinct policies: the lowest and highest reward of the unique ones are kept.
    assert rewards[0] == 0.0 and rewards[-1] == max(e["reward"] for e in
                                                     distinct_policies(episodes, 100))
