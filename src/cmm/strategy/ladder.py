"""The trapezoidal quote ladder (method.md, "Trapezoidal quote ladder").

From a predicted mid ``m``, spread ``s`` and volume ``v``, the inventory ``q`` and the limit ``Q``:

- reservation price ``r = m - k_q * (q / Q) * tick``: ``k_q`` is the skew in ticks at the limit;
- ``K`` levels a side, ``step`` ticks apart: bid ``j`` at
  ``floor((r - max(s/2, tick)) / tick) * tick - j * step * tick``, asks mirrored with ``ceil``;
- post-only: a side that would cross the current book is shifted back whole (its spacing kept),
  so bids stay <= best ask - 1 tick and asks >= best bid + 1 tick;
- sizes: the side total is ``participation * expm1(v) * lot`` (``v`` is ``log1p`` of the volume
  over the horizon in lots, the volume target's unit), clipped to ``[min_side_notional, max_side_notional]``, scaled by
  ``1 - |q|/Q`` on the side that would grow ``|q|`` (zero at ``|q| >= Q``), and capped so that even
  if every order of a side fills, ``|q|`` stays <= ``Q``; it is spread over the levels by trapezoid
  weights (rising over ``ramp_up_levels``, flat, falling over ``ramp_down_levels``) and floored to
  whole lots.

Notionals are in the quote currency: ``qty = notional / (contract_size * mid)`` for linear
instruments, ``notional / contract_size`` contracts for inverse ones. Prices come out as integer
ticks and sizes as integer lots, so they are on the grid by construction.

The kernel :func:`ladder_kernel` is numba-compiled and called inside the replay loop;
:func:`quote_ladder` is the Python entry point (tests, plots, notebooks).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numba import njit

from cmm.config import Instrument, LadderConfig

# Layout of the float64 parameter vector that the numba kernels take (see ladder_params).
LP_LEVELS = 0
LP_STEP = 1
LP_MIN_HALF = 2
LP_SPREAD_SCALE = 3
LP_SKEW = 4
LP_PARTICIPATION = 5
LP_MIN_SIDE = 6
LP_MAX_SIDE = 7
LP_LIMIT = 8
LP_TICK = 9
LP_LOT = 10
LP_CONTRACT = 11
LP_INVERSE = 12
LP_SIZE = 13

_EPS = 1e-9
_TICK_MAX = 1 << 62


def trapezoid_weights(levels: int, ramp_up: int, ramp_down: int) -> np.ndarray:
    """Weights of the ``levels`` orders of a side, summing to 1: rising linearly over the first
    ``ramp_up`` levels, flat, then falling over the last ``ramp_down``.

    ``w_j = min(1, (j + 1) / (ramp_up + 1), (levels - j) / (ramp_down + 1))``; e.g. 5 levels with
    ramps of 1 give ``[0.5, 1, 1, 1, 0.5] / 4``.
    """
    j = np.arange(levels, dtype=np.float64)
    w = np.minimum(1.0, np.minimum((j + 1) / (ramp_up + 1), (levels - j) / (ramp_down + 1)))
    return w / w.sum()


def ladder_params(config: LadderConfig, instrument: Instrument) -> np.ndarray:
    """Pack the settings and the contract terms into the kernels' parameter vector."""
    p = np.zeros(LP_SIZE, np.float64)
    p[LP_LEVELS] = config.levels
    p[LP_STEP] = config.level_step_ticks
    p[LP_MIN_HALF] = config.min_half_spread_ticks
    p[LP_SPREAD_SCALE] = config.spread_scale
    p[LP_SKEW] = config.inventory_skew_ticks
    p[LP_PARTICIPATION] = config.participation
    sizing = config.sizing(instrument)
    p[LP_MIN_SIDE] = sizing.min_side_notional
    p[LP_MAX_SIDE] = sizing.max_side_notional
    p[LP_LIMIT] = sizing.position_limit_notional
    p[LP_TICK] = instrument.tick_size
    p[LP_LOT] = instrument.lot_size
    p[LP_CONTRACT] = instrument.contract_size
    p[LP_INVERSE] = 1.0 if instrument.inverse else 0.0
    return p


@njit(cache=True)
def valid_touch(best_bid_tick: int, best_ask_tick: int) -> bool:
    """Both sides present (hftbacktest reports an empty side as INVALID_MIN / INVALID_MAX) and
    the book not crossed."""
    return 0 < best_bid_tick < best_ask_tick < _TICK_MAX


@njit(cache=True)
def qty_per_notional(p: np.ndarray, mid: float) -> float:
    """Order quantity (base units or contracts) worth one unit of quote currency at ``mid``."""
    if p[LP_INVERSE] > 0.5:
        return 1.0 / p[LP_CONTRACT]
    return 1.0 / (p[LP_CONTRACT] * mid)


@njit(cache=True)
def _side_lots(total: float, weights: np.ndarray, lot: float, out: np.ndarray) -> None:
    for j in range(weights.shape[0]):
        x = total * weights[j] / lot
        out[j] = math.floor(x + _EPS) if x > 0.0 else 0.0


@njit(cache=True)
def _clear_orders(bid_tick: np.ndarray, bid_lots: np.ndarray, ask_tick: np.ndarray,
                  ask_lots: np.ndarray) -> None:
    """No orders: zero prices and sizes on both sides (a kernel's output before it quotes)."""
    bid_tick[:] = 0
    bid_lots[:] = 0.0
    ask_tick[:] = 0
    ask_lots[:] = 0.0


@njit(cache=True)
def ladder_kernel(p: np.ndarray, weights: np.ndarray, mid_bps: float, spread_ticks: float,
                  volume_log1p: float, skew_ticks: float, q: float,
                  best_bid_tick: int, best_ask_tick: int,
                  bid_tick: np.ndarray, bid_lots: np.ndarray,
                  ask_tick: np.ndarray, ask_lots: np.ndarray) -> bool:
    """Fill the (K,) output arrays with the ladder; prices in ticks, sizes in lots (0 = none).

    ``mid_bps``: predicted mid return over the horizon, applied to the current book mid;
    ``skew_ticks``: ``k_q`` for this decision (NaN: the setting). Returns False (and zero sizes)
    when the book has no valid, uncrossed touch.
    """
    K = bid_tick.shape[0]
    _clear_orders(bid_tick, bid_lots, ask_tick, ask_lots)
    if not valid_touch(best_bid_tick, best_ask_tick):
        return False
    tick = p[LP_TICK]
    lot = p[LP_LOT]
    mid_now = 0.5 * (best_bid_tick + best_ask_tick) * tick
    m = mid_now * (1.0 + (mid_bps if not math.isnan(mid_bps) else 0.0) * 1e-4)

    qpn = qty_per_notional(p, mid_now)
    Q = p[LP_LIMIT] * qpn
    qn = q / Q
    kq = p[LP_SKEW] if math.isnan(skew_ticks) else skew_ticks
    r = m - kq * qn * tick
    s = spread_ticks * p[LP_SPREAD_SCALE] * tick if not math.isnan(spread_ticks) else 0.0
    half = max(0.5 * s, p[LP_MIN_HALF] * tick)

    step = int(p[LP_STEP])
    b0 = int(math.floor((r - half) / tick + _EPS))
    a0 = int(math.ceil((r + half) / tick - _EPS))
    if b0 > best_ask_tick - 1:  # post-only: shift the whole side back behind the touch
        b0 = best_ask_tick - 1
    if a0 < best_bid_tick + 1:
        a0 = best_bid_tick + 1

    # the volume signal is log1p of lots (the target's unit): back to base units
    v = math.expm1(volume_log1p) * lot if not math.isnan(volume_log1p) else 0.0
    total = p[LP_PARTICIPATION] * max(v, 0.0)
    total = min(max(total, p[LP_MIN_SIDE] * qpn), p[LP_MAX_SIDE] * qpn)
    bid_total = total
    ask_total = total
    if qn > 0.0:
        bid_total *= max(0.0, 1.0 - qn)
    elif qn < 0.0:
        ask_total *= max(0.0, 1.0 + qn)
    bid_total = min(bid_total, max(0.0, Q - q))  # a fully filled side keeps |q| <= Q
    ask_total = min(ask_total, max(0.0, Q + q))

    _side_lots(bid_total, weights, lot, bid_lots)
    _side_lots(ask_total, weights, lot, ask_lots)
    for j in range(K):
        bid_tick[j] = b0 - j * step
        ask_tick[j] = a0 + j * step
        if bid_tick[j] <= 0:
            bid_lots[j] = 0.0
    return True


@njit(cache=True)
def clip_quotes_kernel(p: np.ndarray, q: float, best_bid_tick: int, best_ask_tick: int,
                       bid_px: np.ndarray, bid_qty: np.ndarray,
                       ask_px: np.ndarray, ask_qty: np.ndarray,
                       bid_tick: np.ndarray, bid_lots: np.ndarray,
                       ask_tick: np.ndarray, ask_lots: np.ndarray) -> bool:
    """Put a policy's own quotes (prices and base quantities, NaN = none) on the grid: bids
    floored and asks ceiled to ticks, post-only shift as in :func:`ladder_kernel`, sizes floored
    to lots and scaled down per side so that ``|q|`` stays within the limit."""
    K = bid_tick.shape[0]
    _clear_orders(bid_tick, bid_lots, ask_tick, ask_lots)
    if not valid_touch(best_bid_tick, best_ask_tick):
        return False
    tick = p[LP_TICK]
    lot = p[LP_LOT]
    mid_now = 0.5 * (best_bid_tick + best_ask_tick) * tick
    Q = p[LP_LIMIT] * qty_per_notional(p, mid_now)
    bshift = 0
    ashift = 0
    bsum = 0.0
    asum = 0.0
    for j in range(K):
        if not math.isnan(bid_px[j]) and bid_qty[j] > 0.0:
            bid_tick[j] = int(math.floor(bid_px[j] / tick + _EPS))
            bid_lots[j] = math.floor(bid_qty[j] / lot + _EPS)
            bshift = max(bshift, bid_tick[j] - (best_ask_tick - 1))
            bsum += bid_lots[j] * lot
        if not math.isnan(ask_px[j]) and ask_qty[j] > 0.0:
            ask_tick[j] = int(math.ceil(ask_px[j] / tick - _EPS))
            ask_lots[j] = math.floor(ask_qty[j] / lot + _EPS)
            ashift = max(ashift, (best_bid_tick + 1) - ask_tick[j])
            asum += ask_lots[j] * lot
    bcap = max(0.0, Q - q)
    acap = max(0.0, Q + q)
    bscale = 1.0 if bsum <= bcap else bcap / bsum
    ascale = 1.0 if asum <= acap else acap / asum
    for j in range(K):
        bid_tick[j] -= bshift
        ask_tick[j] += ashift
        if bscale < 1.0:
            bid_lots[j] = math.floor(bid_lots[j] * bscale + _EPS)
        if ascale < 1.0:
            ask_lots[j] = math.floor(ask_lots[j] * ascale + _EPS)
        if bid_tick[j] <= 0:
            bid_lots[j] = 0.0
    return True


@dataclass(frozen=True)
class LadderQuotes:
    """One decision's quotes: (K,) prices and quantities per side (quantity 0 = no order)."""

    bid_px: np.ndarray
    bid_qty: np.ndarray
    ask_px: np.ndarray
    ask_qty: np.ndarray
    bid_ticks: np.ndarray
    bid_lots: np.ndarray
    ask_ticks: np.ndarray
    ask_lots: np.ndarray


def quote_ladder(config: LadderConfig, instrument: Instrument, *, best_bid: float,
                 best_ask: float, mid_bps: float, spread_ticks: float, volume_log1p: float,
                 position: float = 0.0, skew_ticks: float = math.nan) -> LadderQuotes:
    """The ladder for one decision, from the current touch (prices) and the predictions."""
    tick = instrument.tick_size
    bb = int(round(best_bid / tick))
    ba = int(round(best_ask / tick))
    K = config.levels
    bt, at = np.zeros(K, np.int64), np.zeros(K, np.int64)
    bl, al = np.zeros(K), np.zeros(K)
    ladder_kernel(ladder_params(config, instrument),
                  trapezoid_weights(K, config.ramp_up_levels, config.ramp_down_levels),
                  float(mid_bps), float(spread_ticks), float(volume_log1p), float(skew_ticks),
                  float(position), bb, ba, bt, bl, at, al)
    lot = instrument.lot_size
    return LadderQuotes(bid_px=bt * tick, bid_qty=bl * lot, ask_px=at * tick, ask_qty=al * lot,
                        bid_ticks=bt, bid_lots=bl, ask_ticks=at, ask_lots=al)
