"""Format D: single-order events as CSV, aggregated to price levels.

Bitstamp's header (any column order; extra columns are ignored)::

    id,timestamp,exchange.timestamp,price,volume,action,direction

* ``timestamp``: epoch milliseconds when the event was received; the event time.
* ``exchange.timestamp`` (or ``exchange_timestamp``): epoch milliseconds of the *order's
  creation* (Bitstamp's ``datetime``, whole seconds), not of the event: a deletion carries the
  time its order was placed. It is validated but not used, so ``exch_ts = local_ts = timestamp``.
* ``price``: quote currency; ``volume``: the order's remaining amount in satoshi (1e-8 BTC),
  an integer; ``action``: created / changed / deleted; ``direction``: bid / ask.

Other captures name and encode these differently: a dataset spec's ``reader:`` mapping
(:class:`cmm.config.OrderCsvOptions`, where the defaults above live) gives the file's
``columns`` names, the ``time_unit`` of ``timestamp`` (s / ms / us / ns), the ``volume_unit``
(``satoshi``: integer 1e-8 units; ``base``: decimal base units such as 0.5 BTC) and the file's
words for the ``actions`` and ``directions`` (e.g. ``order_created``, ``{bid: 0, ask: 1}``).
A header, action or side that does not match names the option to set and what was found.

Aggregation, marketable orders and repairs are those of format C
(:class:`cmm.data.readers.orderbook.OrderLevelBook`). Differences, all reported:

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
import math
from pathlib import Path

import numpy as np

from cmm.config import Instrument, OrderCsvOptions
from cmm.data.events import ReadReport, check_raw_events
from cmm.data.readers import register_reader
from cmm.data.readers.common import LineClock, finish_report, parse_number, price_ticks
from cmm.data.readers.compressed import read_bytes
from cmm.data.readers.orderbook import SATOSHI_PER_BTC, OrderLevelBook
from cmm.errors import InputError
from cmm.vocabulary import ASK, BID

__all__ = ["read_order_csv", "COLUMNS", "CANONICAL"]

# The reader's names for the columns (keys of ``reader.columns``), and Bitstamp's header.
CANONICAL = ("id", "timestamp", "exchange_timestamp", "price", "volume", "action", "direction")
COLUMNS = ("id", "timestamp", "exchange.timestamp", "price", "volume", "action", "direction")
ACTIONS = ("created", "changed", "deleted")
NS_PER = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}
INT64_MAX = 2**63 - 1
# of a size unit, plus float error: base volumes off the reader's grid are refused
VOLUME_TOLERANCE = 1e-6


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


def _column_index(options: OrderCsvOptions, header: list[str], path: Path) -> dict[str, int]:
    """Where each canonical column is in ``header`` (exchange_timestamp: absent if null);
    a missing one is an error naming its ``reader.columns`` option and the columns found."""
    first = {}
    for i, name in enumerate(header):
        first.setdefault(name, i)
    index: dict[str, int] = {}
    missing: list[tuple[str, tuple[str, ...]]] = []
    for canon in CANONICAL:
        names = getattr(options.columns, canon)
        if names is None:
            continue
        names = (names,) if isinstance(names, str) else tuple(names)
        found = next((first[n] for n in names if n in first), None)
        if found is None:
            missing.append((canon, names))
        else:
            index[canon] = found
    if missing:
        wanted = ", ".join(" or ".join(names) for _, names in missing)
        hints = ", ".join(f"reader.columns.{canon}" + (" (null if the file has none)"
                                                       if canon == "exchange_timestamp" else "")
                          for canon, _ in missing)
        found_text = ", ".join(header) if header else "none"
        raise InputError(f"missing CSV column(s): {wanted}; set {hints} in the dataset spec to "
                         f"the file's column name (columns found: {found_text})",
                         file=path, line=1, field=missing[0][1][0])
    return index


def _lot_decimals(lot_size: float) -> int:
    """The decimals of ``lot_size`` (0.001 -> 3, 1e-8 -> 8, 5.0 -> 0), at most 18."""
    for d in range(19):
        scaled = lot_size * 10**d
        if round(scaled) >= 1 and abs(scaled - round(scaled)) <= 1e-9 * scaled:
            return d
    return 18


@register_reader("order-csv")
def read_order_csv(path: Path, instrument: Instrument,
                   options: OrderCsvOptions = OrderCsvOptions()) -> tuple[np.ndarray, ReadReport]:
    """Read an order-level CSV (format D) into raw depth events; see the module docstring."""
    path = Path(path)
    text = read_bytes(path).decode("utf-8-sig", "replace")
    report = ReadReport(file=str(path), format="order-csv", timestamp_unit=options.time_unit)
    base = options.volume_unit == "base"
    # Sizes are integers of 1 / qty_scale base units: satoshi for satoshi volumes; for base
    # volumes 1e-8 too, or finer if the lot size has more decimals.
    qty_scale = 10 ** max(8, _lot_decimals(instrument.lot_size)) if base else SATOSHI_PER_BTC
    book = OrderLevelBook(report, instrument.tick_size, qty_scale=qty_scale, live=True)
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    header = [h.strip() for h in header] if header else []
    col = _column_index(options, header, path)
    width = max(col.values()) + 1
    i_id, i_ts, i_px, i_vol = col["id"], col["timestamp"], col["price"], col["volume"]
    i_act, i_dir, i_exch = col["action"], col["direction"], col.get("exchange_timestamp")
    f_id, f_ts, f_px, f_vol, f_act, f_dir = (header[i] for i in
                                             (i_id, i_ts, i_px, i_vol, i_act, i_dir))
    f_exch = header[i_exch] if i_exch is not None else None
    ops, sides = _action_ops(options, book), _side_values(options)
    ns_per = NS_PER[options.time_unit]
    ts_max = INT64_MAX // ns_per
    tick = instrument.tick_size
    clock = LineClock(path)
    release = book.release_pending
    count = report.count
    for row in rows:
        lineno = rows.line_num
        if not row or (len(row) == 1 and not row[0].strip()):
            continue
        report.lines += 1
        if len(row) < width:
            raise InputError("too few columns", file=path, line=lineno,
                             expected=f"{len(header)} columns", got=len(row))
        t = _int(row[i_ts], file=path, line=lineno, field=f_ts, minimum=1)
        if t > ts_max:
            raise InputError(f"timestamp too large for reader.time_unit '{options.time_unit}'",
                             file=path, line=lineno, field=f_ts,
                             expected="set reader.time_unit (s, ms, us or ns) in the dataset "
                                      "spec to the unit of the file", got=t)
        clock.advance(t, lineno)
        if i_exch is not None:
            _int(row[i_exch], file=path, line=lineno, field=f_exch, minimum=0)
        oid = _int(row[i_id], file=path, line=lineno, field=f_id)
        px = parse_number(row[i_px], file=path, line=lineno, field=f_px)
        ticks = price_ticks(px, tick, file=path, line=lineno, field=f_px)
        volume = _volume(row[i_vol], base, qty_scale, file=path, line=lineno, field=f_vol)
        action, apply = _action(ops, row[i_act], file=path, line=lineno, field=f_act)
        side = _side(sides, options, row[i_dir], file=path, line=lineno, field=f_dir)
        ts = t * ns_per
        count(action)
        apply(oid, side, ticks, volume, ts)
        release(ts)
    if report.lines == 0:
        raise InputError("no records after the header", file=path,
                         expected="at least one order event")
    report.warnings.append("format D carries no trades: the events hold depth only")
    report.warnings.append("no snapshots: the book holds only orders seen in the file; orders "
                           "resting before the capture began are missing")
    events = book.to_array()
    check_raw_events(events, path, instrument)
    first_ns = None if clock.first is None else clock.first * ns_per
    last_ns = None if clock.last is None else clock.last * ns_per
    finish_report(report, events, first_ns, last_ns)
    return events, report


def _action_ops(options: OrderCsvOptions, book: OrderLevelBook) -> dict[str, tuple]:
    """The file's action words -> (canonical action, the book's operation for it)."""
    acts = options.actions
    words = {getattr(acts, a).strip(): a for a in ACTIONS}
    apply_of = {"created": book.create, "changed": book.change, "deleted": book.delete}
    return {w: (a, apply_of[a]) for w, a in words.items()}


def _side_values(options: OrderCsvOptions) -> dict[str, int]:
    """The file's direction values -> book side."""
    dirs = options.directions
    return {dirs.bid.strip(): BID, dirs.ask.strip(): ASK}


def _volume(text: str, base: bool, qty_scale: int, *, file, line, field: str) -> int:
    """An order's remaining volume as an integer of ``1 / qty_scale`` base units: a decimal
    amount of base units (``base``) or an integer of satoshi."""
    if base:
        amount = parse_number(text, file=file, line=line, field=field)
        if amount < 0:
            raise InputError("value out of range", file=file, line=line, field=field,
                             expected="an amount >= 0", got=text)
        scaled = amount * qty_scale
        volume = round(scaled)
        if abs(scaled - volume) > VOLUME_TOLERANCE + 1e-15 * scaled:
            raise InputError("volume is finer than the reader keeps", file=file,
                             line=line, field=field,
                             expected=f"a multiple of 1e-{int(math.log10(qty_scale))} "
                                      "base units", got=text)
        return volume
    try:
        return _int(text, file=file, line=line, field=field, minimum=0)
    except InputError as exc:
        if exc.reason != "not an integer":
            raise
        raise InputError("not an integer (satoshi, the default reader.volume_unit; set "
                         "it to base in the dataset spec for decimal amounts)",
                         file=file, line=line, field=field, got=text) from None


def _action(ops: dict[str, tuple], text: str, *, file, line, field: str) -> tuple:
    """(canonical action, book operation) of an action cell; an unknown word names the
    ``reader.actions`` option."""
    word = text.strip()
    op = ops.get(word)
    if op is None:
        raise InputError("unknown action; set reader.actions in the dataset spec to the "
                         "file's words", file=file, line=line, field=field,
                         expected=" / ".join(f"{w!r} ({a})" for w, (a, _) in ops.items()),
                         got=word)
    return op


def _side(sides: dict[str, int], options: OrderCsvOptions, text: str, *, file, line,
          field: str) -> int:
    """The book side of a direction cell; an unknown value names ``reader.directions``."""
    direction = text.strip()
    side = sides.get(direction)
    if side is None:
        dirs = options.directions
        raise InputError("unknown direction; set reader.directions in the dataset spec to "
                         "the file's values", file=file, line=line, field=field,
                         expected=f"{dirs.bid.strip()!r} (bid) / {dirs.ask.strip()!r} (ask)",
                         got=direction)
    return side
