"""Baselines: Avellaneda-Stoikov estimates (on train only), fixed and oracle outputs, and the
registry; on the real capture (slow) the oracle must beat fixed and AS on EPnL."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl
import pytest
from hftbacktest.types import EXCH_EVENT, LOCAL_EVENT, SELL_EVENT, TRADE_EVENT, event_dtype

from cmm.config import AvellanedaStoikovConfig, Instrument
from cmm.errors import InputError
from cmm.strategy.baselines import estimate_intensity, estimate_sigma2
from cmm.strategy.policy import DecisionPlan, Predictions, get_policy

MS = 1_000_000
TICK = 0.1


@dataclass
class _Spec:
    name: str
    instrument: Instrument


class FakeDataset:
    """Steps, samples and trades with known statistics. The training split covers steps
    0..train_steps-1; the rest (test) is deliberately wild, to show it is never read."""

    def __init__(self, train_steps: int = 1000, test_steps: int = 1000):
        n = train_steps + test_steps
        ts = 1_000 * MS + np.arange(n, dtype=np.int64) * 100 * MS
        # train: the mid alternates by +/- 1 tick each 100 ms -> sigma^2 = 1 / 0.1 s = 10 ticks^2/s
        mid = 100.0 + TICK * (np.arange(n) % 2)
        mid[train_steps:] = 100.0 + 50 * TICK * np.sin(np.arange(test_steps))  # wild
        self.steps = pl.DataFrame({"session": np.zeros(n, np.int32), "step": np.arange(n, dtype=np.int32),
                                   "ts_ns": ts, "mid": mid, "valid": np.ones(n, bool)})
        split = np.array(["train"] * train_steps + ["test"] * test_steps)
        self.samples = pl.DataFrame({"session": np.zeros(n, np.int32), "step": np.arange(n, dtype=np.int32),
                                     "ts_ns": ts, "split": split,
                                     "y_mid": np.linspace(-1, 1, n), "y_spread": np.full(n, 1.5),
                                     "y_volume": np.where(split == "train", 1.0, 9.0)})
        # trades during train: per second, 4 at 0.5 ticks from the mid, 2 at 1.5, 1 at 2.5 and
        # 1 at 3.5 -> rate(distance >= d) = 8, 4, 2, 1 per s = 8 sqrt(2) exp(-ln2 d), d in ticks.
        seconds = (ts[train_steps - 1] - ts[0]) / 1e9
        trades = []
        for k in range(int(seconds) - 1):
            base = ts[0] + k * 1_000 * MS + 50 * MS
            for j, d in enumerate([0.5] * 4 + [1.5] * 2 + [2.5, 3.5]):
                t = base + j * 100 * MS  # each 50 ms after a step, so the mid before is known
                i = int((t - ts[0]) // (100 * MS))
                trades.append((t, mid[i] - d * TICK))
        # a burst of far trades in the test period must not count
        trades += [(ts[train_steps + 5] + 10 * MS, 90.0)] * 500
        ev = np.zeros(len(trades), event_dtype)
        ev["ev"] = TRADE_EVENT | SELL_EVENT | EXCH_EVENT | LOCAL_EVENT
        ev["exch_ts"] = ev["local_ts"] = [t for t, _ in trades]
        ev["px"] = [p for _, p in trades]
        ev["qty"] = 0.01
        self._events = ev
        self.train_seconds = seconds
        self.spec = _Spec("fake", Instrument(tick_size=TICK, lot_size=0.001))

    def split_samples(self, split: str) -> pl.DataFrame:
        return self.samples.filter(pl.col("split") == split)

    def events(self, session_id: int) -> np.ndarray:
        return self._events

    def targets(self, split: str) -> np.ndarray:
        return self.split_samples(split).select("y_mid", "y_spread", "y_volume").to_numpy()


def _plan(ds: FakeDataset, split: str = "test", episode_s: float = 10.0) -> DecisionPlan:
    from cmm.backtest.runner import make_plan
    from cmm.config import BacktestConfig

    return make_plan(ds.split_samples(split), split, 100 * MS, BacktestConfig(episode_s=episode_s))


def test_sigma_from_training_steps_only():
    ds = FakeDataset()
    assert estimate_sigma2(ds) == pytest.approx(10.0)


def test_intensity_fit_recovers_A_and_k_on_train_only():
    ds = FakeDataset()
    k, A, fit = estimate_intensity(ds, levels=4)
    n_sec = int(ds.train_seconds) - 1
    assert fit["trades"] == 8 * n_sec  # the test-period burst is not read
    rate = np.array(fit["rate_per_s"]) * fit["seconds"] / n_sec
    np.testing.assert_allclose(rate, [8, 4, 2, 1])
    assert k == pytest.approx(math.log(2))
    assert A * fit["seconds"] / n_sec == pytest.approx(8 * 2**0.5)  # 8 = A exp(-k 0.5)


def test_avellaneda_stoikov_outputs():
    ds = FakeDataset()
    pol = get_policy("as", {"intensity_levels": 4}).fit(ds)
    plan = _plan(ds)
    out = pol.act(ds, "test", plan)
    assert isinstance(out, Predictions)
    tau = plan.time_left_s()
    # gamma calibrated: skew at the limit = 2 ticks at half an episode's length (the setting),
    # not at the test split's own decision times
    half_episode = float((plan.episode_end_ns - plan.episode_start_ns).mean()) / 2e9
    assert pol.gamma_ * 10.0 * half_episode == pytest.approx(2.0)
    i = plan.rows[0]
    g, s2 = pol.gamma_, 10.0
    assert out.skew_ticks[i] == pytest.approx(g * s2 * tau[i])
    assert out.spread_ticks[i] == pytest.approx(g * s2 * tau[i] + (2 / g) * math.log1p(g / pol.k_per_tick_))
    assert np.all(out.mid_bps == 0)
    assert np.all(out.volume_log1p == pytest.approx(1.0))  # the training median, not the test's 9
    fixed_gamma = get_policy("as", AvellanedaStoikovConfig(gamma=0.01, intensity_levels=4)).fit(ds)
    fixed_gamma.act(ds, "test", plan)
    assert fixed_gamma.gamma_ == 0.01


def test_fixed_and_oracle_outputs():
    ds = FakeDataset()
    plan = _plan(ds)
    fixed = get_policy("fixed", {"spread_ticks": 3.0}).fit(ds).act(ds, "test", plan)
    assert np.all(fixed.spread_ticks == 3.0) and np.all(fixed.mid_bps == 0)
    assert np.all(fixed.volume_log1p == 1.0)
    oracle = get_policy("oracle").act(ds, "test", plan)
    np.testing.assert_allclose(oracle.mid_bps, ds.split_samples("test")["y_mid"].to_numpy())


def test_unfitted_and_misconfigured_policies_say_what_to_do():
    ds = FakeDataset()
    with pytest.raises(InputError, match="not fitted"):
        get_policy("as").act(ds, "test", _plan(ds))
    with pytest.raises(InputError, match=r"policies\.fixed\.spread_tick.*unknown field"):
        get_policy("fixed", {"spread_tick": 3})


@pytest.mark.slow
def test_oracle_beats_fixed_and_as_on_binance_btcusdt(prepared):
    from cmm.backtest.metrics import summarize
    from cmm.backtest.runner import run_backtest
    from cmm.config import BacktestConfig

    ds = prepared("binance-usdm-btcusdt")
    cfg = BacktestConfig(episode_s=60.0)  # the test split's sessions are < 5 min (the default)
    epnl = {}
    for name in ("fixed", "as", "oracle"):
        result = run_backtest(ds, get_policy(name).fit(ds), "test", config=cfg)
        m = summarize(result)
        assert m["episodes"] >= 3
        epnl[name] = m["EPnL"]
    assert epnl["oracle"] > epnl["fixed"]
    assert epnl["oracle"] > epnl["as"]


def test_a_policy_that_never_quotes_or_never_fills_is_warned_about(prepared):
    """On the AAPL sample (~$580 a share), a 100-notional side is under one share: the fixed
    spread rounds every side to 0 lots, and the warning names the setting that sized it."""
    from cmm.backtest.runner import run_backtest
    from cmm.config import BacktestConfig, LadderConfig

    ds = prepared("lobster-aapl-sample")
    cfg = BacktestConfig(episode_s=10.0)
    fixed = get_policy("fixed").fit(ds)
    silent = run_backtest(ds, fixed, "train", ladder=LadderConfig(max_side_notional=100.0),
                          config=cfg)
    assert len(silent.orders) == 0 and len(silent.warnings) == 1
    w = silent.warnings[0]
    assert "never quoted" in w and "ladder.min_side_notional..max_side_notional = 0..100" in w
    assert "ladder: in the run configuration" in w
    # sized for the market, the same policy quotes, and is not warned about unless it never fills
    sized = run_backtest(ds, fixed, "train", ladder=LadderConfig(max_side_notional=1e5,
                                                                  min_side_notional=6e4),
                         config=cfg)
    assert len(sized.orders) > 0
    assert all("never quoted" not in x for x in sized.warnings)
    if len(sized.fills) == 0:
        assert "never filled" in sized.warnings[0]
