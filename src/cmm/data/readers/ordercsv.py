"""Format D: single-order events as CSV, aggregated to price levels.

Header (any column order; extra columns are ignored)::

    id,timestamp,exchange.timestamp,price,volume,action,direction

* ``timestamp``: epoch milliseconds when the event was received; the event time.
* ``exchange.timestamp``: epoch milliseconds of the *order's creation* (Bitstamp's ``datetime``,
  whole seconds), not of the event: a deletion carries the time its order was placed. It is
  validated but not used, so ``exch_ts = local_ts = timestamp * 1e6``.
* ``price``: quote currency; ``volume``: the order's remaining amount in satoshi (1e-8 BTC),
  an integer; ``action``: created / changed / deleted; ``direction``: bid / ask.

Aggregation, marketable orders and repairs are those of format C
(:class:`cmm.data.readers.bitstamp.OrderLevelBook`). Differences, all reported:

* There are no trades in this format: the events hold depth only (a report warning says so);
  use format C of the same capture for trade flow.
* There are no snapshots: the book starts empty and holds only orders seen in the file. Orders
  that rested before the capture began are missing until they are changed (they then enter the
  book at their new amount, repair ``change_unknown_id``); their deletions are ignored (repair
  ``delete_unknown_id``). ``has_snapshot`` is False.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from cmm.config import Instrument, OrderCsvOptions
from cmm.data.events import ReadReport, check_raw_events
from cmm.data.readers import register_reader
from cmm.data.readers.bitstamp import (
    ASK,
    BID,
    SATOSHI_PER_BTC,
    LineClock,
    OrderLevelBook,
    finish_report,
    parse_number,
    price_ticks,
)
from cmm.data.readers.compressed import read_bytes
from cmm.errors import InputError

__all__ = ["read_order_csv", "COLUMNS"]

COLUMNS = ("id", "timestamp", "exchange.timestamp", "price", "volume", "action", "direction")
ACTIONS = ("created", "changed", "deleted")
DIRECTIONS = {"bid": BID, "ask": ASK}


def _int(text: str, *, file, line, field: str, minimum: int | None = None) -> int:
    try:
        value = int(text)
    except ValueError:
        value = None
        try:
            f = float(text)
            if f.is_integer():
                value = int(f)
        except ValueError:
            pass
        if value is None:
            raise InputError("not an integer", file=file, line=line, field=field,
                             got=text) from None
    if minimum is not None and value < minimum:
        raise InputError("value out of range", file=file, line=line, field=field,
                         expected=f"an integer >= {minimum}", got=value)
    return value


@register_reader("order-csv")
def read_order_csv(path: Path, instrument: Instrument,
                   options: OrderCsvOptions = OrderCsvOptions()) -> tuple[np.ndarray, ReadReport]:
    """Read an order-level CSV (format D) into raw depth events; see the module docstring."""
    path = Path(path)
    text = read_bytes(path).decode("utf-8", "replace")
    report = ReadReport(file=str(path), format="order-csv", timestamp_unit="ms")
    book = OrderLevelBook(report, instrument.tick_size, qty_scale=SATOSHI_PER_BTC, live=True)
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    header = [h.strip() for h in header] if header else []
    missing = [c for c in COLUMNS if c not in header]
    if missing:
        raise InputError(f"missing CSV column(s): {', '.join(missing)}", file=path, line=1,
                         field=missing[0], expected=", ".join(COLUMNS), got=",".join(header))
    col = {c: header.index(c) for c in COLUMNS}
    width = max(col.values()) + 1
    clock = LineClock(path)
    for row in rows:
        lineno = rows.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        report.lines += 1
        if len(row) < width:
            raise InputError("too few columns", file=path, line=lineno,
                             expected=f"{len(header)} columns", got=len(row))
        ms = _int(row[col["timestamp"]], file=path, line=lineno, field="timestamp", minimum=1)
        clock.advance(ms, lineno)
        _int(row[col["exchange.timestamp"]], file=path, line=lineno,
             field="exchange.timestamp", minimum=0)
        oid = _int(row[col["id"]], file=path, line=lineno, field="id")
        px = parse_number(row[col["price"]], file=path, line=lineno, field="price")
        ticks = price_ticks(px, instrument.tick_size, file=path, line=lineno, field="price")
        volume = _int(row[col["volume"]], file=path, line=lineno, field="volume", minimum=0)
        action = row[col["action"]].strip()
        if action not in ACTIONS:
            raise InputError("unknown action", file=path, line=lineno, field="action",
                             expected=" / ".join(ACTIONS), got=action)
        direction = row[col["direction"]].strip()
        if direction not in DIRECTIONS:
            raise InputError("unknown direction", file=path, line=lineno, field="direction",
                             expected="bid / ask", got=direction)
        side = DIRECTIONS[direction]
        ts = ms * 1_000_000
        report.count(action)
        if action == "created":
            book.create(oid, side, ticks, volume, ts)
        elif action == "changed":
            book.change(oid, side, ticks, volume, ts)
        else:
            book.delete(oid, side, ticks, volume, ts)
        book.release_pending(ts)
    if report.lines == 0:
        raise InputError("no records after the header", file=path,
                         expected="at least one order event")
    report.warnings.append("format D carries no trades: the events hold depth only")
    report.warnings.append("no snapshots: the book holds only orders seen in the file; orders "
                           "resting before the capture began are missing")
    events = book.to_array()
    check_raw_events(events, path)
    finish_report(report, events, clock.first_ns, clock.last_ns)
    return events, report
