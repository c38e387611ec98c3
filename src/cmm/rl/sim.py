"""Fill simulation on the grid for training (numba): hftbacktest's fill rules, applied per step.

The evaluation backtest (:mod:`cmm.backtest.engine`) replays every event through hftbacktest. To
train in minutes, the environment instead steps from one decision to the next on the grid and
applies the same rules to the steps in between, in this order for each step ``u``:

1. **Quotes**: at a decision the ladder (the same :func:`~cmm.strategy.ladder.ladder_kernel`)
   gives the wanted orders from the book at the decision step and the inventory; a resting
   order is kept (with its queue place) when its price is wanted and its size is within
   ``size_tolerance`` of the wanted size, as the replay's reconcile does; other orders are
   cancelled at once and new ones join the back of the queue: ahead of them is the book's size
   at their price (0 when the price improves on the best; unknown, so only trade-through fills,
   when it lies beyond the ``L`` levels the grid keeps).
2. **Trades** of step ``u`` in time order (``no_partial_fill`` exchange): a seller-initiated
   trade below a bid's price fills the bid; at its price it takes its quantity off the queue
   ahead, and once the queue ahead rounds below zero lots the whole order fills. Asks mirror it.
3. **Depth**: the change of the book's size at the order's price from step ``u-1`` to ``u``, less
   the traded quantity, moves the queue ahead as hftbacktest's ``ProbQueueModel`` does for the
   configured ``queue_model`` (``risk_adverse``: only ``front = min(front, size)``).
4. **Crossing**: a bid at or above step ``u``'s best ask (an ask at or below the best bid) fills.

Simplifications, for speed: order entry and cancel latencies are ignored (orders act from the
decision step on; cancelled orders cannot fill); depth changes are seen once per step rather
than per event, and only within the top ``L`` levels; trades use local timestamps; the
episode's close happens at its end step's touch with no wait for cancels (the replay walks the
visible book). Fills are whole orders at their own price with the maker fee, as in the replay's
accounting; fees are those of the replay's fee tier, a fraction of the value or (``fee_qty``)
currency per unit traded.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from cmm.backtest.engine import _amount, _equity  # the replay's own accounting formulas
from cmm.strategy.ladder import LP_CONTRACT, LP_INVERSE, LP_LOT, LP_TICK, ladder_kernel

__all__ = ["QUEUE_MODELS", "ACCT_POSITION", "ACCT_CASH", "ACCT_FEE", "ACCT_FILLS", "ACCT_VOLUME",
           "ACCT_SIZE", "new_orders", "step_kernel", "equity", "close_pnl"]

# Queue models (BacktestConfig.queue_model) -> kernel code.
QUEUE_MODELS = {"risk_adverse": 0, "power_prob": 1, "power_prob2": 2, "power_prob3": 3,
                "log_prob": 4, "log_prob2": 5}

# Account layout (quote currency for linear instruments, base for inverse).
ACCT_POSITION, ACCT_CASH, ACCT_FEE, ACCT_FILLS, ACCT_VOLUME = range(5)
ACCT_SIZE = 5

# Order layout: orders[side, level, field]; side 0 = bids, 1 = asks.
O_TICK, O_LOTS, O_FRONT, O_CUM, O_LIVE = range(5)
O_SIZE = 5

_UNKNOWN = -1.0


def new_orders(levels: int) -> np.ndarray:
    """Empty resting-order state for ``levels`` orders a side."""
    return np.zeros((2, levels, O_SIZE))


@njit(cache=True)
def _depth_at(side: int, tick: int, bt: np.ndarray, bs: np.ndarray, at: np.ndarray,
              az: np.ndarray) -> float:
    """Book size at ``tick`` on ``side`` from one step's top levels; 0 when the price is better
    than the best or falls between levels; -1 (unknown) beyond the last level kept."""
    L = bt.shape[0]
    if side == 0:
        if bt[0] <= 0 or tick > bt[0]:
            return 0.0
        for lv in range(L):
            if bt[lv] <= 0:
                return 0.0
            if bt[lv] == tick:
                return bs[lv]
            if bt[lv] < tick:
                return 0.0
        return _UNKNOWN
    if at[0] <= 0 or tick < at[0]:
        return 0.0
    for lv in range(L):
        if at[lv] <= 0:
            return 0.0
        if at[lv] == tick:
            return az[lv]
        if at[lv] > tick:
            return 0.0
    return _UNKNOWN


@njit(cache=True)
def _prob(kind: int, n: float, front: float, back: float) -> float:
    """hftbacktest's probability that a size decrease happened behind the order."""
    if kind == 1:
        fb, ff = back ** n, front ** n
        p = fb / (fb + ff) if fb + ff > 0 else math.nan
    elif kind == 2:
        d = (back + front) ** n
        p = back ** n / d if d > 0 else math.nan
    elif kind == 3:
        p = 1.0 - (front / (front + back)) ** n if front + back > 0 else math.nan
    elif kind == 4:
        fb, ff = math.log1p(back), math.log1p(front)
        p = fb / (fb + ff) if fb + ff > 0 else math.nan
    else:
        d = math.log1p(back + front)
        p = math.log1p(back) / d if d > 0 else math.nan
    if math.isnan(p) or math.isinf(p):
        return 1.0
    return p


@njit(cache=True)
def _fill(p: np.ndarray, maker_fee: float, fee_qty: bool, orders: np.ndarray, side: int, j: int,
          acct: np.ndarray) -> None:
    qty = orders[side, j, O_LOTS] * p[LP_LOT]
    px = orders[side, j, O_TICK] * p[LP_TICK]
    amount = _amount(p[LP_INVERSE] > 0.5, p[LP_CONTRACT], px, qty)
    sgn = 1.0 if side == 0 else -1.0
    acct[ACCT_POSITION] += sgn * qty
    acct[ACCT_CASH] -= sgn * amount
    acct[ACCT_FEE] += maker_fee * (qty if fee_qty else amount)
    acct[ACCT_FILLS] += 1.0
    acct[ACCT_VOLUME] += qty
    orders[side, j, O_LIVE] = 0.0


@njit(cache=True)
def _reconcile(bid_tick, bid_lots, ask_tick, ask_lots, orders, tol, bt, bs, at, az):
    """Replace the resting orders by the wanted ones, keeping queue places where the replay
    would keep the order (same price, remaining size within tolerance of the wanted size)."""
    K = orders.shape[1]
    new = np.zeros_like(orders)
    for side in range(2):
        want_tick = bid_tick if side == 0 else ask_tick
        want_lots = bid_lots if side == 0 else ask_lots
        used = np.zeros(K, np.bool_)
        for j in range(K):
            want = want_lots[j]
            if want <= 0:
                continue
            kept = -1
            for i in range(K):
                o = orders[side, i]
                if (not used[i] and o[O_LIVE] > 0.5 and int(o[O_TICK]) == want_tick[j]
                        and o[O_LOTS] <= want and o[O_LOTS] >= (1.0 - tol) * want - 1e-9):
                    kept = i
                    break
            if kept >= 0:
                used[kept] = True
                new[side, j, :] = orders[side, kept, :]
            else:
                new[side, j, O_TICK] = want_tick[j]
                new[side, j, O_LOTS] = want
                front = _depth_at(side, want_tick[j], bt, bs, at, az)
                new[side, j, O_FRONT] = front if front >= 0.0 else 1e300
                new[side, j, O_CUM] = 0.0
                new[side, j, O_LIVE] = 1.0
    orders[:, :, :] = new


@njit(cache=True)
def _advance(p, maker_fee, fee_qty, orders, acct, s, s2, bid_t, bid_s, ask_t, ask_s, tr_tick,
             tr_qty, tr_side, tr_lo, tr_hi, queue_kind, queue_n):
    """Steps s+1..s2: trades, depth changes and crossings against the resting orders."""
    K = orders.shape[1]
    lot = p[LP_LOT]
    for u in range(s + 1, s2 + 1):
        for k in range(tr_lo[u], tr_hi[u]):
            tt = tr_tick[k]
            side = 0 if tr_side[k] < 0 else 1  # a seller hits bids, a buyer hits asks
            for j in range(K):
                if orders[side, j, O_LIVE] < 0.5:
                    continue
                ot = int(orders[side, j, O_TICK])
                through = ot > tt if side == 0 else ot < tt
                if through:
                    _fill(p, maker_fee, fee_qty, orders, side, j, acct)
                elif ot == tt:
                    orders[side, j, O_FRONT] -= tr_qty[k]
                    orders[side, j, O_CUM] += tr_qty[k]
                    if round(orders[side, j, O_FRONT] / lot) < 0:
                        _fill(p, maker_fee, fee_qty, orders, side, j, acct)
        for side in range(2):
            for j in range(K):
                if orders[side, j, O_LIVE] < 0.5:
                    continue
                ot = int(orders[side, j, O_TICK])
                prev = _depth_at(side, ot, bid_t[u - 1], bid_s[u - 1], ask_t[u - 1], ask_s[u - 1])
                cur = _depth_at(side, ot, bid_t[u], bid_s[u], ask_t[u], ask_s[u])
                cum = orders[side, j, O_CUM]
                orders[side, j, O_CUM] = 0.0
                if prev < 0.0 or cur < 0.0:
                    continue
                front = orders[side, j, O_FRONT]
                chg = prev - cur - cum
                if queue_kind == 0 or chg < 0.0:
                    orders[side, j, O_FRONT] = min(front, cur)
                    continue
                back = prev - front
                pr = _prob(queue_kind, queue_n, front, back)
                est = front - (1.0 - pr) * chg + min(back - pr * chg, 0.0)
                orders[side, j, O_FRONT] = min(est, cur)
        bb, ba = bid_t[u, 0], ask_t[u, 0]
        for j in range(K):
            if orders[0, j, O_LIVE] > 0.5 and ba > 0 and orders[0, j, O_TICK] >= ba:
                _fill(p, maker_fee, fee_qty, orders, 0, j, acct)
            if orders[1, j, O_LIVE] > 0.5 and bb > 0 and orders[1, j, O_TICK] <= bb:
                _fill(p, maker_fee, fee_qty, orders, 1, j, acct)


@njit(cache=True)
def step_kernel(p, weights, mid_bps, spread_ticks, volume_log1p, skew_ticks, maker_fee, fee_qty,
                tol,
                queue_kind, queue_n, orders, acct, s, s2, bid_t, bid_s, ask_t, ask_s, tr_tick,
                tr_qty, tr_side, tr_lo, tr_hi):
    """One decision at step ``s``: quote through the ladder with the current inventory, then
    simulate steps ``s+1..s2``. Returns False when the book had no valid touch (no quotes)."""
    K = weights.shape[0]
    bid_tick = np.zeros(K, np.int64)
    ask_tick = np.zeros(K, np.int64)
    bid_lots = np.zeros(K)
    ask_lots = np.zeros(K)
    ok = ladder_kernel(p, weights, mid_bps, spread_ticks, volume_log1p, skew_ticks,
                       acct[ACCT_POSITION], bid_t[s, 0], ask_t[s, 0], bid_tick, bid_lots,
                       ask_tick, ask_lots)
    _reconcile(bid_tick, bid_lots, ask_tick, ask_lots, orders, tol, bid_t[s], bid_s[s],
               ask_t[s], ask_s[s])
    _advance(p, maker_fee, fee_qty, orders, acct, s, s2, bid_t, bid_s, ask_t, ask_s, tr_tick,
             tr_qty, tr_side, tr_lo, tr_hi, queue_kind, queue_n)
    return ok


def equity(p: np.ndarray, acct: np.ndarray, mid: float) -> float:
    """Account value marked at ``mid``, fees paid (the replay's ``equity`` column)."""
    return float(_equity(p[LP_INVERSE] > 0.5, p[LP_CONTRACT], acct[ACCT_CASH],
                         acct[ACCT_POSITION], acct[ACCT_FEE], mid))


def close_pnl(p: np.ndarray, acct: np.ndarray, best_bid: float, best_ask: float,
              taker_fee: float, fee_qty: bool = False) -> tuple[float, float]:
    """(PnL after closing the position at the touch with the taker fee, the closing fee), as
    the replay closes an episode whose position the touch absorbs (``fee_qty``: the fee is per
    unit traded, else a fraction of the value)."""
    q = acct[ACCT_POSITION]
    if abs(q) < 0.5 * p[LP_LOT]:
        q = 0.0
    px = best_bid if q > 0 else (best_ask if q < 0 else 0.5 * (best_bid + best_ask))
    inverse = p[LP_INVERSE] > 0.5
    fee = taker_fee * (abs(q) if fee_qty else float(_amount(inverse, p[LP_CONTRACT], px, abs(q))))
    pnl = float(_equity(inverse, p[LP_CONTRACT], acct[ACCT_CASH], q, acct[ACCT_FEE], px)) - fee
    return pnl, fee
