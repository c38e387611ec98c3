"""The trapezoidal quote ladder: worked examples and properties (hypothesis)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cmm.config import Instrument, LadderConfig
from cmm.strategy.ladder import quote_ladder, trapezoid_weights

BTC = Instrument(tick_size=0.1, lot_size=0.001, maker_fee=0.0002, taker_fee=0.0005)
INVERSE = Instrument(tick_size=0.5, lot_size=1.0, contract_size=100.0, inverse=True)


def test_trapezoid_weights_shape():
    w = trapezoid_weights(5, 1, 1)
    np.testing.assert_allclose(w, np.array([0.5, 1, 1, 1, 0.5]) / 4)
    np.testing.assert_allclose(trapezoid_weights(6, 2, 1), np.array([1 / 3, 2 / 3, 1, 1, 1, 0.5]) / 4.5)
    np.testing.assert_allclose(trapezoid_weights(3, 0, 0), np.ones(3) / 3)


def test_worked_example_flat_inventory():
    # mid 100.05, spread 2 ticks -> half 0.1: bids floor(99.95/0.1)=999 -> 99.9, asks 100.2.
    # size: the volume signal is log1p of lots: 2,500 lots of 0.001 = 2.5 base, x 0.02 = 0.05 base;
    # weights [.5,1,1,1,.5]/4 -> 6, 12, 12, 12, 6 lots.
    cfg = LadderConfig(levels=5, max_side_notional=1e9)
    q = quote_ladder(cfg, BTC, best_bid=100.0, best_ask=100.1, mid_bps=0.0, spread_ticks=2.0,
                     volume_log1p=math.log1p(2500))
    np.testing.assert_allclose(q.bid_px, [99.9, 99.8, 99.7, 99.6, 99.5])
    np.testing.assert_allclose(q.ask_px, [100.2, 100.3, 100.4, 100.5, 100.6])
    np.testing.assert_array_equal(q.bid_lots, [6, 12, 12, 12, 6])
    np.testing.assert_array_equal(q.ask_lots, [6, 12, 12, 12, 6])


def test_inventory_skews_prices_and_shrinks_the_growing_side():
    # Q = 5000 / 100.05 = 49.975 base; q = Q/2 -> r = m - 2 * 0.5 ticks, bid side x 0.5.
    # The volume signal is log1p(10,000 lots of 0.001) = 10 base.
    cfg = LadderConfig(levels=1, position_limit_notional=5000.0, max_side_notional=1e9,
                       participation=1.0, inventory_skew_ticks=2.0)
    Q = 5000 / 100.05
    flat = quote_ladder(cfg, BTC, best_bid=100.0, best_ask=100.1, mid_bps=0.0, spread_ticks=2.0,
                        volume_log1p=math.log1p(10_000.0))
    long = quote_ladder(cfg, BTC, best_bid=100.0, best_ask=100.1, mid_bps=0.0, spread_ticks=2.0,
                        volume_log1p=math.log1p(10_000.0), position=Q / 2)
    assert long.bid_px[0] == pytest.approx(flat.bid_px[0] - 0.1)
    assert long.ask_px[0] == pytest.approx(flat.ask_px[0] - 0.1)
    assert long.bid_qty[0] == pytest.approx(5.0)  # 10 x (1 - 1/2)
    assert long.ask_qty[0] == pytest.approx(10.0)
    at_limit = quote_ladder(cfg, BTC, best_bid=100.0, best_ask=100.1, mid_bps=0.0,
                            spread_ticks=2.0, volume_log1p=math.log1p(10_000.0),
                            position=Q)
    assert at_limit.bid_qty.sum() == 0 and at_limit.ask_qty.sum() > 0


def test_post_only_shift_keeps_spacing():
    # A +50 bps mid view would put bids far above the ask: the side is shifted back whole.
    cfg = LadderConfig(levels=3, level_step_ticks=2)
    q = quote_ladder(cfg, BTC, best_bid=100.0, best_ask=100.1, mid_bps=50.0, spread_ticks=1.0,
                     volume_log1p=math.log1p(1.0))
    np.testing.assert_allclose(q.bid_px, [100.0, 99.8, 99.6])
    assert q.ask_px[0] > 100.1


def test_no_quotes_on_a_crossed_or_empty_book():
    cfg = LadderConfig()
    q = quote_ladder(cfg, BTC, best_bid=100.1, best_ask=100.0, mid_bps=0.0, spread_ticks=1.0,
                     volume_log1p=1.0)
    assert q.bid_qty.sum() == 0 and q.ask_qty.sum() == 0


@st.composite
def ladder_case(draw):
    inst = draw(st.sampled_from([BTC, INVERSE, Instrument(tick_size=0.01, lot_size=1.0)]))
    cfg = LadderConfig(
        levels=draw(st.integers(1, 8)), level_step_ticks=draw(st.integers(1, 4)),
        min_half_spread_ticks=draw(st.floats(0.5, 5)),
        inventory_skew_ticks=draw(st.floats(0, 20)),
        ramp_up_levels=draw(st.integers(0, 4)), ramp_down_levels=draw(st.integers(0, 4)),
        participation=draw(st.floats(0, 1)), min_side_notional=(lo := draw(st.floats(0, 1000))),
        max_side_notional=draw(st.floats(max(1.0, lo), 1e5)),
        position_limit_notional=draw(st.floats(10, 1e5)))
    tick = inst.tick_size
    bid_tick = draw(st.integers(100, 10_000_000))
    spread = draw(st.integers(1, 50))
    mid = (bid_tick + spread / 2) * tick
    qpn = 1 / inst.contract_size if inst.inverse else 1 / (inst.contract_size * mid)
    limit = cfg.position_limit_notional * qpn
    q = draw(st.floats(-1.5, 1.5)) * limit
    q = math.floor(q / inst.lot_size) * inst.lot_size
    return inst, cfg, dict(best_bid=bid_tick * tick, best_ask=(bid_tick + spread) * tick,
                           mid_bps=draw(st.floats(-200, 200)),
                           spread_ticks=draw(st.floats(0, 100)),
                           volume_log1p=draw(st.floats(0, 15)), position=q), limit


@settings(max_examples=300, deadline=None)
@given(ladder_case())
def test_ladder_properties(case):
    inst, cfg, kw, limit = case
    out = quote_ladder(cfg, inst, **kw)
    tick, lot = inst.tick_size, inst.lot_size
    bb, ba = round(kw["best_bid"] / tick), round(kw["best_ask"] / tick)
    bl, al = out.bid_lots, out.ask_lots
    # on the grid: integer ticks and whole lots, non-negative sizes
    assert np.all(bl >= 0) and np.all(al >= 0)
    assert np.all(bl == np.round(bl)) and np.all(al == np.round(al))
    np.testing.assert_allclose(out.bid_px, out.bid_ticks * tick)
    # never crosses the book, bids below asks, levels step apart
    live_b, live_a = bl > 0, al > 0
    assert np.all(out.bid_ticks[live_b] <= ba - 1)
    assert np.all(out.ask_ticks[live_a] >= bb + 1)
    if live_b.any() and live_a.any():
        assert out.bid_ticks[live_b].max() < out.ask_ticks[live_a].min()
    assert np.all(np.diff(out.bid_ticks) == -cfg.level_step_ticks)
    assert np.all(np.diff(out.ask_ticks) == cfg.level_step_ticks)
    # respects the limit even if a whole side fills
    q = kw["position"]
    assert q + bl.sum() * lot <= max(limit, q) + 1e-9
    assert q - al.sum() * lot >= min(-limit, q) - 1e-9
    if q >= limit:
        assert bl.sum() == 0
    if q <= -limit:
        assert al.sum() == 0
    # trapezoid: non-decreasing over the ramp up, flat, non-increasing over the ramp down
    for lots in (bl, al):
        w = trapezoid_weights(cfg.levels, cfg.ramp_up_levels, cfg.ramp_down_levels)
        d = np.diff(lots)
        dw = np.diff(w)
        assert np.all(d[dw > 1e-12] >= 0)
        assert np.all(d[dw < -1e-12] <= 0)
        assert np.all(d[np.abs(dw) <= 1e-12] == 0)


def test_ladder_sizes_come_from_the_instrument_unless_set():
    from cmm.config import Sizing
    from cmm.data.spec import builtin_datasets
    from cmm.errors import InputError
    from cmm.strategy.ladder import LP_LIMIT, LP_MAX_SIDE, LP_MIN_SIDE, ladder_params

    goog = builtin_datasets()["lobster-goog-2012-06-21"].instrument
    p = ladder_params(LadderConfig(), goog)
    # a side of at least one round lot of GOOG (~$570 a share), not the crypto default of 2,000
    assert p[LP_MIN_SIDE] >= 100 * 500 and p[LP_MAX_SIDE] > p[LP_MIN_SIDE]
    assert p[LP_LIMIT] == goog.sizing.position_limit_notional
    own = ladder_params(LadderConfig(max_side_notional=1e6), goog)
    assert own[LP_MAX_SIDE] == 1e6 and own[LP_MIN_SIDE] == p[LP_MIN_SIDE]
    # an instrument without sizing keeps the historical defaults
    assert ladder_params(LadderConfig(), BTC)[LP_MAX_SIDE] == Sizing().max_side_notional
    with pytest.raises(InputError, match="min_side_notional"):
        ladder_params(LadderConfig(min_side_notional=5e5, max_side_notional=1e5), goog)
