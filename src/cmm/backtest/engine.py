"""The replay loop on hftbacktest's numba API: one compiled kernel per process.

For one session's events and a schedule of decisions grouped into episodes, the kernel

1. elapses to each decision time (local clock: the policy sees every event stamped up to that
   time and nothing later), collects the fills since the last look and records the state (book
   touch, episode position, equity marked at the mid, cash, fees);
2. unless the policy is still busy with its previous decision (``skip_while_busy``), turns the
   policy's output into quotes (the ladder, or the policy's own quotes put on the grid) with the
   book and inventory it sees *now*, and reconciles them with its resting orders: an order whose
   price is still wanted and whose remaining size is within ``size_tolerance`` of the wanted size
   keeps its queue place, others are cancelled, missing levels are sent as post-only (GTX) limit
   orders. hftbacktest delivers each request (new or cancel) to the exchange after the constant
   entry latency, which the runner sets to venue latency + the policy's own latency;
3. at each episode's end, cancels everything, waits until no order is live (so every fill of the
   episode is known), then closes the episode's position *by computation*, walking the visible
   levels of the local book at that moment on the side that closes it (a long sells from the
   best bid down, a short buys from the best ask up; the last valid touch if the book is empty
   or crossed then), each level's quantity at its own price, for at most
   ``BacktestConfig.close_walk_ticks`` ticks. What the visible book cannot absorb there closes
   one tick beyond the deepest level walked (beyond the touch if none had quantity): never at a
   price the book showed, and counted as ``close_unfilled_qty``. The taker fee is paid on the
   whole close. ``close_px`` is the close's average price (the one price that gives its value:
   quantity-weighted for linear instruments, harmonic for inverse ones). The simulator is never
   sent the closing order; the next episode starts flat because its position, cash and fees
   are counted from that moment on (the simulator's position is an accounting offset, which
   hftbacktest does not constrain). Decision points that fall inside the close are recorded,
   not acted on.

Accounting is ours, from the orders' executed quantities (every order is a post-only maker,
filled at its price, charged the maker fee): hftbacktest 2.4.4's local state skips partial fills
(nkaz001/hftbacktest#299). A fill record merges the executions of one order between two looks.

Fees follow the replay's fee tier (:meth:`cmm.config.Instrument.fees`): basis ``value``, the
fee is a fraction of the settlement value (``contract_size * qty * px``, or
``contract_size * qty / px`` for inverse contracts); basis ``quantity``, currency per unit
traded (``fee * qty``: per share, per contract). Maker fee per fill, taker fee on the close.
Each episode carries ``gross_pnl`` (before every fee) and ``pnl`` = ``gross_pnl`` -
``maker_fee`` - ``close_fee`` (net at the replay's tier); fills do not depend on the fees, so
:func:`cmm.backtest.metrics.net_pnl_at` reprices a replay at another tier exactly.

Everything is float64 arrays so the kernel runs without Python objects; the column layouts are
the ``REC_*``, ``FILL_*``, ``EP_*`` and ``ORD_*`` constants below. Times in them are nanoseconds
since ``t0`` (the session's first event), exact in float64 for 104 days.
"""

from __future__ import annotations

import numpy as np
from hftbacktest import BacktestAsset, HashMapMarketDepthBacktest
from hftbacktest.order import (
    BUY,
    CANCELED,
    FILLED,
    GTX,
    LIMIT,
    NEW,
    NONE,
    PARTIALLY_FILLED,
)
from numba import njit

from cmm.config import BacktestConfig, Instrument
from cmm.strategy.ladder import (
    LP_CONTRACT,
    LP_INVERSE,
    LP_LOT,
    LP_TICK,
    clip_quotes_kernel,
    ladder_kernel,
    valid_touch,
)

# Per decision.
REC_TS, REC_MID, REC_BEST_BID, REC_BEST_ASK, REC_POSITION, REC_EQUITY, REC_CASH, REC_FEE, \
    REC_TRADES, REC_QUOTE_BID, REC_QUOTE_ASK, REC_ACTED, REC_EPISODE = range(13)
REC_SIZE = 13
REC_COLUMNS = ["ts_ns", "mid", "best_bid", "best_ask", "position", "equity", "cash", "fee",
               "fills", "quote_bid", "quote_ask", "acted", "episode"]
# acted: 1 = quoted, 0 = policy busy, -1 = decision time already passed (episode close overran)

# Per fill observed (partial fills of one order between two looks are merged).
FILL_TS, FILL_LOCAL_TS, FILL_SIDE, FILL_PX, FILL_QTY, FILL_EPISODE, FILL_ORDER = range(7)
FILL_SIZE = 7
FILL_COLUMNS = ["exch_ts_ns", "local_ts_ns", "side", "price", "qty", "episode", "order_id"]

# Per episode.
EP_START, EP_END, EP_CLOSE_TS, EP_CLOSE_PX, EP_CLOSE_QTY, EP_CLOSE_FEE, EP_PNL, EP_CASH, \
    EP_FEE, EP_TRADES, EP_VOLUME, EP_VALUE, EP_DECISIONS, EP_COMPLETE, EP_GROSS_PNL, \
    EP_CLOSE_VALUE, EP_CLOSE_UNFILLED, EP_CLOSE_LEVELS = range(18)
EP_SIZE = 18
EP_COLUMNS = ["start_ns", "end_ns", "close_ns", "close_px", "close_qty", "close_fee", "pnl",
              "cash", "maker_fee", "fills", "volume", "value", "decisions", "complete",
              "gross_pnl", "close_value", "close_unfilled_qty", "close_levels"]
# close_qty: the position closed (signed: > 0 a long, sold); close_value: its settlement value
# (> 0); close_unfilled_qty: the part the visible book could not absorb (>= 0); close_levels:
# the visible levels it took from; pnl = gross_pnl - maker_fee - close_fee.

# Per order id (row = id).
ORD_SUBMIT_TS, ORD_EXCH_TS, ORD_SIDE, ORD_PX, ORD_QTY, ORD_EPISODE, ORD_STATUS = range(7)
ORD_SIZE = 7
ORD_COLUMNS = ["submit_ns", "exch_ns", "side", "price", "qty", "episode", "first_status"]

# Our own account (hftbacktest 2.4.4's local state skips partial fills, nkaz001/hftbacktest#299).
ACCT_POSITION, ACCT_CASH, ACCT_FEE, ACCT_FILLS, ACCT_VOLUME, ACCT_VALUE = range(6)
ACCT_SIZE = 6

# Kernel status: 0 ok, 1 end of data, else hftbacktest's error code (10 order id exists, 11
# request in process, 12 order not found, 13 invalid request, 14 invalid order status, 15 end
# of data, 100 data error); ours: 1000 order buffer full.
STATUS_OK, STATUS_END_OF_DATA, STATUS_ORDER_CAPACITY = 0, 1, 1000


def check_replayable(events: np.ndarray, instrument: Instrument) -> None:
    """Refuse events whose prices or sizes hftbacktest's book cannot hold, naming the record.

    The kernel's own loops are bounded (decisions, the orders it holds, the episode close's
    100,000 polls), but hftbacktest's market depth keeps int64 tick indices and, when a best
    level goes, searches the next one tick by tick inside ``elapse`` (Rust, out of the kernel's
    reach): a price past int64 ticks (1e19 on a 0.1 tick) makes that search endless, one 1e9
    ticks away takes about a minute. The preparation step rejects such values when it reads the
    raw files; this guards every other way in (events built or edited by hand, another tick)."""
    from cmm.data.events import (MAX_PRICE_TICKS, DEPTH_CLEAR_EVENT, DEPTH_EVENT,
                                 DEPTH_SNAPSHOT_EVENT, EVENT_TYPE_MASK, TRADE_EVENT,
                                 range_checks)
    from cmm.errors import InputError

    if len(events) == 0:
        return
    kind = events["ev"] & EVENT_TYPE_MASK
    book = ((kind == DEPTH_EVENT) | (kind == DEPTH_SNAPSHOT_EVENT) | (kind == TRADE_EVENT)
            | (kind == DEPTH_CLEAR_EVENT))
    px, qty = events["px"], events["qty"]
    max_px = MAX_PRICE_TICKS * instrument.tick_size
    with np.errstate(invalid="ignore"):
        checks = [(book & ~(np.isfinite(px) & (px >= 0)), "px", "a finite price >= 0"),
                  (book & ~(np.isfinite(qty) & (qty >= 0)), "qty", "a finite size >= 0"),
                  (book & ~(px < max_px), "px",
                   f"a price < {max_px:.10g} (2**31 ticks of {instrument.tick_size:g})"),
                  *range_checks(events, instrument)]
    for bad, name, expected in checks:
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError("the replay's order book cannot hold this value (fix the data "
                             "or the instrument)", record=i, field=name, expected=expected,
                             got=float(events[name][i]))


def build_asset(events: np.ndarray, instrument: Instrument, config: BacktestConfig,
                policy_latency_ns: int) -> BacktestAsset:
    """One hftbacktest asset: the instrument's terms and fees (of ``config.fee_tier``; our
    kernel books its own, see the module docstring), the configured queue and exchange models,
    and order entry latency = venue latency + the policy's own latency. Events it cannot
    replay in bounded time raise :class:`InputError` (:func:`check_replayable`)."""
    check_replayable(events, instrument)
    fees = instrument.fees(config.fee_tier)
    asset = BacktestAsset().data([events])
    cs = instrument.contract_size
    asset = asset.inverse_asset(cs) if instrument.inverse else asset.linear_asset(cs)
    asset = asset.constant_order_latency(config.venue_entry_latency_ns + int(policy_latency_ns),
                                         config.venue_response_latency_ns)
    qm, n = config.queue_model, config.queue_power
    asset = {"risk_adverse": lambda a: a.risk_adverse_queue_model(),
             "power_prob": lambda a: a.power_prob_queue_model(n),
             "power_prob2": lambda a: a.power_prob_queue_model2(n),
             "power_prob3": lambda a: a.power_prob_queue_model3(n),
             "log_prob": lambda a: a.log_prob_queue_model(),
             "log_prob2": lambda a: a.log_prob_queue_model2()}[qm](asset)
    asset = asset.partial_fill_exchange() if config.exchange == "partial_fill" \
        else asset.no_partial_fill_exchange()
    asset = (asset.trading_qty_fee_model(fees.maker_fee, fees.taker_fee)
             if fees.basis == "quantity"
             else asset.trading_value_fee_model(fees.maker_fee, fees.taker_fee))
    return asset.tick_size(instrument.tick_size).lot_size(instrument.lot_size) \
        .last_trades_capacity(0)


def build_backtest(events: np.ndarray, instrument: Instrument, config: BacktestConfig,
                   policy_latency_ns: int):
    return HashMapMarketDepthBacktest([build_asset(events, instrument, config, policy_latency_ns)])


@njit
def _equity(inverse: bool, cs: float, cash: float, q: float, fee: float, px: float) -> float:
    if inverse:
        return -cash - cs * q / px - fee
    return cash + cs * q * px - fee


@njit
def _amount(inverse: bool, cs: float, px: float, qty: float) -> float:
    if inverse:
        return cs * qty / px
    return cs * px * qty


@njit
def _order_ids(orders) -> np.ndarray:
    """The ids of the orders in hftbacktest's order map, ascending. The map iterates in the
    order of a Rust HashMap, which is seeded afresh in every process: walked in that order,
    identical runs would book one look's fills in different orders (cash and fees differing
    in the last bits) and could keep a different one of two equal resting orders."""
    ids = np.empty(len(orders), np.int64)
    m = 0
    vals = orders.values()
    while vals.has_next():
        if m < ids.shape[0]:
            ids[m] = np.int64(vals.get().order_id)
        m += 1
    return np.sort(ids[:min(m, ids.shape[0])])


@njit
def _collect(hbt, t0, p, maker_fee, fee_qty, acct, filled, ords, fills, nf, ep):
    """Record fills since the last look (per order: cumulative executed qty), book them in
    ``acct`` (``fee_qty``: the maker fee is per unit, else a fraction of the value), note each
    order's first exchange response, then drop inactive orders from the local order book."""
    lot, cs = p[LP_LOT], p[LP_CONTRACT]
    inverse = p[LP_INVERSE] > 0.5
    now = hbt.current_timestamp
    orders = hbt.orders(0)
    ids = _order_ids(orders)
    for k in range(ids.shape[0]):
        o = orders.get(np.uint64(ids[k]))
        if o is None:
            continue
        oid = o.order_id
        if oid >= filled.shape[0]:
            continue
        if np.isnan(ords[oid, ORD_EXCH_TS]) and o.req == NONE:
            ords[oid, ORD_EXCH_TS] = o.exch_timestamp - t0
            ords[oid, ORD_STATUS] = o.status
        done = o.qty if o.status == FILLED else o.qty - o.leaves_qty
        delta = done - filled[oid]
        if delta > 0.5 * lot:
            px = o.price_tick * p[LP_TICK]  # post-only orders fill as makers, at their price
            amount = _amount(inverse, cs, px, delta)
            acct[ACCT_POSITION] += o.side * delta
            acct[ACCT_CASH] -= o.side * amount
            acct[ACCT_FEE] += maker_fee * (delta if fee_qty else amount)
            acct[ACCT_FILLS] += 1
            acct[ACCT_VOLUME] += delta
            acct[ACCT_VALUE] += amount
            if nf < fills.shape[0]:
                fills[nf, FILL_TS] = o.exch_timestamp - t0
                fills[nf, FILL_LOCAL_TS] = now - t0
                fills[nf, FILL_SIDE] = o.side
                fills[nf, FILL_PX] = px
                fills[nf, FILL_QTY] = delta
                fills[nf, FILL_EPISODE] = ep
                fills[nf, FILL_ORDER] = oid
            nf += 1
            filled[oid] = done
    hbt.clear_inactive_orders(0)
    return nf


@njit
def _reconcile(hbt, t0, bid_tick, bid_lots, ask_tick, ask_lots, bid_kept, ask_kept, lot, tick,
               size_tol, next_oid, ords, ep):
    """Keep, cancel or send orders so that the resting set matches the wanted ladder."""
    K = bid_tick.shape[0]
    for j in range(K):
        bid_kept[j] = False
        ask_kept[j] = False
    orders = hbt.orders(0)
    ids = _order_ids(orders)
    for k in range(ids.shape[0]):
        o = orders.get(np.uint64(ids[k]))
        if o is None or o.req == CANCELED:
            continue
        active = o.status == NEW or o.status == PARTIALLY_FILLED
        if not active and o.req != NEW:
            continue
        leaves = round(o.leaves_qty / lot)
        keep = False
        if o.side == BUY:
            for j in range(K):
                want = bid_lots[j]
                if (not bid_kept[j] and want > 0 and bid_tick[j] == o.price_tick
                        and leaves <= want and leaves >= (1.0 - size_tol) * want - 1e-9):
                    bid_kept[j] = True
                    keep = True
                    break
        else:
            for j in range(K):
                want = ask_lots[j]
                if (not ask_kept[j] and want > 0 and ask_tick[j] == o.price_tick
                        and leaves <= want and leaves >= (1.0 - size_tol) * want - 1e-9):
                    ask_kept[j] = True
                    keep = True
                    break
        if not keep and active and o.req == NONE:
            hbt.cancel(0, o.order_id, False)
    now = hbt.current_timestamp
    cap = ords.shape[0]
    for j in range(K):
        if not bid_kept[j] and bid_lots[j] > 0 and next_oid < cap:
            px = bid_tick[j] * tick
            qty = bid_lots[j] * lot
            hbt.submit_buy_order(0, next_oid, px, qty, GTX, LIMIT, False)
            ords[next_oid, ORD_SUBMIT_TS] = now - t0
            ords[next_oid, ORD_SIDE] = 1.0
            ords[next_oid, ORD_PX] = px
            ords[next_oid, ORD_QTY] = qty
            ords[next_oid, ORD_EPISODE] = ep
            next_oid += 1
        if not ask_kept[j] and ask_lots[j] > 0 and next_oid < cap:
            px = ask_tick[j] * tick
            qty = ask_lots[j] * lot
            hbt.submit_sell_order(0, next_oid, px, qty, GTX, LIMIT, False)
            ords[next_oid, ORD_SUBMIT_TS] = now - t0
            ords[next_oid, ORD_SIDE] = -1.0
            ords[next_oid, ORD_PX] = px
            ords[next_oid, ORD_QTY] = qty
            ords[next_oid, ORD_EPISODE] = ep
            next_oid += 1
    return next_oid


@njit
def _walk_close(depth, q, start_tick, tick, cs, inverse, max_ticks, out):
    """Close ``q`` (> 0 sells into the bids, < 0 buys from the asks) on the visible levels from
    ``start_tick`` away from the touch, at most ``max_ticks`` ticks; the rest one tick beyond
    the deepest level taken from. ``out`` = (value, unfilled qty, levels, average price)."""
    remaining = abs(q)
    step = -1 if q > 0 else 1
    value = 0.0
    levels = 0
    last = start_tick
    one_px = True  # all of it at one price: the average is that price, exactly
    for k in range(max_ticks):
        if remaining <= 0.0:
            break
        t = start_tick + step * k
        if t < 1:
            break
        avail = depth.bid_qty_at_tick(t) if q > 0 else depth.ask_qty_at_tick(t)
        if avail > 0.0:
            # within rounding of the rest (sizes summed in float): all of it, no residue
            take = remaining if avail >= remaining * (1.0 - 1e-12) else avail
            value += _amount(inverse, cs, t * tick, take)
            remaining = 0.0 if take == remaining else remaining - take
            levels += 1
            last = t
    unfilled = remaining
    px = last * tick
    if levels > 1:
        one_px = False
    if unfilled > 0.0:
        worst = max(last + step, 1)
        value += _amount(inverse, cs, worst * tick, unfilled)
        if levels > 0:
            one_px = False
        px = worst * tick
    if not one_px:
        px = cs * abs(q) / value if inverse else value / (cs * abs(q))
    out[0] = value
    out[1] = unfilled
    out[2] = levels
    out[3] = px


@njit
def _close_episode(hbt, t0, p, maker_fee, taker_fee, fee_qty, walk_ticks, acct, ep, ep_end,
                   poll_ns, base, last_bb, last_ba, filled, ords, fills, nf, eps):
    """Cancel all, wait until nothing is live, then close the position on the visible book
    (computed, :func:`_walk_close`)."""
    tick, lot, cs = p[LP_TICK], p[LP_LOT], p[LP_CONTRACT]
    inverse = p[LP_INVERSE] > 0.5
    code = 0
    now = hbt.current_timestamp
    if ep_end > now:
        code = hbt.elapse(ep_end - now)
    nf = _collect(hbt, t0, p, maker_fee, fee_qty, acct, filled, ords, fills, nf, ep)
    for _ in range(100_000):
        live = False
        vals = hbt.orders(0).values()
        while vals.has_next():
            o = vals.get()
            active = o.status == NEW or o.status == PARTIALLY_FILLED
            if active or o.req != NONE:
                live = True
                if active and o.req == NONE:
                    hbt.cancel(0, o.order_id, False)
        if not live or code != 0:
            break
        code = hbt.elapse(poll_ns)
        nf = _collect(hbt, t0, p, maker_fee, fee_qty, acct, filled, ords, fills, nf, ep)

    depth = hbt.depth(0)
    bb, ba = depth.best_bid_tick, depth.best_ask_tick
    if not valid_touch(bb, ba):
        bb, ba = last_bb, last_ba
    q = acct[ACCT_POSITION] - base[ACCT_POSITION]
    cash = acct[ACCT_CASH] - base[ACCT_CASH]
    fee = acct[ACCT_FEE] - base[ACCT_FEE]
    if abs(q) < 0.5 * lot:
        q = 0.0
    walk = np.zeros(4)
    if q != 0.0:
        _walk_close(depth, q, bb if q > 0 else ba, tick, cs, inverse, walk_ticks, walk)
        px = walk[3]
    else:
        px = 0.5 * (bb + ba) * tick
    value = walk[0]
    close_fee = taker_fee * (abs(q) if fee_qty else value)
    cash_after = cash + value if q > 0 else cash - value  # a long sells, a short buys
    gross = -cash_after if inverse else cash_after
    eps[ep, EP_END] = ep_end - t0
    eps[ep, EP_CLOSE_TS] = hbt.current_timestamp - t0
    eps[ep, EP_CLOSE_PX] = px
    eps[ep, EP_CLOSE_QTY] = q
    eps[ep, EP_CLOSE_FEE] = close_fee
    eps[ep, EP_PNL] = gross - fee - close_fee
    eps[ep, EP_GROSS_PNL] = gross
    eps[ep, EP_CLOSE_VALUE] = value
    eps[ep, EP_CLOSE_UNFILLED] = walk[1]
    eps[ep, EP_CLOSE_LEVELS] = walk[2]
    eps[ep, EP_CASH] = cash
    eps[ep, EP_FEE] = fee
    eps[ep, EP_TRADES] = acct[ACCT_FILLS] - base[ACCT_FILLS]
    eps[ep, EP_VOLUME] = acct[ACCT_VOLUME] - base[ACCT_VOLUME]
    eps[ep, EP_VALUE] = acct[ACCT_VALUE] - base[ACCT_VALUE]
    eps[ep, EP_COMPLETE] = 0.0 if code != 0 and hbt.current_timestamp < ep_end else 1.0
    return nf, code


@njit
def replay_kernel(hbt, t0, dec_ts, dec_ep, ep_end, mode, sig, qb_px, qb_qty, qa_px, qa_qty,
                  p, weights, policy_latency, skip_busy, size_tol, poll_ns, maker_fee, taker_fee,
                  fee_qty, walk_ticks, rec, fills, eps, ords):
    """Replay one session. ``mode`` 0: ``sig`` (N, 4) predictions through the ladder; 1: the
    policy's own quotes ``q*_px/q*_qty`` (N, K). Fees: ``fee_qty`` per unit, else fractions of
    value; ``walk_ticks``: the close's bound. Returns (fills seen, orders sent, status)."""
    tick, lot, cs = p[LP_TICK], p[LP_LOT], p[LP_CONTRACT]
    inverse = p[LP_INVERSE] > 0.5
    K = weights.shape[0] if mode == 0 else qb_px.shape[1]
    bid_tick = np.zeros(K, np.int64)
    ask_tick = np.zeros(K, np.int64)
    bid_lots = np.zeros(K)
    ask_lots = np.zeros(K)
    bid_kept = np.zeros(K, np.bool_)
    ask_kept = np.zeros(K, np.bool_)
    filled = np.zeros(ords.shape[0])
    acct = np.zeros(ACCT_SIZE)
    base = np.zeros(ACCT_SIZE)
    nf = 0
    next_oid = 1
    ep = -1
    busy_until = np.int64(-1)
    last_bb = np.int64(0)
    last_ba = np.int64(0)
    status = STATUS_OK
    hbt.elapse(0)  # the clock starts at the first event (it reads int64 max before)
    N = dec_ts.shape[0]
    for i in range(N):
        e = dec_ep[i]
        if e != ep:
            if ep >= 0:
                nf, code = _close_episode(hbt, t0, p, maker_fee, taker_fee, fee_qty, walk_ticks,
                                          acct, ep, ep_end[ep], poll_ns, base, last_bb, last_ba,
                                          filled, ords, fills, nf, eps)
                if code != 0:
                    status = code
                    ep = -1
                    break
            ep = e
            now = hbt.current_timestamp
            if dec_ts[i] > now:
                code = hbt.elapse(dec_ts[i] - now)
                if code != 0:
                    status = code
                    ep = -1
                    break
            nf = _collect(hbt, t0, p, maker_fee, fee_qty, acct, filled, ords, fills, nf, ep)
            base[:] = acct
            eps[ep, EP_START] = hbt.current_timestamp - t0
        else:
            now = hbt.current_timestamp
            if dec_ts[i] > now:
                code = hbt.elapse(dec_ts[i] - now)
                if code != 0:
                    status = code
                    break
            nf = _collect(hbt, t0, p, maker_fee, fee_qty, acct, filled, ords, fills, nf, ep)

        now = hbt.current_timestamp
        depth = hbt.depth(0)
        bb, ba = depth.best_bid_tick, depth.best_ask_tick
        ok_book = valid_touch(bb, ba)
        if ok_book:
            last_bb, last_ba = bb, ba
        q = acct[ACCT_POSITION] - base[ACCT_POSITION]
        cash = acct[ACCT_CASH] - base[ACCT_CASH]
        fee = acct[ACCT_FEE] - base[ACCT_FEE]
        mid = 0.5 * (bb + ba) * tick if ok_book else np.nan
        rec[i, REC_TS] = now - t0
        rec[i, REC_MID] = mid
        rec[i, REC_BEST_BID] = bb * tick if ok_book else np.nan
        rec[i, REC_BEST_ASK] = ba * tick if ok_book else np.nan
        rec[i, REC_POSITION] = q
        rec[i, REC_EQUITY] = _equity(inverse, cs, cash, q, fee, mid) if ok_book else np.nan
        rec[i, REC_CASH] = cash
        rec[i, REC_FEE] = fee
        rec[i, REC_TRADES] = acct[ACCT_FILLS] - base[ACCT_FILLS]
        rec[i, REC_EPISODE] = ep
        rec[i, REC_QUOTE_BID] = np.nan
        rec[i, REC_QUOTE_ASK] = np.nan
        eps[ep, EP_DECISIONS] += 1

        if now > dec_ts[i]:
            rec[i, REC_ACTED] = -1.0
            continue
        if skip_busy and dec_ts[i] < busy_until:
            rec[i, REC_ACTED] = 0.0
            continue
        if mode == 0:
            ladder_kernel(p, weights, sig[i, 0], sig[i, 1], sig[i, 2], sig[i, 3], q, bb, ba,
                          bid_tick, bid_lots, ask_tick, ask_lots)
        else:
            clip_quotes_kernel(p, q, bb, ba, qb_px[i], qb_qty[i], qa_px[i], qa_qty[i],
                               bid_tick, bid_lots, ask_tick, ask_lots)
        next_oid = _reconcile(hbt, t0, bid_tick, bid_lots, ask_tick, ask_lots, bid_kept, ask_kept,
                              lot, tick, size_tol, next_oid, ords, ep)
        if next_oid >= ords.shape[0]:
            status = STATUS_ORDER_CAPACITY
        busy_until = dec_ts[i] + policy_latency
        rec[i, REC_ACTED] = 1.0
        for j in range(K):
            if bid_lots[j] > 0:
                rec[i, REC_QUOTE_BID] = bid_tick[j] * tick
                break
        for j in range(K):
            if ask_lots[j] > 0:
                rec[i, REC_QUOTE_ASK] = ask_tick[j] * tick
                break

    if ep >= 0:
        nf, code = _close_episode(hbt, t0, p, maker_fee, taker_fee, fee_qty, walk_ticks, acct, ep,
                                  ep_end[ep], poll_ns, base, last_bb, last_ba, filled, ords,
                                  fills, nf, eps)
        if code != 0 and status == STATUS_OK:
            status = code
    return nf, next_oid, status


@njit
def bare_loop(hbt, dec_ts, half_spread_ticks, qty):
    """Reference loop for the benchmark: at each decision, cancel, then post one bid and one ask
    ``half_spread_ticks`` around the mid (the pattern of hftbacktest's tutorials)."""
    oid = 1
    hbt.elapse(0)
    for i in range(dec_ts.shape[0]):
        now = hbt.current_timestamp
        if dec_ts[i] > now and hbt.elapse(dec_ts[i] - now) != 0:
            break
        hbt.clear_inactive_orders(0)
        vals = hbt.orders(0).values()
        while vals.has_next():
            o = vals.get()
            if o.cancellable:
                hbt.cancel(0, o.order_id, False)
        depth = hbt.depth(0)
        bb, ba = depth.best_bid_tick, depth.best_ask_tick
        if not valid_touch(bb, ba):
            continue
        tick = depth.tick_size
        mid_tick = 0.5 * (bb + ba)
        bid = min(np.floor(mid_tick - half_spread_ticks), float(ba - 1)) * tick
        ask = max(np.ceil(mid_tick + half_spread_ticks), float(bb + 1)) * tick
        hbt.submit_buy_order(0, oid, bid, qty, GTX, LIMIT, False)
        hbt.submit_sell_order(0, oid + 1, ask, qty, GTX, LIMIT, False)
        oid += 2
    return oid


_COMPILED = False


def ensure_compiled() -> None:
    """Compile :func:`replay_kernel` (tens of seconds, once per process) on a two-level book, so
    that the wall time of a real replay measures the replay alone. numba cannot cache it on disk:
    hftbacktest's objects are ctypes pointers."""
    global _COMPILED
    if _COMPILED:
        return
    from hftbacktest.types import (BUY_EVENT, DEPTH_EVENT, EXCH_EVENT, LOCAL_EVENT, SELL_EVENT,
                                   TRADE_EVENT, event_dtype)

    from cmm.strategy.ladder import ladder_params, trapezoid_weights
    from cmm.config import LadderConfig

    ev = np.zeros(4, event_dtype)
    flags = EXCH_EVENT | LOCAL_EVENT
    ev["ev"] = [DEPTH_EVENT | BUY_EVENT | flags, DEPTH_EVENT | SELL_EVENT | flags,
                TRADE_EVENT | SELL_EVENT | flags, DEPTH_EVENT | BUY_EVENT | flags]
    ev["exch_ts"] = ev["local_ts"] = [1_000_000, 1_000_000, 150_000_000, 900_000_000]
    ev["px"] = [99.9, 100.2, 99.9, 99.9]
    ev["qty"] = [1.0, 1.0, 0.5, 1.0]
    inst = Instrument(tick_size=0.1, lot_size=0.001)
    ladder = LadderConfig(levels=1)
    hbt = build_backtest(ev, inst, BacktestConfig(), 0)
    n = 2
    try:
        replay_kernel(hbt, np.int64(0), np.array([100_000_000, 200_000_000], np.int64),
                      np.zeros(n, np.int64), np.array([500_000_000], np.int64), 0,
                      np.zeros((n, 4)), np.zeros((n, 1)), np.zeros((n, 1)), np.zeros((n, 1)),
                      np.zeros((n, 1)), ladder_params(ladder, inst), trapezoid_weights(1, 1, 1),
                      np.int64(0), True, 0.5, np.int64(1_000_000), 0.0, 0.0, False,
                      np.int64(100), np.full((n, REC_SIZE), np.nan), np.zeros((64, FILL_SIZE)),
                      np.zeros((1, EP_SIZE)), np.full((8, ORD_SIZE), np.nan))
    finally:
        hbt.close()
    _COMPILED = True
