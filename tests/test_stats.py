"""Known answers for the paired comparison of two policies on the same episodes."""

from __future__ import annotations

import numpy as np
import pytest

from cmm.backtest.stats import paired_difference
from cmm.errors import InputError


def test_separable_pair_is_better_with_an_interval_that_excludes_zero():
    rng = np.random.default_rng(0)
    market = rng.normal(0, 50, 60)  # shared by both policies: cancels in the difference
    b = market + rng.normal(0, 1, 60)
    a = b + 2.0 + rng.normal(0, 1, 60)
    r = paired_difference(a, b)
    assert r.mean == pytest.approx(float((a - b).mean()))
    assert 0 < r.low < r.mean < r.high
    assert r.verdict == "better" and r.p_value < 1e-6
    # unpaired, the market noise (std 50) would swamp a 2.0 edge; paired, the interval is tight
    assert r.high - r.low < 1.5
    assert paired_difference(b, a).verdict == "worse"


def test_inseparable_pair_is_not_distinguishable_and_says_how_many_episodes():
    rng = np.random.default_rng(1)
    b = rng.normal(0, 1, 40)
    a = b + rng.normal(0, 1, 40)  # no edge
    r = paired_difference(a, b)
    assert r.low < 0 < r.high
    assert r.verdict == "not distinguishable with 40 episodes"
    assert r.p_value > 0.05
    # the smallest edge this comparison would find: (1.96 + 0.84) x the standard error
    assert r.min_detectable == pytest.approx(2.8016 * r.se, rel=1e-3)
    # i.i.d. blocks of one: the bootstrap standard error is the classical std(d) / sqrt(n)
    assert r.se == pytest.approx(np.std(a - b, ddof=1) / np.sqrt(40), rel=0.05)


def test_wilcoxon_exact_known_answer_and_constant_differences():
    # all 8 differences positive: the exact two-sided p is 2 / 2^8
    r = paired_difference(np.arange(1, 9, dtype=float), np.zeros(8))
    assert r.p_value == pytest.approx(2 / 256)
    c = paired_difference(np.full(10, 3.0), np.ones(10))
    assert (c.mean, c.low, c.high, c.se) == pytest.approx((2.0, 2.0, 2.0, 0.0), abs=1e-12)
    same = paired_difference(np.ones(5), np.ones(5))
    assert same.p_value is None and same.verdict == "not distinguishable with 5 episodes"


def test_strata_pool_by_episode_count_and_blocks_widen_the_interval_of_dependent_episodes():
    # stratum 0: 2 episodes of difference +1; stratum 1: 6 of -1: pooled mean (2 - 6) / 8
    d = np.array([1, 1, -1, -1, -1, -1, -1, -1], float)
    r = paired_difference(d, np.zeros(8), strata=[0, 0, 1, 1, 1, 1, 1, 1])
    assert r.mean == pytest.approx(-0.5) and r.low == r.high == pytest.approx(-0.5)
    # a slowly drifting edge (neighbouring episodes alike): blocks keep that dependence
    rng = np.random.default_rng(2)
    drift = np.repeat(rng.normal(0, 1, 12), 10)
    iid = paired_difference(drift, np.zeros(120), block=1)
    blocked = paired_difference(drift, np.zeros(120), block=10)
    assert blocked.se > 1.5 * iid.se
    # deterministic for a seed
    assert paired_difference(drift, np.zeros(120), block=10) == blocked


def test_bad_input_is_located():
    with pytest.raises(InputError, match="same length"):
        paired_difference([1.0, 2.0], [1.0])
    with pytest.raises(InputError, match="at least 2"):
        paired_difference([1.0], [0.0])
    with pytest.raises(InputError, match="non-finite"):
        paired_difference([1.0, np.nan], [0.0, 0.0])


def test_few_episodes_need_the_wilcoxon_test_to_agree_with_the_interval():
    # 6 episodes, 5 small gains and one loss: the percentile bootstrap of the mean excludes 0,
    # but the exact Wilcoxon p (0.16 here) does not reject: no verdict
    d = np.array([0.4, 0.5, 0.6, 0.45, 0.55, -0.3])
    r = paired_difference(d, np.zeros(6))
    assert r.low > 0 and r.p_value > 0.05
    assert r.verdict == "not distinguishable with 6 episodes"
