"""The replay on hftbacktest: known answers on hand-built event sequences (linear and inverse),
latency, busy policies, episodes, and the errors a user can act on.

Every scenario is a tiny book whose fills can be worked out by hand. Our orders sit strictly
inside the spread and the market trades *through* their price, so they fill whatever the queue
model; timestamps are equal on the exchange and local clocks (no feed latency); order entry and
response latencies are 1 ms each.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import polars as pl
import pytest
from hftbacktest.types import (
    BUY_EVENT,
    DEPTH_EVENT,
    EXCH_EVENT,
    LOCAL_EVENT,
    SELL_EVENT,
    TRADE_EVENT,
    event_dtype,
)

from cmm.backtest.metrics import summarize
from cmm.backtest.runner import make_plan, replay, run_backtest
from cmm.config import BacktestConfig, DataConfig, GridConfig, Instrument, LadderConfig
from cmm.errors import CmmError, InputError, UnknownNameError
from cmm.strategy.policy import DecisionPlan, Policy, Predictions, Quotes, get_policy

MS = 1_000_000
CFG = BacktestConfig(venue_entry_latency_ns=MS, venue_response_latency_ns=MS, episode_s=1.0)


def ev(kind: int, side: int, t_ms: float, px: float, qty: float) -> np.ndarray:
    e = np.zeros(1, event_dtype)
    e["ev"] = kind | side | EXCH_EVENT | LOCAL_EVENT
    e["exch_ts"] = e["local_ts"] = round(t_ms * MS)
    e["px"], e["qty"] = px, qty
    return e


def book(t_ms, bid, ask, qty):
    return [ev(DEPTH_EVENT, BUY_EVENT, t_ms, bid, qty), ev(DEPTH_EVENT, SELL_EVENT, t_ms, ask, qty)]


def sell_trade(t_ms, px, qty):  # a seller hits bids down to px
    return ev(TRADE_EVENT, SELL_EVENT, t_ms, px, qty)


def buy_trade(t_ms, px, qty):
    return ev(TRADE_EVENT, BUY_EVENT, t_ms, px, qty)


@dataclass
class _Spec:
    name: str
    instrument: Instrument


class TinyDataset:
    """The slice of PreparedDataset that the runner reads, over hand-built events."""

    def __init__(self, events: np.ndarray, instrument: Instrument, decision_ms: list[float]):
        self._events = np.concatenate(events)
        self.spec = _Spec("tiny", instrument)
        self.name = "tiny"
        self.cache_key = "tiny"
        self.config = DataConfig(grid=GridConfig(dt_ms=100))
        ts = (np.asarray(decision_ms) * MS).astype(np.int64)
        self.samples = pl.DataFrame({"sample": np.arange(len(ts)), "session": np.zeros(len(ts), np.int32),
                                     "ts_ns": ts, "split": ["test"] * len(ts)})

    def events(self, session_id: int) -> np.ndarray:
        return self._events

    def split_samples(self, split: str) -> pl.DataFrame:
        return self.samples.filter(pl.col("split") == split)


class ConstantQuotes(Policy):
    """One bid and one ask at fixed prices and sizes, at every decision."""

    name = "constant-quotes"

    def __init__(self, bid: float, ask: float, qty: float, latency_ns: int = 0):
        super().__init__(None)
        self.bid, self.ask, self.qty, self._latency = bid, ask, qty, latency_ns

    @property
    def latency_ns(self) -> int:
        return self._latency

    def act(self, ds, split: str, plan: DecisionPlan) -> Quotes:
        n = plan.n_rows
        return Quotes(np.full((n, 1), self.bid), np.full((n, 1), self.qty),
                      np.full((n, 1), self.ask), np.full((n, 1), self.qty))


# ---------------------------------------------------------------- known answers: linear

LINEAR = Instrument(tick_size=0.1, lot_size=0.001, maker_fee=-0.0001, taker_fee=0.0005)


@pytest.fixture(scope="module")
def linear_result():
    # Book 99.9 / 100.2 throughout. We quote 0.01 @ 100.0 / 100.1 every 100 ms.
    # Episode 0 = decisions 100..1000 ms, episode 1 = 1100..2000 ms (episodes of 1 s).
    events = [*book(1, 99.9, 100.2, 5.0),
              sell_trade(150, 99.9, 0.5),   # fills our bid: +0.01 @ 100.0
              buy_trade(250, 100.2, 0.5),   # fills our ask: -0.01 @ 100.1
              sell_trade(350, 99.9, 0.5),   # fills the re-posted bid: +0.01 @ 100.0
              buy_trade(1500, 100.2, 0.5),  # episode 1: fills our ask: -0.01 @ 100.1
              *book(2500, 99.9, 100.2, 5.0)]
    ds = TinyDataset(events, LINEAR, list(range(100, 2001, 100)))
    result = run_backtest(ds, ConstantQuotes(100.0, 100.1, 0.01), config=CFG)
    return result, summarize(result)


def test_linear_fills_positions_and_pnl(linear_result):
    result, _ = linear_result
    f = result.fills.sort("exch_ts_ns")
    assert f["exch_ts_ns"].to_list() == [150 * MS, 250 * MS, 350 * MS, 1500 * MS]
    assert f["side"].to_list() == [1, -1, 1, -1]
    np.testing.assert_allclose(f["price"], [100.0, 100.1, 100.0, 100.1])
    np.testing.assert_allclose(f["qty"], [0.01] * 4)
    assert f["episode"].to_list() == [0, 0, 0, 1]

    rec = result.records
    pos0 = rec.filter(pl.col("episode") == 0)["position"].to_numpy()
    np.testing.assert_allclose(pos0, [0, 0.01, 0, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01, 0.01])
    pos1 = rec.filter(pl.col("episode") == 1)["position"].to_numpy()
    # episode 1 starts flat although episode 0 ended long; its first decision (1100 ms) falls
    # inside episode 0's close (cancels acknowledged at 1102 ms) and is skipped.
    np.testing.assert_allclose(pos1, [0, 0, 0, 0, 0, -0.01, -0.01, -0.01, -0.01, -0.01])
    assert rec.filter(pl.col("episode") == 1)["acted"].to_list() == [-1] + [1] * 9

    eps = result.episodes.sort("episode")
    # Episode 0: cash -1.000 + 1.001 - 1.000 = -0.999; maker rebate 0.0001 x 3.001 = 0.0003001;
    # close: sell 0.01 at the best bid 99.9 = +0.999, taker fee 0.0005 x 0.999 = 0.0004995.
    e0 = eps.row(0, named=True)
    assert e0["close_qty"] == pytest.approx(0.01)
    assert e0["close_px"] == pytest.approx(99.9)
    assert e0["close_fee"] == pytest.approx(0.0004995)
    assert e0["maker_fee"] == pytest.approx(-0.0003001)
    assert e0["pnl"] == pytest.approx(-0.999 + 0.999 + 0.0003001 - 0.0004995)
    assert e0["fills"] == 3
    assert e0["close_ns"] == 1102 * MS
    # Episode 1: sell 0.01 @ 100.1 (+1.001, rebate 0.0001001); close: buy at the ask 100.2
    # (-1.002, taker fee 0.000501).
    e1 = eps.row(1, named=True)
    assert e1["close_qty"] == pytest.approx(-0.01)
    assert e1["close_px"] == pytest.approx(100.2)
    assert e1["pnl"] == pytest.approx(1.001 - 1.002 + 0.0001001 - 0.000501)
    assert e1["fills"] == 1


def test_linear_metrics(linear_result):
    _, m = linear_result
    pnl = np.array([-0.999 + 0.999 + 0.0003001 - 0.0004995, 1.001 - 1.002 + 0.0001001 - 0.000501])
    assert m["episodes"] == 2
    assert m["currency"] == "quote"
    assert m["EPnL"] == pytest.approx(pnl.mean())
    assert m["EPnL_std"] == pytest.approx(np.std(pnl, ddof=1))
    # MAP: episode 0 holds 0.01 at 8 of its 10 decisions, episode 1 at 5 of 10.
    assert m["per_episode"]["map"]["mean"] == pytest.approx((0.008 + 0.005) / 2)
    assert m["MAP"] == pytest.approx(0.0065)
    assert m["PnLMAP"] == pytest.approx(pnl.mean() / 0.0065)
    assert m["fills"] == 4
    assert m["RPT"] == pytest.approx(pnl.sum() / 4)
    assert m["Sharpe"] == pytest.approx(pnl.mean() / np.std(pnl, ddof=1))
    assert m["fees"] == pytest.approx(-0.0003001 + 0.0004995 - 0.0001001 + 0.000501)
    assert m["volume"] == pytest.approx(0.03 + 0.01 + 0.01 + 0.01)


# ---------------------------------------------------------------- known answers: inverse

INVERSE = Instrument(tick_size=0.5, lot_size=1.0, contract_size=100.0, inverse=True,
                     maker_fee=-0.00025, taker_fee=0.00075)


def test_inverse_known_answer_through_the_ladder():
    # BTCUSD-style coin-margined contracts of 100 USD; PnL in BTC. Book 49999.5 / 50001.0, mid
    # 50000.25. Predictions: a mid view of +0.25 (mid_bps = 1e4 x 0.25 / 50000.25) gives r =
    # 50000.5; spread 1 tick -> half max(0.25, 1 tick) = 0.5: bid floor(50000.0) = 50000.0, ask
    # ceil(50001.0) = 50001.0 (at the touch, behind 1000 contracts). One level, size
    # participation 1 x expm1(log1p(10.5)) = 10.5 -> 10 whole contracts (the limit is far).
    events = [*book(1, 49999.5, 50001.0, 1000.0),
              sell_trade(150, 49999.5, 50.0),   # fills our bid: +10 @ 50000.0
              buy_trade(250, 50001.0, 50.0),    # no fill: our ask sits at 50001.0 behind 1000
              sell_trade(350, 49999.5, 50.0),   # our bid (re-posted at 200 ms): +10 @ 50000.0
              *book(2500, 49999.5, 50001.0, 1000.0)]
    ladder = LadderConfig(levels=1, participation=1.0, max_side_notional=1e9,
                          position_limit_notional=1e9, inventory_skew_ticks=0.0)
    n = 10
    preds = Predictions(np.full(n, 1e4 * 0.25 / 50000.25), np.full(n, 1.0),
                        np.full(n, math.log1p(10.5)))
    ts = np.arange(100, 1001, 100) * MS
    cfg = CFG.model_copy(update={"queue_model": "risk_adverse"})
    r = replay(np.concatenate(events), INVERSE, ts, np.zeros(n, np.int64), np.array([1100 * MS]),
               preds, ladder=ladder, config=cfg)
    fills = r.fills.sort("exch_ts_ns")
    assert fills["exch_ts_ns"].to_list() == [150 * MS, 350 * MS]
    np.testing.assert_allclose(fills["price"], [50000.0, 50000.0])
    np.testing.assert_allclose(fills["qty"], [10, 10])
    rec = r.records
    np.testing.assert_allclose(rec["position"], [0, 10, 10, 20, 20, 20, 20, 20, 20, 20])
    assert rec["ts_ns"].to_list() == ts.tolist()  # acted at the decision times, no later
    assert (rec["quote_bid"] == 50000.0).all() and (rec["quote_ask"] == 50001.0).all()
    ep = r.episodes.row(0, named=True)
    # Long 20 contracts bought at 50000 (cost 2000/50000 = 0.04 BTC, rebate 0.00025 x 0.04),
    # closed at the bid 49999.5: PnL = 2000 x (1/50000 - 1/49999.5) BTC, taker fee 0.00075 x
    # 2000/49999.5.
    close_value = 2000 / 49999.5
    assert ep["close_qty"] == 20 and ep["close_px"] == 49999.5
    assert ep["maker_fee"] == pytest.approx(-0.00025 * 0.04)
    assert ep["close_fee"] == pytest.approx(0.00075 * close_value)
    expected = 2000 * (1 / 50000 - 1 / 49999.5) + 0.00025 * 0.04 - 0.00075 * close_value
    assert ep["pnl"] == pytest.approx(expected, rel=1e-9)
    # equity marked at the mid 50000.25 while long 20: 2000 x (1/50000 - 1/50000.25) + rebate
    assert rec["equity"][-1] == pytest.approx(
        2000 * (1 / 50000 - 1 / 50000.25) + 0.00025 * 0.04, rel=1e-9)


def test_inverse_metrics_in_base_units():
    events = [*book(1, 49999.5, 50001.0, 1000.0), sell_trade(150, 49999.5, 50.0),
              buy_trade(450, 50001.0, 50.0), *book(2500, 49999.5, 50001.0, 1000.0)]
    ds = TinyDataset(events, INVERSE, list(range(100, 1001, 100)))
    result = run_backtest(ds, ConstantQuotes(50000.0, 50000.5, 10.0), config=CFG)
    m = summarize(result)
    assert m["currency"] == "base"
    # long 10 contracts at decisions 200..400 ms (3 of 10), 10 x 100 / 50000.25 BTC each
    assert m["MAP"] == pytest.approx(0.3 * 1000 / 50000.25)
    pnl = 1000 * (1 / 50000 - 1 / 50000.5) + 0.00025 * (1000 / 50000 + 1000 / 50000.5)
    assert m["EPnL"] == pytest.approx(pnl, rel=1e-9)
    assert m["RPT"] == pytest.approx(pnl / 2, rel=1e-9)
    assert m["fills"] == 2


# ---------------------------------------------------------------- latency and busy policies


def _latency_run(latency_ms: float):
    events = [*book(1, 99.9, 100.2, 5.0), sell_trade(120, 99.9, 0.5), sell_trade(200, 99.9, 0.5),
              *book(2500, 99.9, 100.2, 5.0)]
    ds = TinyDataset(events, LINEAR, [100.0, 200.0, 300.0, 400.0, 500.0])
    policy = ConstantQuotes(100.0, 100.1, 0.01, latency_ns=int(latency_ms * MS))
    cfg = CFG.model_copy(update={"episode_s": 0.5})
    return run_backtest(ds, policy, config=cfg)


def test_larger_policy_latency_reaches_the_exchange_later():
    fast, slow = _latency_run(0), _latency_run(50)
    o_fast = fast.orders.filter(pl.col("side") == 1).row(0, named=True)
    o_slow = slow.orders.filter(pl.col("side") == 1).row(0, named=True)
    assert o_fast["submit_ns"] == o_slow["submit_ns"] == 100 * MS  # decided at the same time
    # fast: at the exchange at 101 ms, filled by the 120 ms trade; slow: arrives at 151 ms,
    # misses it, and is filled by the 200 ms trade.
    assert fast.fills["exch_ts_ns"].to_list() == [120 * MS]
    assert slow.fills["exch_ts_ns"].to_list() == [200 * MS]
    assert o_slow["exch_ns"] > o_fast["exch_ns"]


def test_busy_policy_skips_decision_points():
    events = [*book(1, 99.9, 100.2, 5.0), *book(2500, 99.9, 100.2, 5.0)]
    ds = TinyDataset(events, LINEAR, list(range(100, 1001, 100)))
    result = run_backtest(ds, ConstantQuotes(100.0, 100.1, 0.01, latency_ns=250 * MS), config=CFG)
    assert result.records["acted"].to_list() == [1, 0, 0, 1, 0, 0, 1, 0, 0, 1]
    eager = run_backtest(ds, ConstantQuotes(100.0, 100.1, 0.01, latency_ns=250 * MS),
                         config=CFG.model_copy(update={"skip_while_busy": False}))
    assert eager.records["acted"].to_list() == [1] * 10


# ---------------------------------------------------------------- plan, registry, errors


def test_plan_cuts_equal_whole_episodes():
    ts = np.concatenate([np.arange(0, 250) * 100, np.arange(0, 80) * 100 + 10**6]) * MS
    samples = pl.DataFrame({"ts_ns": ts, "session": [0] * 250 + [1] * 80})
    plan = make_plan(samples, "test", 100 * MS, BacktestConfig(episode_s=10.0))
    # session 0: 25 s -> 2 whole episodes; session 1: 8 s -> none
    assert plan.n_episodes == 2
    assert plan.episode_session.tolist() == [0, 0]
    np.testing.assert_array_equal(plan.episode_end_ns - plan.episode_start_ns, [10**10] * 2)
    assert plan.n_decisions == 200
    assert np.all(plan.ts_ns < plan.episode_end_ns[plan.episode])
    assert np.all(plan.ts_ns >= plan.episode_start_ns[plan.episode])
    every = make_plan(samples, "test", 100 * MS, BacktestConfig(episode_s=10.0, decision_every=4))
    assert every.n_decisions == 50
    # the longest session's span (24.9 s), not the split's (the sessions are 1,000 s apart)
    with pytest.raises(InputError, match=r"shorter than one episode.*<= 24\.9 s \(the longest"):
        make_plan(samples, "test", 100 * MS, BacktestConfig(episode_s=100.0))


def test_unknown_policy_lists_valid_names():
    with pytest.raises(UnknownNameError, match=r"unknown policy 'llm-magic'; valid: as, .*fixed, .*oracle"):
        get_policy("llm-magic")


def test_policy_output_shape_is_checked():
    events = [*book(1, 99.9, 100.2, 5.0), *book(2500, 99.9, 100.2, 5.0)]
    with pytest.raises(InputError, match=r"field 'mid_bps'.*expected \(3,\)"):
        replay(np.concatenate(events), LINEAR, np.array([100, 200, 300]) * MS, np.zeros(3, np.int64),
               np.array([1000 * MS]), Predictions(np.zeros(2), np.ones(3), np.ones(3)))


def test_partial_fill_exchange_bug_is_explained():
    # hftbacktest 2.4.4: a partial fill that exactly uses up the order leaves it in the exchange's
    # book, and the next trade at that price fails with InvalidOrderStatus (#312).
    events = [*book(1, 99.9, 100.2, 5.0), sell_trade(150, 100.0, 0.004), sell_trade(160, 100.0, 0.006),
              sell_trade(170, 100.0, 0.001), *book(2500, 99.9, 100.2, 5.0)]
    ds = TinyDataset(events, LINEAR, list(range(100, 1001, 100)))
    cfg = CFG.model_copy(update={"exchange": "partial_fill", "queue_model": "risk_adverse"})
    with pytest.raises(CmmError, match="no_partial_fill"):
        run_backtest(ds, ConstantQuotes(100.0, 100.1, 0.01), config=cfg)


def test_a_decision_sees_the_book_up_to_its_time_and_nothing_later():
    # The book jumps 1 ns after the 100 ms decision (seen at 200 ms) and exactly at 300 ms
    # (seen at 300 ms: events stamped at the decision time are known to it).
    events = [*book(1, 99.9, 100.2, 5.0),
              ev(DEPTH_EVENT, BUY_EVENT, 100 + 1e-6, 99.9, 0.0),
              ev(DEPTH_EVENT, SELL_EVENT, 100 + 1e-6, 100.2, 0.0),
              *book(100 + 1e-6, 100.9, 101.2, 5.0),
              ev(DEPTH_EVENT, BUY_EVENT, 300, 100.9, 0.0),
              ev(DEPTH_EVENT, SELL_EVENT, 300, 101.2, 0.0),
              *book(300, 101.9, 102.2, 5.0),
              *book(2500, 101.9, 102.2, 5.0)]
    n = 4
    preds = Predictions(np.zeros(n), np.full(n, 2.0), np.full(n, math.log1p(1000.0)))  # 1 base
    r = replay(np.concatenate(events), LINEAR, np.array([100, 200, 300, 400]) * MS,
               np.zeros(n, np.int64), np.array([1000 * MS]), preds,
               ladder=LadderConfig(levels=1), config=CFG)
    np.testing.assert_allclose(r.records["best_bid"], [99.9, 100.9, 101.9, 101.9])
    np.testing.assert_allclose(r.records["quote_bid"], [99.9, 100.9, 101.9, 101.9])
    np.testing.assert_allclose(r.records["quote_ask"], [100.2, 101.2, 102.2, 102.2])
