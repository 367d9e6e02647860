"""The rank statistics behind the search-honesty benchmark."""

import math

from hypothesis import given
from hypothesis import strategies as st

from benchmarks import honesty
from benchmarks.honesty import correlations, distinct_policies, spearman


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


def _rows(finals_again: bool) -> list[dict]:
    rows = []
    for i in range(6):
        row = {"seconds_bn": 1.0, "seconds_bn_eval": 0.5, "search_top1_bn_500": float(i),
               "search_top1_bn_1000": float(-i), "test_top1_full": float(i),
               "test_top1_short": float(i % 3)}
        if finals_again:
            row |= {"test_top1_full_again": float(i), "test_top1_short_again": float(5 - i)}
        rows.append(row)
    return rows


def test_correlations_rank_each_proxy_and_price_fewer_images_lower():
    meta = {"proxies": ["bn"], "search_images": [500, 1000]}
    by_images = {c["images"]: c for c in correlations(_rows(False), meta)}
    assert by_images[500]["rho"]["full"] == 1.0 and by_images[1000]["rho"]["full"] == -1.0
    assert by_images[500]["seconds"] == 0.75 and by_images[1000]["seconds"] == 1.0
    assert set(by_images[500]["rho"]) == {"full", "short"}  # no second seed: no mean, no ceiling


def test_a_second_final_seed_adds_the_mean_target_and_the_noise_ceiling():
    lines = correlations(_rows(True), {"proxies": ["bn"], "search_images": [500]})
    ceiling = [c for c in lines if c["proxy"] == "again"]
    assert len(ceiling) == 1
    assert ceiling[0]["rho"]["full"] == 1.0 and ceiling[0]["rho"]["short"] < 0
    assert "full2" in lines[0]["rho"] and "short2" in lines[0]["rho"]


def test_a_kd_proxy_distills_and_is_named_apart():
    steps, lr, distill = honesty.parse_proxy("25kd")
    assert (steps, distill) == (25, honesty.DISTILL) and lr == honesty.EvaluatorConfig().finetune_lr
    assert honesty.parse_proxy("25@0.05")[2] == 0.0
    assert honesty.proxy_name(*honesty.parse_proxy("25kd")) == "ft25kd"
    assert honesty.proxy_name(*honesty.parse_proxy("25")) == "ft25"
    assert "distilled" in honesty.proxy_label("ft25kd")
