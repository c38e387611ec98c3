"""Book reconstruction on a fixed time grid (compiled with numba).

The book is kept as two arrays of sizes indexed by price tick within a band around the session's
price, so every update is O(1) and the top ``L`` levels are read by scanning from the best price.
Only the local view of the events is used (``LOCAL_EVENT`` flag, ordered by ``local_ts``): a step
at time ``t`` sees exactly the events with ``local_ts <= t``, as a live trader would.

Repair policy (counted, never silent): a bid posted at or above the best ask (or an ask at or
below the best bid) means the other side holds stale levels, typically after a sequence gap;
those crossed levels are removed, as hftbacktest's own market depth does.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from cmm.data.events import (
    BUY_EVENT,
    DEPTH_CLEAR_EVENT,
    DEPTH_EVENT,
    DEPTH_SNAPSHOT_EVENT,
    EVENT_TYPE_MASK,
    LOCAL_EVENT,
    SELL_EVENT,
    TRADE_EVENT,
)


@njit(cache=True)
def _scan_down(qty: np.ndarray, start: int) -> int:
    i = start
    while i >= 0 and qty[i] <= 0.0:
        i -= 1
    return i  # -1: side empty


@njit(cache=True)
def _scan_up(qty: np.ndarray, start: int) -> int:
    n = qty.shape[0]
    i = start
    while i < n and qty[i] <= 0.0:
        i += 1
    return i  # n: side empty


@njit(cache=True)
def _build(ev, local_ts, px, qty, start_ns, dt_ns, n_steps, levels, tick, lo_tick, n_slots,
           contract_size, inverse):
    bid = np.zeros(n_slots, np.float64)
    ask = np.zeros(n_slots, np.float64)
    best_bid = -1
    best_ask = n_slots
    bid_px = np.full((n_steps, levels), np.nan)
    ask_px = np.full((n_steps, levels), np.nan)
    bid_sz = np.zeros((n_steps, levels))
    ask_sz = np.zeros((n_steps, levels))
    buy_vol = np.zeros(n_steps)
    sell_vol = np.zeros(n_steps)
    trade_count = np.zeros(n_steps, np.int64)
    crossed_repairs = 0
    out_of_band = 0

    k = 0
    step_end = start_ns
    n = ev.shape[0]
    i = 0
    while k < n_steps:
        # Apply every local event up to and including this step's time.
        while i < n and local_ts[i] <= step_end:
            e = ev[i]
            if (e & LOCAL_EVENT) == 0:
                i += 1
                continue
            kind = e & EVENT_TYPE_MASK
            is_buy = (e & BUY_EVENT) != 0
            is_sell = (e & SELL_EVENT) != 0
            if kind == TRADE_EVENT:
                if local_ts[i] > step_end - dt_ns:  # trade flow of this step only
                    base = qty[i] * contract_size / px[i] if inverse else qty[i] * contract_size
                    if is_buy:
                        buy_vol[k] += base
                    elif is_sell:
                        sell_vol[k] += base
                    trade_count[k] += 1
            elif kind == DEPTH_EVENT or kind == DEPTH_SNAPSHOT_EVENT:
                s = np.int64(np.round(px[i] / tick)) - lo_tick
                if s < 0 or s >= n_slots:
                    out_of_band += 1
                elif is_buy:
                    bid[s] = qty[i]
                    if qty[i] > 0.0:
                        if s > best_bid:
                            best_bid = s
                        if s >= best_ask:
                            for j in range(best_ask, s + 1):
                                if ask[j] > 0.0:
                                    ask[j] = 0.0
                                    crossed_repairs += 1
                            best_ask = _scan_up(ask, s + 1)
                    elif s == best_bid:
                        best_bid = _scan_down(bid, s - 1)
                elif is_sell:
                    ask[s] = qty[i]
                    if qty[i] > 0.0:
                        if s < best_ask:
                            best_ask = s
                        if s <= best_bid:
                            for j in range(s, best_bid + 1):
                                if bid[j] > 0.0:
                                    bid[j] = 0.0
                                    crossed_repairs += 1
                            best_bid = _scan_down(bid, s - 1)
                    elif s == best_ask:
                        best_ask = _scan_up(ask, s + 1)
            elif kind == DEPTH_CLEAR_EVENT:
                # hftbacktest semantics: clear the side from the best price down to (bids) or
                # up to (asks) the given price; a non-positive price clears the whole side.
                if is_buy:
                    s = np.int64(np.round(px[i] / tick)) - lo_tick if px[i] > 0 else 0
                    s = max(s, 0)
                    for j in range(s, best_bid + 1):
                        bid[j] = 0.0
                    best_bid = _scan_down(bid, min(s - 1, n_slots - 1))
                elif is_sell:
                    s = np.int64(np.round(px[i] / tick)) - lo_tick if px[i] > 0 else n_slots - 1
                    s = min(s, n_slots - 1)
                    for j in range(max(best_ask, 0), s + 1):
                        ask[j] = 0.0
                    best_ask = _scan_up(ask, max(s + 1, 0))
            i += 1
        # Snapshot of the top levels at the step's end.
        j = best_bid
        for lv in range(levels):
            if j < 0:
                break
            bid_px[k, lv] = (j + lo_tick) * tick
            bid_sz[k, lv] = bid[j]
            j = _scan_down(bid, j - 1)
        j = best_ask
        for lv in range(levels):
            if j >= n_slots:
                break
            ask_px[k, lv] = (j + lo_tick) * tick
            ask_sz[k, lv] = ask[j]
            j = _scan_up(ask, j + 1)
        k += 1
        step_end += dt_ns
    return (bid_px, bid_sz, ask_px, ask_sz, buy_vol, sell_vol, trade_count,
            crossed_repairs, out_of_band)


def build_snapshots(events: np.ndarray, start_ns: int, dt_ns: int, n_steps: int, levels: int,
                    tick_size: float, price_lo: float, price_hi: float,
                    contract_size: float = 1.0, inverse: bool = False) -> dict[str, np.ndarray]:
    """Top-``levels`` book and trade flow at ``start_ns + k * dt_ns`` for ``k < n_steps``.

    Step ``k`` sees events with ``local_ts <= start_ns + k * dt_ns``; its trade flow covers
    ``(t_k - dt, t_k]`` in base units (contracts converted for inverse instruments). Prices are
    ``NaN`` and sizes 0 where a side has fewer levels. Book levels outside
    ``[price_lo, price_hi]`` are ignored (counted in ``out_of_band``).
    """
    lo_tick = int(np.floor(price_lo / tick_size))
    hi_tick = int(np.ceil(price_hi / tick_size))
    n_slots = max(hi_tick - lo_tick + 1, 1)
    out = _build(events["ev"].astype(np.uint64), events["local_ts"], events["px"], events["qty"],
                 np.int64(start_ns), np.int64(dt_ns), int(n_steps), int(levels),
                 float(tick_size), np.int64(lo_tick), np.int64(n_slots),
                 float(contract_size), bool(inverse))
    names = ("bid_px", "bid_sz", "ask_px", "ask_sz", "buy_vol", "sell_vol", "trade_count")
    result = dict(zip(names, out[:7]))
    result["crossed_repairs"] = np.int64(out[7])
    result["out_of_band"] = np.int64(out[8])
    return result
