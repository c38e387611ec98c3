"""Metrics on hand-built results (the replay's own known answers are in test_backtest.py)."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from cmm.backtest.metrics import episode_metrics, max_drawdown, summarize
from cmm.backtest.runner import BacktestResult
from cmm.config import Instrument


def test_max_drawdown_starts_from_zero():
    assert max_drawdown(np.array([1.0, 3.0, 2.0, 4.0, 0.5])) == pytest.approx(3.5)
    assert max_drawdown(np.array([-1.0, -2.0, 1.0])) == pytest.approx(2.0)
    assert max_drawdown(np.array([1.0, np.nan, 2.0])) == 0.0
    assert max_drawdown(np.array([])) == 0.0


def _result(inst: Instrument, pnls, positions, mids, fills, equity=None) -> BacktestResult:
    n_ep = len(pnls)
    per = len(positions) // n_ep
    records = pl.DataFrame({
        "episode": np.repeat(np.arange(n_ep), per), "position": np.asarray(positions, float),
        "mid": np.asarray(mids, float),
        "equity": np.asarray(equity if equity is not None else np.zeros(len(positions)), float)})
    episodes = pl.DataFrame({
        "episode": np.arange(n_ep), "session": np.zeros(n_ep, int), "start_ns": np.arange(n_ep),
        "pnl": np.asarray(pnls, float), "fills": np.asarray(fills), "volume": np.ones(n_ep),
        "close_qty": np.zeros(n_ep), "maker_fee": np.full(n_ep, 0.1), "close_fee": np.zeros(n_ep),
        "decisions": np.full(n_ep, per)})
    return BacktestResult(dataset="d", policy="p", split="test", instrument=inst,
                          episodes=episodes, records=records, fills=pl.DataFrame(),
                          orders=pl.DataFrame())


def test_summary_linear():
    inst = Instrument(tick_size=0.1, lot_size=0.001, contract_size=2.0)
    r = _result(inst, [1.0, 3.0], [0, 1, -1, 0, 0, 0, 2, 2], [100.0] * 8, [2, 6],
                equity=[0, 2, -1, 1, 0, 1, 4, 3])
    m = summarize(r)
    # MAP in base units: contract_size 2 x mean |q|: episode 0 -> 2 x 0.5, episode 1 -> 2 x 1
    assert m["MAP"] == pytest.approx(1.5)
    assert m["EPnL"] == pytest.approx(2.0)
    assert m["EPnL_std"] == pytest.approx(math.sqrt(2))
    assert m["PnLMAP"] == pytest.approx(2.0 / 1.5)
    assert m["RPT"] == pytest.approx(4.0 / 8)
    assert m["Sharpe"] == pytest.approx(2.0 / math.sqrt(2))
    assert m["fees"] == pytest.approx(0.2)
    # drawdowns: episode 0 path 0,0,2,-1,1,1 -> 3; episode 1 path 0,0,1,4,3,3 -> 1
    assert m["per_episode"]["max_drawdown"]["mean"] == pytest.approx(2.0)
    per = episode_metrics(r)
    assert per["max_drawdown"].to_list() == pytest.approx([3.0, 1.0])


def test_summary_inverse_map_in_coins_and_degenerate_cases():
    inst = Instrument(tick_size=0.5, lot_size=1, contract_size=100.0, inverse=True)
    r = _result(inst, [0.0], [10, 10, 0, 0], [50000.0, 40000.0, 50000.0, 50000.0], [0])
    m = summarize(r)
    assert m["MAP"] == pytest.approx((1000 / 50000 + 1000 / 40000) / 4)
    assert math.isnan(m["RPT"])  # no fills
    assert math.isnan(m["EPnL_std"]) and math.isnan(m["Sharpe"])  # one episode
    assert m["currency"] == "base"
