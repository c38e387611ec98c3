"""Yardsticks: hand features of the window, ridge and LightGBM on them, as predictors and as
policies through the ladder; the three-way direction metrics."""

from __future__ import annotations

import numpy as np
import pytest

from cmm.config import YardstickConfig
from cmm.data.windows import Windows
from cmm.metrics import direction_classes
from cmm.yardsticks import GradientBoosted, RidgeBaseline, summary_features


def test_summary_features_known_answer():
    # one feature counting 0, 1, 2, ...; windows of 4 steps starting at rows 0 and 3
    feats = np.arange(10, dtype=np.float32)[:, None]
    w = Windows(feats, np.array([0, 3]), 4)
    got = summary_features(w, spans=(2, 4, 99))
    # last step; mean of the last 2; of the last 4; span clipped to the window (4)
    np.testing.assert_allclose(got, [[3, 2.5, 1.5, 1.5], [6, 5.5, 4.5, 4.5]])
    stacked = np.asarray(w)
    np.testing.assert_allclose(got[:, 2], stacked[:, -4:, 0].mean(axis=1))


def _planted(n, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 32, 3)).astype(np.float32)
    w = Windows.from_stacked(x)
    f = summary_features(w, (5, 20))
    return w, f, rng


def test_ridge_and_trees_recover_planted_signals():
    w, f, rng = _planted(3000, 0)
    # linear in the 20-step means (a level the flat window hides among 32 noisy copies)
    y = np.column_stack([f[:, 6] * 3.0, 1.0 - f[:, 7], 0.5 * f[:, 8] + f[:, 0]])
    y = y + 0.01 * rng.standard_normal(y.shape)
    ridge = RidgeBaseline((1e-3, 1.0)).fit(f[:2000], y[:2000], f[2000:2500], y[2000:2500])
    pred = ridge.predict(f[2500:])
    r2 = 1 - ((pred - y[2500:]) ** 2).sum(0) / ((y[2500:] - y[2500:].mean(0)) ** 2).sum(0)
    assert np.all(r2 > 0.99)
    # a threshold rule no linear model fits
    y2 = np.column_stack([np.where(f[:, 6] > 0, 1.0, -1.0), np.abs(f[:, 0]), f[:, 7] ** 2])
    cfg = YardstickConfig(lgbm_estimators=200, lgbm_min_child_samples=20)
    trees = GradientBoosted(cfg).fit(f[:2000], y2[:2000], f[2000:2500], y2[2000:2500])
    p2 = trees.predict(f[2500:])
    r2 = 1 - ((p2 - y2[2500:]) ** 2).sum(0) / ((y2[2500:] - y2[2500:].mean(0)) ** 2).sum(0)
    assert np.all(r2 > 0.9)
    again = GradientBoosted(cfg).fit(f[:2000], y2[:2000], f[2000:2500], y2[2000:2500])
    np.testing.assert_array_equal(again.predict(f[2500:]), p2)  # deterministic


def test_direction_classes_known_answer():
    y = np.array([2.0, 2.0, 0.0, 0.0, -2.0, -2.0])
    pred = np.array([1.0, 0.1, 0.0, 1.0, -1.0, -1.0])  # flat beyond 0.5: [up, flat, flat, up, down, down]
    m = direction_classes(pred, y, 0.5)
    # confusion (true x predicted): up 1/2 right, flat 1/2 right, down 2/2 right -> 4/6
    assert m["direction3_acc"] == pytest.approx(4 / 6)
    # F1: up 2*1/(2+2) = 0.5, flat 2*1/(2+2) = 0.5, down 2*2/(2+2) = 1.0
    assert m["direction3_f1"] == pytest.approx((0.5 + 0.5 + 1.0) / 3)


def test_yardstick_policies_quote_through_the_ladder(prepared):
    from cmm.backtest.runner import make_plan, run_backtest
    from cmm.config import BacktestConfig
    from cmm.strategy.policy import Predictions, get_policy

    ds = prepared("binance-usdm-btcusdt")
    cfg = BacktestConfig(episode_s=30.0)
    for name in ("ridge", "lgbm"):
        pol = get_policy(name, {"lgbm_estimators": 50}).fit(ds)
        assert pol.latency_ns > 0 and pol.latency_ns % 100_000 == 0
        plan = make_plan(ds.split_samples("test"), "test", ds.config.grid.dt_ms * 1_000_000, cfg)
        out = pol.act(ds, "test", plan)
        assert isinstance(out, Predictions) and len(out.mid_bps) == len(ds.split_samples("test"))
        assert np.isfinite(out.spread_ticks).all()
        result = run_backtest(ds, pol, "test", config=cfg)
        assert len(result.orders) > 0
        assert pol.describe()["name"] == name


def test_summary_features_of_a_few_windows_match_the_cumulative_path():
    rng = np.random.default_rng(3)
    feats = rng.standard_normal((5000, 4)).astype(np.float32)
    w = Windows(feats, np.arange(0, 4900, 7), 64)
    every = summary_features(w)  # many windows: cumulative sums over the array
    few = summary_features(w.take([0, 100, 699]))  # a live decision: windows cut out
    np.testing.assert_allclose(few, every[[0, 100, 699]], rtol=1e-5, atol=1e-5)
