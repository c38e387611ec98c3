"""Known-answer tests of the compiled book builder on hand-built event sequences."""

import numpy as np
import pytest

from cmm.data.events import (
    BUY_EVENT, DEPTH_CLEAR_EVENT, DEPTH_EVENT, DEPTH_SNAPSHOT_EVENT, EXCH_EVENT, LOCAL_EVENT,
    SELL_EVENT, TRADE_EVENT, event_dtype,
)
from cmm.data.grid import build_snapshots

FLAGS = EXCH_EVENT | LOCAL_EVENT
MS = 1_000_000


def ev(rows):
    out = np.zeros(len(rows), event_dtype)
    for i, (kind, side, ts, px, qty) in enumerate(rows):
        out[i] = (kind | side | FLAGS, ts, ts, px, qty, 0, 0, 0.0)
    return out


def build(rows, n_steps=3, levels=2, **kw):
    return build_snapshots(ev(rows), start_ns=100 * MS, dt_ns=100 * MS, n_steps=n_steps,
                           levels=levels, tick_size=0.5, price_lo=50.0, price_hi=150.0, **kw)


def test_levels_updates_and_deletions():
    r = build([
        (DEPTH_SNAPSHOT_EVENT, BUY_EVENT, 10 * MS, 99.5, 2.0),
        (DEPTH_SNAPSHOT_EVENT, BUY_EVENT, 10 * MS, 99.0, 3.0),
        (DEPTH_SNAPSHOT_EVENT, SELL_EVENT, 10 * MS, 100.5, 1.0),
        (DEPTH_SNAPSHOT_EVENT, SELL_EVENT, 10 * MS, 101.0, 4.0),
        # Exactly at step 0's time: included (local_ts <= t).
        (DEPTH_EVENT, BUY_EVENT, 100 * MS, 100.0, 5.0),
        # Step 1: best bid removed, ask level changed.
        (DEPTH_EVENT, BUY_EVENT, 150 * MS, 100.0, 0.0),
        (DEPTH_EVENT, SELL_EVENT, 160 * MS, 100.5, 7.0),
    ])
    np.testing.assert_allclose(r["bid_px"][0], [100.0, 99.5])
    np.testing.assert_allclose(r["bid_sz"][0], [5.0, 2.0])
    np.testing.assert_allclose(r["ask_px"][0], [100.5, 101.0])
    np.testing.assert_allclose(r["bid_px"][1], [99.5, 99.0])
    np.testing.assert_allclose(r["ask_sz"][1], [7.0, 4.0])
    np.testing.assert_allclose(r["bid_px"][2], r["bid_px"][1])  # nothing changed in step 2
    assert r["crossed_repairs"] == 0


def test_trade_flow_per_step_and_boundary():
    r = build([
        (DEPTH_SNAPSHOT_EVENT, BUY_EVENT, 10 * MS, 99.5, 2.0),
        (DEPTH_SNAPSHOT_EVENT, SELL_EVENT, 10 * MS, 100.5, 1.0),
        (TRADE_EVENT, BUY_EVENT, 50 * MS, 100.5, 0.3),   # before step 0 window (0, 100]: counted in step 0
        (TRADE_EVENT, SELL_EVENT, 100 * MS, 99.5, 0.2),  # exactly at step 0's end: step 0
        (TRADE_EVENT, BUY_EVENT, 100 * MS + 1, 100.5, 0.7),  # step 1
        (TRADE_EVENT, SELL_EVENT, 300 * MS, 99.5, 1.1),  # step 2's end
    ])
    np.testing.assert_allclose(r["buy_vol"], [0.3, 0.7, 0.0])
    np.testing.assert_allclose(r["sell_vol"], [0.2, 0.0, 1.1])
    np.testing.assert_array_equal(r["trade_count"], [2, 1, 1])


def test_inverse_volume_in_base_units():
    r = build([(TRADE_EVENT, BUY_EVENT, 100 * MS, 100.0, 5.0)], n_steps=1,
              contract_size=10.0, inverse=True)
    assert r["buy_vol"][0] == pytest.approx(5 * 10.0 / 100.0)


def test_crossing_update_removes_stale_levels_and_is_counted():
    r = build([
        (DEPTH_SNAPSHOT_EVENT, BUY_EVENT, 10 * MS, 99.5, 2.0),
        (DEPTH_SNAPSHOT_EVENT, SELL_EVENT, 10 * MS, 100.0, 1.0),
        (DEPTH_SNAPSHOT_EVENT, SELL_EVENT, 10 * MS, 100.5, 1.0),
        (DEPTH_SNAPSHOT_EVENT, SELL_EVENT, 10 * MS, 101.0, 1.0),
        # A bid at 100.5 means the asks at 100.0 and 100.5 are stale.
        (DEPTH_EVENT, BUY_EVENT, 20 * MS, 100.5, 3.0),
    ], n_steps=1)
    assert r["bid_px"][0, 0] == 100.5
    assert r["ask_px"][0, 0] == 101.0
    assert r["crossed_repairs"] == 2


def test_clear_event_and_out_of_band():
    r = build([
        (DEPTH_SNAPSHOT_EVENT, BUY_EVENT, 10 * MS, 99.5, 2.0),
        (DEPTH_SNAPSHOT_EVENT, BUY_EVENT, 10 * MS, 99.0, 2.0),
        (DEPTH_SNAPSHOT_EVENT, BUY_EVENT, 10 * MS, 98.0, 2.0),
        (DEPTH_SNAPSHOT_EVENT, SELL_EVENT, 10 * MS, 100.5, 1.0),
        (DEPTH_EVENT, BUY_EVENT, 10 * MS, 10.0, 9.0),  # far outside the band: ignored
        (DEPTH_CLEAR_EVENT, BUY_EVENT, 20 * MS, 99.0, 0.0),  # clears bids at >= 99.0
        (DEPTH_SNAPSHOT_EVENT, BUY_EVENT, 20 * MS, 99.0, 4.0),
    ], n_steps=1)
    np.testing.assert_allclose(r["bid_px"][0], [99.0, 98.0])
    np.testing.assert_allclose(r["bid_sz"][0], [4.0, 2.0])
    assert r["out_of_band"] == 1


def test_missing_levels_are_nan():
    r = build([(DEPTH_SNAPSHOT_EVENT, BUY_EVENT, 10 * MS, 99.5, 2.0)], n_steps=1)
    assert r["bid_px"][0, 0] == 99.5 and np.isnan(r["bid_px"][0, 1])
    assert np.isnan(r["ask_px"][0]).all() and (r["ask_sz"][0] == 0).all()


def test_locked_update_removes_the_stale_level():
    """A bid at the best ask price would lock the book: the ask level there is stale."""
    r = build([
        (DEPTH_SNAPSHOT_EVENT, BUY_EVENT, 10 * MS, 99.5, 2.0),
        (DEPTH_SNAPSHOT_EVENT, SELL_EVENT, 10 * MS, 100.0, 1.0),
        (DEPTH_SNAPSHOT_EVENT, SELL_EVENT, 10 * MS, 100.5, 1.0),
        (DEPTH_EVENT, BUY_EVENT, 20 * MS, 100.0, 3.0),
    ], n_steps=1)
    assert r["bid_px"][0, 0] == 100.0 and r["ask_px"][0, 0] == 100.5
    assert r["crossed_repairs"] == 1
