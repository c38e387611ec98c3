"""Robustness scenarios: the most volatile episodes, and the flash crash injected on the event
arrays (grid, features and hftbacktest's own book all see it; nothing before it changes)."""

from __future__ import annotations

import numpy as np
import polars as pl
import pytest
import yaml

from cmm.config import BacktestConfig, FlashCrashConfig, LadderConfig

CRASH = FlashCrashConfig(drop_pct=3.0, fall_s=1.5, hold_s=1.0, recover_s=3.0, start_fraction=0.2)
EPISODE = BacktestConfig(episode_s=10.0)


@pytest.fixture(scope="module")
def crashed(tmp_path_factory, data_dir, prepared):
    from cmm.backtest.runner import make_plan
    from cmm.pipeline.stress import build_crash_dataset

    root = tmp_path_factory.mktemp("stress")
    spec = {"name": "stress-btcusdt", "format": "binance",
            "files": [str(data_dir / "binance/usdm/btcusdt_20240718.gz")],
            "instrument": {"tick_size": 0.1, "lot_size": 0.001, "maker_fee": 0.0002,
                           "taker_fee": 0.0005}}
    (root / "spec.yaml").write_text(yaml.safe_dump(spec))
    ds = prepared(str(root / "spec.yaml"))
    plan = make_plan(ds.split_samples("test"), "test", ds.config.grid.dt_ms * 1_000_000, EPISODE)
    cds = build_crash_dataset(ds, plan, EPISODE.episode_s, CRASH, root / "crash")
    return ds, cds, plan


def test_schedule_falls_holds_and_recovers():
    from cmm.pipeline.stress import crash_schedule

    t, frac = crash_schedule(CRASH, 100_000_000)
    assert t[0] == 0 and t[-1] == 5_500_000_000 and np.all(np.diff(t) > 0)
    assert frac[0] == 0 and frac[-1] == 0 and frac.min() == pytest.approx(-0.03)
    bottom = (t >= 1_500_000_000) & (t < 2_500_000_000)
    assert np.allclose(frac[bottom], -0.03)
    assert np.all(np.diff(frac[t <= 1_500_000_000]) < 0)
    assert np.all(np.diff(frac[t >= 2_500_000_000]) > 0)


def test_crash_that_does_not_fit_an_episode_is_refused(crashed):
    from cmm.errors import InputError
    from cmm.pipeline.stress import crash_starts

    _, _, plan = crashed
    long = CRASH.model_copy(update={"recover_s": 30.0})
    with pytest.raises(InputError, match="does not fit inside an episode.*episode_s = 10"):
        crash_starts(plan, 10.0, long)


def test_nothing_before_the_first_crash_changes(crashed):
    ds, cds, plan = crashed
    first = min(c["start_ns"] for c in cds.meta["stress"]["crashes"])
    a = ds.steps.filter(pl.col("ts_ns") <= first)
    b = cds.steps.filter(pl.col("ts_ns") <= first)
    assert a.equals(b)
    train = ds.split_samples("train")
    assert train.equals(cds.split_samples("train"))
    np.testing.assert_array_equal(ds.windows("validation"), cds.windows("validation"))
    assert cds.meta["scaler_mean"] == ds.meta["scaler_mean"]
    assert cds.cache_key.startswith(ds.cache_key + "-crash-")
    assert len(cds.meta["stress"]["crashes"]) == plan.n_episodes


def test_grid_sees_the_whole_book_shift_and_come_back(crashed):
    ds, cds, _ = crashed
    for c in cds.meta["stress"]["crashes"]:
        s0 = ds.steps.filter(pl.col("session") == c["session"])
        s1 = cds.steps.filter(pl.col("session") == c["session"])
        ts = s1["ts_ns"].to_numpy()
        inside = (ts > c["start_ns"]) & (ts <= c["end_ns"])
        ratio = s1["mid"].to_numpy()[inside] / s0["mid"].to_numpy()[inside]
        assert ratio.min() == pytest.approx(0.97, abs=2e-4)  # the drop, the book shifted as one
        assert np.all(s1["bid_px_0"].to_numpy()[inside] < s1["ask_px_0"].to_numpy()[inside])
        # spreads and level sizes move with the book, unchanged by the shift
        assert np.allclose(s1["spread_ticks"].to_numpy()[inside],
                           s0["spread_ticks"].to_numpy()[inside], atol=1.0)
        after = ts > c["end_ns"] + 1_000_000_000
        assert np.allclose(s1["mid"].to_numpy()[after][:5], s0["mid"].to_numpy()[after][:5])
    # crashed features: a return of tens of training standard deviations at the fall
    assert np.abs(cds.windows("test")).max() > 10 * np.abs(ds.windows("test")).max()


def test_hftbacktest_book_follows_and_fills_a_resting_bid(crashed):
    from cmm.backtest.runner import run_backtest
    from cmm.strategy.policy import get_policy

    ds, cds, _ = crashed
    fixed = get_policy("fixed").fit(ds)
    ladder = LadderConfig(min_side_notional=500.0)
    res = run_backtest(cds, fixed, "test", ladder=ladder, config=EPISODE)
    c = cds.meta["stress"]["crashes"][0]
    rec = res.records.filter(pl.col("episode") == 0)
    ts = rec["ts_ns"].to_numpy()
    bottom = (ts > c["start_ns"] + 1_600_000_000) & (ts < c["start_ns"] + 2_400_000_000)
    mid = rec["mid"].to_numpy()
    assert np.all(mid[bottom] < 0.975 * c["mid_before"])
    assert np.all(rec["best_bid"].to_numpy()[bottom] < rec["best_ask"].to_numpy()[bottom])
    fills = res.fills.filter((pl.col("episode") == 0) & (pl.col("side") == 1))
    during = fills.filter((pl.col("local_ts_ns") > c["start_ns"])
                          & (pl.col("local_ts_ns") < c["start_ns"] + 1_600_000_000))
    assert len(during) > 3  # the falling asks run over our bids
    base = run_backtest(ds, fixed, "test", ladder=ladder, config=EPISODE)
    assert res.episodes["pnl"].sum() < base.episodes["pnl"].sum()


def test_most_volatile_third(crashed):
    from cmm.pipeline.stress import episode_volatility, most_volatile

    ds, _, plan = crashed
    vol = episode_volatility(ds, plan)
    assert vol.shape == (plan.n_episodes,) and np.all(vol >= 0)
    pick = most_volatile(vol, 1 / 3)
    assert len(pick) == int(np.ceil(plan.n_episodes / 3))
    assert vol[pick].min() >= np.delete(vol, pick).max()
    assert most_volatile(np.array([0.1, 0.3, 0.2, 0.5, 0.4, 0.0]), 1 / 3).tolist() == [3, 4]
