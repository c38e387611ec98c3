"""Metrics on hand-built results (the replay's own known answers are in test_backtest.py), and
the formulas of :mod:`cmm.metrics` on hand-built arrays (known answers, guard cases)."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from cmm import metrics as M
from cmm.backtest.metrics import episode_metrics, summarize
from cmm.backtest.runner import BacktestResult
from cmm.config import Instrument
from cmm.metrics import max_drawdown


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


# ------------------------------------------------------------------ cmm.metrics: PnL ratios

REL = 1e-12  # every known answer below is a few float operations away from exact


def test_ratio_guard_is_one_rule():
    assert M.ratio(3.0, 2.0) == pytest.approx(1.5, rel=REL)
    assert M.ratio(-3.0, 4.0) == pytest.approx(-0.75, rel=REL)
    for den in (0.0, -0.0, -2.0, math.nan):  # every denominator here is >= 0 by construction
        assert math.isnan(M.ratio(1.0, den)), den
    assert math.isnan(M.ratio(math.nan, 2.0))
    assert M.ratio(1.0, math.inf) == 0.0


def test_sample_std_known_answer():
    assert M.sample_std([1.0, 3.0]) == pytest.approx(math.sqrt(2), rel=REL)
    assert M.sample_std([2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0]) == pytest.approx(
        math.sqrt(32 / 7), rel=REL)
    assert math.isnan(M.sample_std([5.0])) and math.isnan(M.sample_std([]))


def test_pnl_map_known_answer_and_guards():
    # EPnL 2, MAP 0.5 -> 4
    assert M.pnl_map([1.0, 3.0], [0.25, 0.75]) == pytest.approx(4.0, rel=REL)
    assert M.pnl_map([-1.0, -2.0, 0.0], [2.0, 2.0, 2.0]) == pytest.approx(-0.5, rel=REL)
    assert math.isnan(M.pnl_map([1.0, 2.0], [0.0, 0.0]))  # never held inventory
    assert math.isnan(M.pnl_map([], []))  # no episode
    assert math.isnan(M.pnl_map([1.0, 2.0], [1.0, math.nan]))
    assert math.isnan(M.pnl_map([math.nan, 2.0], [1.0, 1.0]))


def test_rpt_known_answer_and_guards():
    assert M.rpt([1.0, 3.0], [2, 6]) == pytest.approx(0.5, rel=REL)
    assert M.rpt(np.array([-4.5]), np.array([3])) == pytest.approx(-1.5, rel=REL)
    assert math.isnan(M.rpt([1.0, -1.0], [0, 0]))  # no fills
    assert math.isnan(M.rpt([], []))


def test_sharpe_known_answer_and_guards():
    # mean 2, std (ddof 1) sqrt(2)
    assert M.sharpe([1.0, 3.0]) == pytest.approx(2.0 / math.sqrt(2), rel=REL)
    assert M.sharpe([-1.0, -2.0, -3.0]) == pytest.approx(-2.0, rel=REL)  # std 1
    assert math.isnan(M.sharpe([2.0]))  # one episode: no std
    assert math.isnan(M.sharpe([2.0, 2.0, 2.0]))  # std 0
    assert math.isnan(M.sharpe([]))


def test_max_drawdown_known_answers():
    assert M.max_drawdown([0.5, -1.5, 2.0, 1.0]) == pytest.approx(2.0, rel=REL)  # 0.5 -> -1.5
    assert M.max_drawdown([1.0, 2.0, 3.0]) == 0.0
    assert M.max_drawdown([-3.0]) == pytest.approx(3.0, rel=REL)  # from the start at 0
    assert M.max_drawdown([2.0, np.nan, 0.5]) == pytest.approx(1.5, rel=REL)


def test_report_and_backtest_ratios_agree():
    """The report's per-seed ratios and the backtest's summary are the same numbers."""
    from cmm.report.tables import PolicyResult

    inst = Instrument(tick_size=0.1, lot_size=0.001, contract_size=2.0)
    r = _result(inst, [1.0, 3.0], [0, 1, -1, 0, 0, 0, 2, 2], [100.0] * 8, [2, 6],
                equity=[0, 2, -1, 1, 0, 1, 4, 3])
    m = summarize(r)
    rep = PolicyResult("p", "p", [episode_metrics(r)], [0.0], [0]).metrics()
    for k in ("PnLMAP", "RPT", "Sharpe"):
        assert rep[k].mean == m[k], k


# ------------------------------------------------------------------ cmm.metrics: prediction


def test_mse_and_r2_known_answers():
    y = np.array([1.0, 2.0, 3.0, 4.0])  # mean 2.5, SST 5
    pred = np.array([1.0, 2.0, 3.0, 6.0])  # SSE 4
    assert M.mse(pred, y) == pytest.approx(1.0, rel=REL)
    assert M.r2(pred, y) == pytest.approx(1 - 4 / 5, rel=REL)
    assert M.r2(y, y) == 1.0
    assert M.r2(np.full(4, 2.5), y) == pytest.approx(0.0, abs=REL)
    assert M.r2(np.zeros(3), np.ones(3)) is None  # constant truth: undefined
    assert math.isnan(M.mse(np.full(4, np.nan), y)) and math.isnan(M.r2(np.full(4, np.nan), y))


def test_r2_is_float64_on_float32_targets():
    y32 = np.array([0.1, 0.2, 0.7], np.float32)
    y64 = y32.astype(np.float64)
    pred = np.array([0.2, 0.2, 0.5])
    want = 1 - ((pred - y64) ** 2).sum() / ((y64 - y64.mean()) ** 2).sum()
    assert M.r2(pred, y32) == pytest.approx(want, rel=1e-15)


def test_direction_accuracy_known_answers_and_guards():
    y = np.array([1.0, -1.0, 0.0, 2.0, -3.0])  # four windows moved
    pred = np.array([0.5, 0.5, -9.0, 1.0, 0.0])  # right, wrong, (not moved), right, zero
    assert M.direction_accuracy(pred, y) == pytest.approx(0.5, rel=REL)
    assert M.direction_accuracy(np.zeros(5), y) is None  # always 0: undefined
    assert M.direction_accuracy(pred, np.zeros(5)) is None  # nothing moved


def test_direction_classes_known_answer():
    y = np.array([2.0, -2.0, 0.1, 3.0])  # up, down, flat, up beyond 0.5
    pred = np.array([1.0, 0.0, -1.0, 0.5])  # up, flat, down, flat (|0.5| is flat)
    m = M.direction_classes(pred, y, 0.5)
    assert m["direction3_acc"] == pytest.approx(0.25, rel=REL)
    # F1: down 2*0/(1+1) = 0, flat 0/(1+2) = 0, up 2*1/(2+1) = 2/3 -> mean 2/9
    assert m["direction3_f1"] == pytest.approx(2 / 9, rel=REL)
    assert m["flat_bps"] == 0.5
    # a class neither true nor predicted is left out of the mean
    assert M.direction_classes(np.array([1.0]), np.array([1.0]), 0.5)["direction3_f1"] == 1.0


def test_regression_metrics_per_task():
    y = np.array([[1.0, 1.0, 0.0], [-1.0, 2.0, 1.0], [2.0, 3.0, 2.0], [0.0, 4.0, 3.0]])
    pred = np.array([[1.0, 1.0, 1.5], [1.0, 2.0, 1.5], [1.0, 3.0, 1.5], [1.0, 4.0, 1.5]])
    m = M.regression_metrics(pred, y, flat_bps=0.5)
    assert list(m) == ["mid", "spread", "volume"]
    assert m["mid"]["mse"] == pytest.approx(6 / 4, rel=REL)  # errors 0, 2, -1, 1
    assert m["mid"]["r2"] == pytest.approx(1 - 6 / 5, rel=REL)  # mean 0.5, SST 5
    assert m["mid"]["direction_acc"] == pytest.approx(2 / 3, rel=REL)
    assert m["mid"]["direction3_acc"] == pytest.approx(0.5, rel=REL)
    assert m["spread"] == {"mse": 0.0, "r2": 1.0}
    assert m["volume"]["r2"] == pytest.approx(0.0, abs=REL)  # the truth's mean, 1.5
    assert "direction_acc" not in m["spread"]
    bare = M.regression_metrics(pred, y, direction=False)
    assert set(bare["mid"]) == {"mse", "r2"} and bare["mid"]["r2"] == m["mid"]["r2"]
    # a task a model does not predict (NaN) gets NaN, the others are untouched
    part = pred.copy()
    part[:, 2] = np.nan
    got = M.regression_metrics(part, y, direction=False)
    assert math.isnan(got["volume"]["mse"]) and got["spread"] == bare["spread"]
