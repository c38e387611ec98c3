"""Format C: Bitstamp order-level websocket log, aggregated to price levels.

Each line is ``<epoch ms> <event> <json>`` with events

* ``order_created`` / ``order_changed`` / ``order_deleted``: one order, JSON ``{"id", "price",
  "amount", "order_type" (0 bid, 1 ask), "datetime"}``; prices and amounts are strings. The
  amount is the order's *remaining* amount (0 on a deletion that completes a fill). ``datetime``
  is the order's creation time in seconds, not the time of the event, so it is not used.
* ``trade``: ``{"id", "price", "amount"}`` as JSON numbers, with no side field.
* ``order_book``: ``{"bids": [[price, amount], ...], "asks": ...}``, the top 20 levels a side,
  polled about every 3.6 s.

Timestamps: the line's epoch-millisecond receive time is the only event time, so
``exch_ts = local_ts = ms * 1e6`` (the JSON carries no exchange time of the event).

Aggregation (shared with format D, see :class:`OrderLevelBook`): single orders are mapped
``id -> (side, price, amount)`` and every change emits the level's new *total* (0 = level gone),
as hftbacktest's depth events do. Amounts are kept as integer satoshi (1e-8 BTC), prices as
integer ticks of the instrument's ``tick_size``, so totals never drift.

Start and re-sync policy: the book is unknown until the first ``order_book`` snapshot. Order
events before it are tracked but not emitted (trades are). Every snapshot then seeds or re-syncs
the book: only the range it covers is known (bids at or above its worst bid, asks at or below its
worst ask), so a ``DEPTH_CLEAR_EVENT`` clears exactly that range (its price is the worst level,
hftbacktest's convention) and ``DEPTH_SNAPSHOT_EVENT`` rows re-insert the levels; levels deeper
than the snapshot keep their aggregated totals. After the first snapshot, the deeper levels built
from orders seen so far are emitted once as depth events. Volume in a snapshot level that no
known order accounts for (orders placed before the capture began) is held as *unattributed*
volume of that level; events of unknown order ids draw from it (see repairs below).

Marketable orders: Bitstamp publishes an incoming order that crosses the book as
``order_created`` at its limit price *before* the fills (then ``order_changed`` / ``order_deleted``
for it and the makers). Emitted as is, a bid above the best ask would wipe the ask side in any
book that, like hftbacktest's, removes crossed levels. Such orders are therefore held off the book
while their price crosses the opposite best; their remainder is added once it no longer does
(or dropped when they are deleted). Counted as ``messages["marketable_held"]``. An
``order_changed`` may also re-price an order (``messages["order_repriced"]``): it moves to the new
level, held off the book the same way if the new price is marketable.

Trade aggressor: the trade line has no side. The fills that precede it since the previous trade
(``order_changed`` with a smaller amount, ``order_deleted`` with amount 0) normally name one bid
and one ask order: the taker is the newer order (larger id; the maker was resting before it),
and the aggressor side is the taker's (bid -> ``BUY_EVENT``). With fills on one side only, an
order at the trade price is the maker (aggressor = other side), otherwise it is the taker. With
no fills, the trade price against the mid of the aggregated book decides (at the mid: the tick
rule against the previous trade). The rule used is counted in ``messages["trade_side_*"]``.

Repairs (counted in the report): ``delete_unknown_id`` / ``change_unknown_id`` (orders that
rested before the capture began: a deletion removes its amount from the level's unattributed
volume, a change makes the order known at its new amount), ``change_after_delete`` (a late
change of an order already deleted: ignored), ``unknown_maker_fill`` (a fill of an unknown maker
removes the traded amount from the unattributed volume), ``duplicate_order_id``,
``negative_level`` (a total that would drop below 0, clamped), ``snapshot_levels_differ``
(levels a snapshot corrected), ``trade_side_from_book``, ``duplicate_trade`` (a trade whose
``id``, price and amount an earlier line had: dropped, so a block logged twice counts once).

Measured on the 2015-05-01 capture (56,000 lines): right before each of the 5,010 re-syncs the
aggregated book equals the snapshot at the best level 99.8 % of the time, over the top 5 levels
99.3 %, top 10 98.8 %, top 20 97.5 %; the book is never crossed. 554 of the 575 trades are
sided by a bid/ask fill pair, 17 by a single fill, 4 from the book; the sides agree with "price
above / below the mid 100 ms earlier" for 98.4 % of the trades.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import orjson

from cmm.config import Instrument, NoReaderOptions
from cmm.data.events import (
    BUY_EVENT,
    DEPTH_CLEAR_EVENT,
    DEPTH_EVENT,
    DEPTH_SNAPSHOT_EVENT,
    SELL_EVENT,
    SIDE_FLAG,
    TRADE_EVENT,
    ReadReport,
    check_raw_events,
    event_dtype,
)
from cmm.data.readers import register_reader
from cmm.data.readers.compressed import read_bytes
from cmm.errors import InputError
from cmm.vocabulary import ASK, BID

__all__ = ["OrderLevelBook", "read_bitstamp_log", "BID", "ASK", "SATOSHI_PER_BTC",
           "price_ticks", "parse_number", "finish_report"]

SATOSHI_PER_BTC = 10**8
ORDER_EVENTS = ("order_created", "order_changed", "order_deleted")
EVENTS = (*ORDER_EVENTS, "trade", "order_book")


def price_ticks(value: float, tick: float, *, file, line, field: str) -> int:
    """A positive finite price as integer ticks; prices off the tick grid are an error."""
    if not (isinstance(value, float) and math.isfinite(value)) or value <= 0:
        raise InputError("invalid price", file=file, line=line, field=field,
                         expected="a finite price > 0", got=value)
    ticks = round(value / tick)
    if ticks <= 0 or abs(value / tick - ticks) > 1e-6 * max(1.0, abs(ticks)) + 1e-6:
        raise InputError("price is not a multiple of the instrument's tick_size", file=file,
                         line=line, field=field, expected=f"a multiple of {tick}", got=value)
    return ticks


def parse_number(text, *, file, line, field: str) -> float:
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise InputError("not a number", file=file, line=line, field=field, got=text) from None
    if not math.isfinite(value):
        raise InputError("not a finite number", file=file, line=line, field=field, got=text)
    return value


def btc_to_satoshi(text, *, file, line, field: str) -> int:
    value = parse_number(text, file=file, line=line, field=field)
    if value < 0:
        raise InputError("negative amount", file=file, line=line, field=field,
                         expected="an amount >= 0", got=text)
    return round(value * SATOSHI_PER_BTC)


class OrderLevelBook:
    """Price-level aggregation of single orders, emitting raw hftbacktest events.

    ``live``: whether depth changes are emitted (False until the first snapshot for sources that
    have snapshots). Quantities are integers in ``1 / qty_scale`` units; prices integer ticks.
    """

    def __init__(self, report: ReadReport, tick_size: float, qty_scale: int = SATOSHI_PER_BTC,
                 live: bool = True) -> None:
        self.report = report
        self.tick = tick_size
        self.qty_scale = qty_scale
        self.px_digits = max(0, -math.floor(math.log10(tick_size))) + 4
        self.live = live
        self.orders: dict[int, list[int]] = {}  # id -> [side, ticks, qty]
        self.pending: dict[int, list[int]] = {}  # marketable orders held off the book
        self.deleted: set[int] = set()
        self.levels: tuple[dict[int, int], dict[int, int]] = ({}, {})
        self.known: tuple[dict[int, int], dict[int, int]] = ({}, {})  # sum of known orders
        self.unattributed: tuple[dict[int, int], dict[int, int]] = ({}, {})
        self.best: list[int | None] = [None, None]
        self.rows: list[tuple[int, int, float, float]] = []  # (ev, ts, px, qty)
        self._px_cache: dict[int, float] = {}

    # -- primitives -------------------------------------------------------------------------
    def price(self, ticks: int) -> float:
        px = self._px_cache.get(ticks)
        if px is None:
            px = self._px_cache[ticks] = round(ticks * self.tick, self.px_digits)
        return px

    def _emit_level(self, side: int, ticks: int, ts: int) -> None:
        if self.live:
            qty = self.levels[side].get(ticks, 0)
            self.rows.append((DEPTH_EVENT | SIDE_FLAG[side], ts, self.price(ticks),
                              qty / self.qty_scale))

    def _recompute_best(self, side: int) -> None:
        lv = self.levels[side]
        if not lv:
            self.best[side] = None
        else:
            self.best[side] = max(lv) if side == BID else min(lv)

    def set_level(self, side: int, ticks: int, qty: int, ts: int) -> None:
        lv = self.levels[side]
        if qty < 0:
            self.report.repair("negative_level")
            qty = 0
        if lv.get(ticks, 0) == qty:
            return
        if qty == 0:
            del lv[ticks]
            self.unattributed[side].pop(ticks, None)
            if self.best[side] == ticks:
                self._recompute_best(side)
        else:
            lv[ticks] = qty
            best = self.best[side]
            if best is None or (ticks > best if side == BID else ticks < best):
                self.best[side] = ticks
        self._emit_level(side, ticks, ts)

    def _add_known(self, side: int, ticks: int, qty: int) -> None:
        kn = self.known[side]
        total = kn.get(ticks, 0) + qty
        if total > 0:
            kn[ticks] = total
        else:
            kn.pop(ticks, None)

    def crosses(self, side: int, ticks: int) -> bool:
        other = self.best[1 - side]
        if other is None:
            return False
        return ticks >= other if side == BID else ticks <= other

    def _rest(self, oid: int, side: int, ticks: int, qty: int, ts: int) -> None:
        self.orders[oid] = [side, ticks, qty]
        self._add_known(side, ticks, qty)
        self.set_level(side, ticks, self.levels[side].get(ticks, 0) + qty, ts)

    def _remove_known(self, oid: int, ts: int) -> int:
        side, ticks, qty = self.orders.pop(oid)
        self._add_known(side, ticks, -qty)
        self.set_level(side, ticks, self.levels[side].get(ticks, 0) - qty, ts)
        return qty

    def _draw_unattributed(self, side: int, ticks: int, qty: int) -> int:
        un = self.unattributed[side]
        take = min(un.get(ticks, 0), qty)
        if take:
            if un[ticks] == take:
                del un[ticks]
            else:
                un[ticks] -= take
        return take

    # -- order events -----------------------------------------------------------------------
    def create(self, oid: int, side: int, ticks: int, qty: int, ts: int) -> None:
        if oid in self.orders or oid in self.pending:
            self.report.repair("duplicate_order_id")
            if oid in self.pending:
                del self.pending[oid]
            else:
                self._remove_known(oid, ts)
        if self.crosses(side, ticks):
            self.pending[oid] = [side, ticks, qty]
            self.report.count("marketable_held")
        elif qty > 0:
            self._rest(oid, side, ticks, qty, ts)
        else:
            self.orders[oid] = [side, ticks, 0]

    def change(self, oid: int, side: int, ticks: int, qty: int, ts: int) -> int | None:
        """Set an order's remaining amount; returns its previous amount (None: unknown id)."""
        if oid in self.pending:
            old = self.pending[oid][2]
            self.pending[oid] = [side, ticks, qty]
            return old
        if oid in self.orders:
            o_side, o_ticks, old = self.orders[oid]
            if (o_side, o_ticks) != (side, ticks):
                # Bitstamp re-prices orders in place; the new price may be marketable.
                self.report.count("order_repriced")
                self._remove_known(oid, ts)
                if self.crosses(side, ticks):
                    self.pending[oid] = [side, ticks, qty]
                    self.report.count("marketable_held")
                else:
                    self._rest(oid, side, ticks, qty, ts)
            else:
                self.orders[oid][2] = qty
                self._add_known(side, ticks, qty - old)
                self.set_level(side, ticks, self.levels[side].get(ticks, 0) + qty - old, ts)
            return old
        if oid in self.deleted:  # a late message for an order already gone
            self.report.repair("change_after_delete")
            return None
        # Rested before the capture began: if a snapshot counted it, its volume is in the
        # level's unattributed part; it becomes known at its new amount.
        self.report.repair("change_unknown_id")
        if self.crosses(side, ticks):
            self.pending[oid] = [side, ticks, qty]
            self.report.count("marketable_held")
            return None
        take = self._draw_unattributed(side, ticks, qty)
        self.orders[oid] = [side, ticks, qty]
        self._add_known(side, ticks, qty)
        if qty - take:
            self.set_level(side, ticks, self.levels[side].get(ticks, 0) + qty - take, ts)
        return None

    def delete(self, oid: int, side: int, ticks: int, qty: int, ts: int) -> int | None:
        """Remove an order; returns its tracked amount (None: unknown id)."""
        self.deleted.add(oid)
        if oid in self.pending:
            return self.pending.pop(oid)[2]
        if oid in self.orders:
            return self._remove_known(oid, ts)
        self.report.repair("delete_unknown_id")
        take = self._draw_unattributed(side, ticks, qty)
        if take:
            self.set_level(side, ticks, self.levels[side].get(ticks, 0) - take, ts)
        return None

    def unknown_maker_fill(self, side: int, ticks: int, qty: int, ts: int) -> None:
        take = self._draw_unattributed(side, ticks, qty)
        if take:
            self.report.repair("unknown_maker_fill")
            self.set_level(side, ticks, self.levels[side].get(ticks, 0) - take, ts)

    def release_pending(self, ts: int) -> None:
        """Rest the held marketable orders that no longer cross the book."""
        if not self.pending:
            return
        for oid in list(self.pending):
            side, ticks, qty = self.pending[oid]
            if not self.crosses(side, ticks):
                del self.pending[oid]
                if qty > 0:
                    self._rest(oid, side, ticks, qty, ts)
                else:
                    self.orders[oid] = [side, ticks, 0]

    # -- snapshots --------------------------------------------------------------------------
    def snapshot(self, side: int, levels: list[tuple[int, int]], ts: int) -> int:
        """Re-sync the range a top-N snapshot covers; returns how many levels it corrected.

        ``levels``: (ticks, qty) pairs of one side. Emits nothing: see :meth:`emit_snapshot`."""
        lv = self.levels[side]
        worst = min(t for t, _ in levels) if side == BID else max(t for t, _ in levels)
        covered = (lambda t: t >= worst) if side == BID else (lambda t: t <= worst)
        snap = {t: q for t, q in levels if q > 0}
        old = {t: q for t, q in lv.items() if covered(t)}
        differ = sum(1 for t in set(old) | set(snap) if old.get(t, 0) != snap.get(t, 0))
        for t in old:
            del lv[t]
        lv.update(snap)
        # Held marketable orders inside the covered range are in the snapshot if they rest.
        for oid in [o for o, (s, t, _) in self.pending.items() if s == side and covered(t)]:
            s, t, q = self.pending.pop(oid)
            self.orders[oid] = [s, t, q]
            self._add_known(s, t, q)
        un = self.unattributed[side]
        for t in [t for t in un if covered(t)]:
            del un[t]
        kn = self.known[side]
        for t, q in snap.items():
            rest = q - kn.get(t, 0)
            if rest > 0:
                un[t] = rest
        self._recompute_best(side)
        return differ

    def emit_snapshot(self, side: int, levels: list[tuple[int, int]], ts: int) -> None:
        worst = min(t for t, _ in levels) if side == BID else max(t for t, _ in levels)
        flag = SIDE_FLAG[side]
        self.rows.append((DEPTH_CLEAR_EVENT | flag, ts, self.price(worst), 0.0))
        for t, q in levels:
            self.rows.append((DEPTH_SNAPSHOT_EVENT | flag, ts, self.price(t), q / self.qty_scale))

    def emit_outside(self, side: int, levels: list[tuple[int, int]], ts: int) -> None:
        """Depth events for the aggregated levels deeper than a snapshot (after the first)."""
        worst = min(t for t, _ in levels) if side == BID else max(t for t, _ in levels)
        deeper = sorted((t for t in self.levels[side] if (t < worst if side == BID else t > worst)),
                        reverse=side == BID)
        for t in deeper:
            self._emit_level(side, t, ts)

    def mid(self) -> float | None:
        if self.best[BID] is None or self.best[ASK] is None:
            return None
        return (self.best[BID] + self.best[ASK]) / 2.0

    def trade(self, is_buy: bool, ticks: int, qty: int, ts: int) -> None:
        self.rows.append((TRADE_EVENT | (BUY_EVENT if is_buy else SELL_EVENT), ts,
                          self.price(ticks), qty / self.qty_scale))

    def to_array(self) -> np.ndarray:
        out = np.zeros(len(self.rows), event_dtype)
        if self.rows:
            rows = np.array(self.rows, dtype=[("ev", "u8"), ("ts", "i8"), ("px", "f8"),
                                              ("qty", "f8")])
            out["ev"] = rows["ev"]
            out["exch_ts"] = rows["ts"]
            out["local_ts"] = rows["ts"]
            out["px"] = rows["px"]
            out["qty"] = rows["qty"]
        return out


class LineClock:
    """The epoch-millisecond timestamps of a text capture, line by line: one that goes
    backwards is refused (naming the line that set the last one); first and last are kept."""

    def __init__(self, path) -> None:
        self.path = path
        self.first: int | None = None
        self.last: int | None = None
        self.last_line = 0

    def advance(self, ms: int, lineno: int) -> None:
        if self.last is not None and ms < self.last:
            raise InputError(f"timestamp goes backwards (line {self.last_line} has {self.last})",
                             file=self.path, line=lineno, field="timestamp",
                             expected=f">= {self.last}", got=ms)
        self.last, self.last_line = ms, lineno
        if self.first is None:
            self.first = ms

    @property
    def first_ns(self) -> int | None:
        return None if self.first is None else self.first * 1_000_000

    @property
    def last_ns(self) -> int | None:
        return None if self.last is None else self.last * 1_000_000


def finish_report(report: ReadReport, events: np.ndarray, first_ts: int | None,
                  last_ts: int | None) -> None:
    report.events = len(events)
    if len(events):
        report.first_local_ts = int(events["local_ts"][0])
        report.last_local_ts = int(events["local_ts"][-1])
    else:
        report.first_local_ts, report.last_local_ts = first_ts, last_ts


def _field(d: dict, key: str, *, file, line):
    try:
        return d[key]
    except KeyError:
        raise InputError("required field is missing", file=file, line=line, field=key) from None


def _order_fields(d: dict, tick: float, *, file, line) -> tuple[int, int, int, int]:
    oid = _field(d, "id", file=file, line=line)
    if not isinstance(oid, int) or isinstance(oid, bool):
        raise InputError("order id is not an integer", file=file, line=line, field="id", got=oid)
    side = _field(d, "order_type", file=file, line=line)
    if side not in (0, 1) or isinstance(side, bool):
        raise InputError("invalid order side", file=file, line=line, field="order_type",
                         expected="0 (bid) or 1 (ask)", got=side)
    px = parse_number(_field(d, "price", file=file, line=line), file=file, line=line,
                      field="price")
    ticks = price_ticks(px, tick, file=file, line=line, field="price")
    qty = btc_to_satoshi(_field(d, "amount", file=file, line=line), file=file, line=line,
                         field="amount")
    return oid, side, ticks, qty


def _book_side(d: dict, key: str, tick: float, *, file, line) -> list[tuple[int, int]]:
    raw = _field(d, key, file=file, line=line)
    if not isinstance(raw, list):
        raise InputError("not a list of [price, amount] pairs", file=file, line=line, field=key,
                         got=raw)
    try:  # fast path: all pairs valid
        arr = np.array(raw, dtype=np.float64).reshape(len(raw), 2) if raw else None
    except (TypeError, ValueError):
        arr = None
    if arr is not None and np.isfinite(arr).all() and (arr[:, 0] > 0).all() \
            and (arr[:, 1] >= 0).all():
        ticks = np.rint(arr[:, 0] / tick)
        if (np.abs(arr[:, 0] / tick - ticks) <= 1e-6 * np.maximum(1.0, ticks) + 1e-6).all():
            qty = np.rint(arr[:, 1] * SATOSHI_PER_BTC)
            order = np.argsort(-ticks if key == "bids" else ticks, kind="stable")
            return list(zip(ticks[order].astype(int).tolist(), qty[order].astype(int).tolist()))
    out = []
    for i, item in enumerate(raw):
        name = f"{key}[{i}]"
        if not isinstance(item, list) or len(item) < 2:
            raise InputError("not a [price, amount] pair", file=file, line=line, field=name,
                             got=item)
        px = parse_number(item[0], file=file, line=line, field=name + ".price")
        ticks = price_ticks(px, tick, file=file, line=line, field=name + ".price")
        qty = btc_to_satoshi(item[1], file=file, line=line, field=name + ".amount")
        out.append((ticks, qty))
    out.sort(key=lambda p: -p[0] if key == "bids" else p[0])
    return out


@register_reader("bitstamp-log")
def read_bitstamp_log(path: Path, instrument: Instrument,
                      options: NoReaderOptions = NoReaderOptions()) -> tuple[np.ndarray, ReadReport]:
    """Read a Bitstamp order-level log (format C) into raw events; see the module docstring."""
    path = Path(path)
    text = read_bytes(path)
    report = ReadReport(file=str(path), format="bitstamp-log", timestamp_unit="ms")
    book = OrderLevelBook(report, instrument.tick_size, live=False)
    tick = instrument.tick_size
    fills: list[tuple[int, int, int, bool]] = []  # (id, side, ticks, known) since last trade
    clock = LineClock(path)
    last_trade_ticks = None
    last_trade_buy = True
    trade_ids: dict[int, tuple] = {}  # id -> (price, amount) of the trades seen
    for lineno, raw in enumerate(text.split(b"\n"), start=1):
        if not raw.strip():
            continue
        report.lines += 1
        parts = raw.split(b" ", 2)
        if len(parts) != 3:
            raise InputError("malformed line", file=path, line=lineno,
                             expected="'<epoch ms> <event> <json>'",
                             got=raw[:80].decode("utf-8", "replace"))
        try:
            ms = int(parts[0])
        except ValueError:
            raise InputError("timestamp is not an integer", file=path, line=lineno,
                             field="timestamp", expected="epoch milliseconds",
                             got=parts[0][:40].decode("utf-8", "replace")) from None
        if ms <= 0:
            raise InputError("timestamp is not positive", file=path, line=lineno,
                             field="timestamp", expected="epoch milliseconds > 0", got=ms)
        clock.advance(ms, lineno)
        ts = ms * 1_000_000
        event = parts[1].decode("utf-8", "replace")
        if event not in EVENTS:
            raise InputError("unknown event", file=path, line=lineno, field="event",
                             expected=" / ".join(EVENTS), got=event)
        try:
            d = orjson.loads(parts[2])
        except orjson.JSONDecodeError as exc:
            raise InputError(f"invalid JSON ({exc})", file=path, line=lineno, field="json",
                             got=parts[2][:80].decode("utf-8", "replace")) from None
        if not isinstance(d, dict):
            raise InputError("JSON is not an object", file=path, line=lineno, field="json",
                             got=d)
        report.count(event)

        if event in ORDER_EVENTS:
            oid, side, ticks, qty = _order_fields(d, tick, file=path, line=lineno)
            if event == "order_created":
                book.create(oid, side, ticks, qty, ts)
            elif event == "order_changed":
                old = book.change(oid, side, ticks, qty, ts)
                if old is None or qty < old:
                    fills.append((oid, side, ticks, old is not None))
            else:
                old = book.delete(oid, side, ticks, qty, ts)
                if qty == 0:  # completed by a fill
                    fills.append((oid, side, ticks, old is not None))
            book.release_pending(ts)
        elif event == "trade":
            tid = d.get("id")
            if tid.__class__ is int:  # a trade seen before (lines logged twice): once only
                seen = (d.get("price"), d.get("amount"))
                if trade_ids.get(tid) == seen:
                    report.repair("duplicate_trade")
                    fills = []
                    continue
                trade_ids[tid] = seen
            px = parse_number(_field(d, "price", file=path, line=lineno), file=path,
                              line=lineno, field="price")
            ticks = price_ticks(px, tick, file=path, line=lineno, field="price")
            qty = btc_to_satoshi(_field(d, "amount", file=path, line=lineno), file=path,
                                 line=lineno, field="amount")
            if qty <= 0:
                raise InputError("trade of zero size", file=path, line=lineno, field="amount",
                                 expected="an amount > 0", got=d["amount"])
            is_buy, maker = _aggressor(fills, ticks, book, last_trade_ticks, last_trade_buy,
                                       report)
            book.trade(is_buy, ticks, qty, ts)
            if maker is not None and not maker[3]:
                book.unknown_maker_fill(maker[1], maker[2], qty, ts)
            fills = []
            last_trade_ticks, last_trade_buy = ticks, is_buy
        else:  # order_book
            sides = (_book_side(d, "bids", tick, file=path, line=lineno),
                     _book_side(d, "asks", tick, file=path, line=lineno))
            first = not book.live
            for side, levels in enumerate(sides):
                if not levels:
                    report.count("snapshot_side_empty")
                    continue
                differ = book.snapshot(side, levels, ts)
                if not first and differ:
                    report.repair("snapshot_levels_differ", differ)
            if first and any(sides):
                book.live = True
                report.has_snapshot = True
            if book.live:
                for side, levels in enumerate(sides):
                    if levels:
                        book.emit_snapshot(side, levels, ts)
                if first:
                    for side, levels in enumerate(sides):
                        if levels:
                            book.emit_outside(side, levels, ts)
            book.release_pending(ts)

    if not report.has_snapshot:
        report.warnings.append("no order_book snapshot: the book was never known, so no depth "
                               "events were emitted (trades only)")
    if report.messages.get("snapshot_side_empty"):
        report.warnings.append(f"{report.messages['snapshot_side_empty']} snapshot side(s) were "
                               "empty and left the book side unchanged")
    events = book.to_array()
    check_raw_events(events, path, instrument)
    finish_report(report, events, clock.first_ns, clock.last_ns)
    return events, report


def _aggressor(fills, ticks, book: OrderLevelBook, last_ticks, last_buy, report: ReadReport):
    """(is_buy, maker fill or None) for a trade at ``ticks``; see the module docstring."""
    bids = [f for f in fills if f[1] == BID]
    asks = [f for f in fills if f[1] == ASK]
    if bids and asks:
        taker = max(fills, key=lambda f: f[0])
        makers = [f for f in fills if f[1] != taker[1]]
        maker = next((f for f in makers if f[2] == ticks), makers[-1])
        report.count("trade_side_by_pair")
        return taker[1] == BID, maker
    if fills:
        f = fills[-1]
        report.count("trade_side_by_one_fill")
        if f[2] == ticks:  # the maker rests at the trade price
            return f[1] == ASK, f
        return f[1] == BID, None
    report.repair("trade_side_from_book")
    mid = book.mid()
    if mid is not None and ticks != mid:
        return ticks > mid, None
    if last_ticks is not None and ticks != last_ticks:
        return ticks > last_ticks, None
    return last_buy, None
