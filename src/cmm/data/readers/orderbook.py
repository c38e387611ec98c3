"""The order-level book: single orders keyed by order id, aggregated into price levels, every
level change emitted as a raw hftbacktest depth event (shared by formats C and D).

Single orders are mapped ``id -> (side, price, amount)`` and every change emits the level's new
*total* (0 = level gone), as hftbacktest's depth events do. Amounts are integers of
``1 / qty_scale`` base units (satoshi, 1e-8 BTC, by default), prices integer ticks of the
instrument's ``tick_size``, so totals never drift.

Beyond the plain bookkeeping the book holds what a partial view of a venue needs (the policies
are described where they are used, in :mod:`cmm.data.readers.bitstamp`): orders whose price
crosses the opposite best are held off the book until they no longer do (``pending``); a top-N
snapshot re-syncs only the range it covers, and snapshot volume that no known order accounts for
is kept as the level's *unattributed* volume, which events of unknown order ids draw from. Every
repair is counted in the :class:`~cmm.data.events.ReadReport`.
"""

from __future__ import annotations

import math

import numpy as np

from cmm.data.events import (
    BUY_EVENT,
    DEPTH_CLEAR_EVENT,
    DEPTH_EVENT,
    DEPTH_SNAPSHOT_EVENT,
    SELL_EVENT,
    SIDE_FLAG,
    TRADE_EVENT,
    ReadReport,
    event_dtype,
)
from cmm.vocabulary import ASK, BID

__all__ = ["OrderLevelBook", "SATOSHI_PER_BTC"]

SATOSHI_PER_BTC = 10**8


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
