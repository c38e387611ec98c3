"""Format E: LOBSTER (lobsterdata.com) message + order-book files.

The path given is either one of LOBSTER's own zip archives (``LOBSTER_SampleFile_*.zip``, read in
place: the message and order-book members are found by LOBSTER's naming, ``*_message_N.csv`` and
``*_orderbook_N.csv``; other members such as the ReadMe are ignored) or the message file
``TICKER_YYYY-MM-DD_<start>_<end>_message_N.csv``, whose order book is the sibling file with
``_orderbook_`` in place of ``_message_`` (both may be gzip/bzip2/xz compressed). Neither CSV has a
header. Row ``k`` of the book is the state *after* message ``k``.

* Message columns: ``time`` (seconds after midnight, decimal, up to ns), ``type`` (1 submission,
  2 partial cancellation, 3 deletion, 4 visible execution, 5 hidden execution, 6 cross trade,
  7 trading halt), ``order_id``, ``size``, ``price`` (dollars x 10000), ``direction`` (1 buy,
  -1 sell limit order). Extra columns are ignored.
* Book columns: ``ask_price_i, ask_size_i, bid_price_i, bid_size_i`` for levels i = 1..N; N is
  detected from the column count (4N). Empty levels carry the dummy prices 9999999999 (ask) and
  -9999999999 (bid) and mean "no level".

Time: LOBSTER times are wall-clock seconds after midnight at the exchange (New York). The date
comes from the file name; ``date + seconds`` is read as America/New_York local time (zoneinfo, so
daylight saving time is honoured) and converted to UTC epoch nanoseconds. LOBSTER has a single
clock, so ``exch_ts = local_ts``.

Events:

* The first book row seeds the book: per side a ``DEPTH_CLEAR_EVENT`` (price: the worst visible
  level, hftbacktest's convention) and ``DEPTH_SNAPSHOT_EVENT`` rows.
* Every later row is diffed against the reconstructed book and emits ``DEPTH_EVENT`` rows with the
  new total size of each changed level. Only the N visible levels are known: inside the visible
  range (bids at or above the worst visible bid, asks at or below the worst visible ask; the
  whole side when fewer than N levels are visible) the book is made equal to the row, so a level
  that vanished there is deleted (size 0). A level that merely scrolled out of view because
  another level was inserted in front of it is *not* deleted: it keeps its last known size
  until it is seen again.
* Types 4 and 5 are trades. ``direction`` is the side of the *resting* order, so -1 (a sell limit
  order executed) is a buyer-initiated trade (``TRADE_EVENT | BUY_EVENT``) and 1 a seller-initiated
  one. The trade is emitted before the depth change it caused. Type 6 (cross/auction trades,
  no aggressor) and type 7 (halts) are counted and reported, not emitted.
* Trade prices may lie off the tick grid, book prices never do: hidden executions (type 5) of
  midpoint orders print at half-cent prices (GOOG 2012-06-21: 577.775). They are real trades and
  are kept at their exact price; the report counts them (``messages["hidden_subtick_trades"]``).
  hftbacktest's queue models round a trade's price to the nearest tick.

Session cut (:class:`cmm.config.LobsterOptions`): ``skip_open_minutes`` after the session start and
``skip_close_minutes`` before its end are dropped, to keep the opening and closing auctions'
effects out of the windows. The start and end come from the file name (``<start>_<end>`` in ms
after midnight, 34200000 = 09:30) and are the first and last message times when the name has
none. The book at the cut is LOBSTER's own order-book row of the last message before it, so it
seeds the book exactly (at the cut time) and the first emitted message is the first at or after
the cut. Dropped messages are counted (``messages["dropped_open"]`` / ``["dropped_close"]``).
"""

from __future__ import annotations

import datetime as dt
import io
import re
import zipfile
import zlib
from pathlib import Path
from typing import NamedTuple
from zoneinfo import ZoneInfo

import numpy as np

from cmm.config import Instrument, LobsterOptions
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
from cmm.data.readers.common import finish_report, price_ticks
from cmm.data.readers.compressed import read_bytes
from cmm.errors import InputError
from cmm.vocabulary import ASK, BID

__all__ = ["read_lobster", "orderbook_path", "companion_files", "session_date", "wall_to_utc_ns", "MESSAGE_COLUMNS",
           "DUMMY_ASK", "DUMMY_BID", "EXCHANGE_TZ"]

EXCHANGE_TZ = "America/New_York"
PRICE_SCALE = 10_000
DUMMY_ASK = 9_999_999_999
DUMMY_BID = -9_999_999_999
MESSAGE_COLUMNS = ("time", "type", "order_id", "size", "price", "direction")
TYPE_NAMES = {1: "submission", 2: "partial_cancellation", 3: "deletion",
              4: "execution_visible", 5: "execution_hidden", 6: "cross_trade", 7: "halt"}
_DATE = re.compile(r"^[^_]+_(\d{4}-\d{2}-\d{2})_")
_LEVELS = re.compile(r"_message_(\d+)")
_SPAN = re.compile(r"_(\d+)_(\d+)_(?:message|orderbook)_")
_MEMBER = re.compile(r"(?:^|/)([^/]+_(message|orderbook)_\d+\.csv)$")


def orderbook_path(message_path: Path) -> Path:
    """The order-book sibling of a LOBSTER message file."""
    name = message_path.name
    i = name.rfind("_message_")
    if i < 0:
        raise InputError("not a LOBSTER message file name", file=message_path,
                         expected="TICKER_YYYY-MM-DD_<start>_<end>_message_N.csv", got=name)
    return message_path.with_name(name[:i] + "_orderbook_" + name[i + len("_message_"):])


def session_date(path: Path) -> dt.date:
    """The trading day named in a LOBSTER file name (``TICKER_YYYY-MM-DD_...``)."""
    m = _DATE.match(path.name)
    if not m:
        raise InputError("no date in the LOBSTER file name", file=path,
                         expected="TICKER_YYYY-MM-DD_...", got=path.name)
    try:
        return dt.date.fromisoformat(m.group(1))
    except ValueError:
        raise InputError("invalid date in the LOBSTER file name", file=path,
                         expected="a valid YYYY-MM-DD", got=m.group(1)) from None


def wall_to_utc_ns(day: dt.date, tz: ZoneInfo):
    """A function from ns after local midnight (wall clock in ``tz``) to UTC epoch ns."""
    epoch_day_ns = (day - dt.date(1970, 1, 1)).days * 86_400 * 10**9

    def offset_ns(sec: int) -> int:
        wall = dt.datetime.combine(day, dt.time()) + dt.timedelta(seconds=sec)
        off = wall.replace(tzinfo=tz).utcoffset()
        return int(off.total_seconds()) * 10**9

    start, noon, end = offset_ns(0), offset_ns(12 * 3600), offset_ns(86_399)
    if start == noon == end:
        return lambda ns: epoch_day_ns + ns - start
    return lambda ns: epoch_day_ns + ns - offset_ns(ns // 10**9)


def _seconds_to_ns(text: str, *, file, line) -> int:
    """Decimal seconds after midnight as integer ns, exactly (rounded past the 9th decimal)."""
    s = text.strip()
    whole, _, frac = s.partition(".")
    if whole.isdigit() and (frac == "" or frac.isdigit()):
        ns = int(whole) * 10**9
        if len(frac) <= 9:
            return ns + int(frac.ljust(9, "0"))
        return ns + round(int(frac) / 10 ** (len(frac) - 9))
    try:
        value = float(s)
    except ValueError:
        value = float("nan")
    if not (0 <= value < 10**6):
        raise InputError("invalid time", file=file, line=line, field="time",
                         expected="seconds after midnight >= 0", got=text)
    return round(value * 1e9)


def _int_field(text: str, *, file, line, field: str) -> int:
    try:
        return int(text)
    except ValueError:
        try:
            f = float(text)
        except ValueError:
            f = float("nan")
        if f == f and f.is_integer():
            return int(f)
        raise InputError("not an integer", file=file, line=line, field=field,
                         got=text) from None


def companion_files(path: Path) -> list[Path]:
    """Files read besides ``path`` (the order-book sibling of a message file; none for a zip),
    so that a dataset's cache key covers them too."""
    path = Path(path)
    if path.suffix.lower() == ".zip" or "_message_" not in path.name:
        return []
    return [orderbook_path(path)]


def _zip_members(path: Path) -> tuple[str, bytes, str, bytes]:
    """The message and order-book members of a LOBSTER zip archive: (name, bytes) each."""
    try:
        with zipfile.ZipFile(path) as archive:
            found: dict[str, list[str]] = {"message": [], "orderbook": []}
            for name in archive.namelist():
                m = _MEMBER.search(name)
                if m:
                    found[m.group(2)].append(name)
            for kind in ("message", "orderbook"):
                if len(found[kind]) != 1:
                    raise InputError(
                        f"LOBSTER archive has {len(found[kind])} {kind} members", file=path,
                        expected=f"exactly one member named TICKER_YYYY-MM-DD_<start>_<end>_"
                        f"{kind}_N.csv", got=", ".join(archive.namelist()) or "no members")
            out = []
            for kind in ("message", "orderbook"):
                name = found[kind][0]
                try:
                    out += [name, archive.read(name)]
                except (zipfile.BadZipFile, EOFError, OSError, zlib.error) as exc:
                    raise InputError(f"member {name} is truncated or corrupt ({exc})",
                                     file=path) from None
            return out[0], out[1], out[2], out[3]
    except zipfile.BadZipFile as exc:
        raise InputError(f"not a readable zip archive, truncated or corrupt ({exc})",
                         file=path) from None


def _session_span(name: str) -> tuple[int, int] | None:
    """(start, end) ns after midnight from LOBSTER's ``_<start>_<end>_`` ms in a file name."""
    m = _SPAN.search(name)
    if not m:
        return None
    return int(m.group(1)) * 1_000_000, int(m.group(2)) * 1_000_000


def _book_column(j: int) -> str:
    level, k = divmod(j, 4)
    return f"{('ask_price', 'ask_size', 'bid_price', 'bid_size')[k]}_{level + 1}"


def _read_book(path: Path, text: bytes) -> np.ndarray:
    """The order-book file as an int64 array (rows, 4N), errors naming line and column."""
    lines = [ln for ln in text.split(b"\n")]
    while lines and not lines[-1].strip():
        lines.pop()
    try:
        arr = np.loadtxt(io.BytesIO(b"\n".join(lines)), delimiter=",", dtype=np.int64, ndmin=2)
    except ValueError:
        arr = None
    if arr is not None:
        if arr.shape[1] % 4:
            raise InputError("order book column count is not a multiple of 4", file=path,
                             line=1, expected="4N columns (ask price, ask size, bid price, "
                             "bid size per level)", got=arr.shape[1])
        return arr
    width = None
    out = []
    for lineno, raw in enumerate(lines, start=1):
        cells = raw.decode("utf-8", "replace").strip().split(",")
        if width is None:
            width = len(cells)
            if width % 4:
                raise InputError("order book column count is not a multiple of 4", file=path,
                                 line=lineno, expected="4N columns", got=width)
        if len(cells) != width:
            raise InputError("wrong number of columns", file=path, line=lineno,
                             expected=f"{width} columns", got=len(cells))
        out.append([_int_field(c, file=path, line=lineno, field=_book_column(j))
                    for j, c in enumerate(cells)])
    return np.asarray(out, dtype=np.int64)


@register_reader("lobster", companions=companion_files)
def read_lobster(path: Path, instrument: Instrument,
                 options: LobsterOptions = LobsterOptions()) -> tuple[np.ndarray, ReadReport]:
    """Read a LOBSTER zip archive, or a message file and its order-book sibling, into raw
    events; see the module docstring."""
    path = Path(path)
    inputs = _open_inputs(path)
    msg_file, book_file, name = inputs.msg_file, inputs.book_file, inputs.name
    to_utc = wall_to_utc_ns(inputs.day, ZoneInfo(EXCHANGE_TZ))
    report = ReadReport(file=str(path), format="lobster", timestamp_unit="s")
    tick = instrument.tick_size

    times, mtype, msize, mprice, mdir = _read_messages(msg_file, inputs.msg_bytes, report)
    n_msg = len(times)
    book = _read_book(book_file, inputs.book_bytes)
    if len(book) != n_msg:
        raise InputError(f"message file has {n_msg} rows but order book file {book_file} has "
                         f"{len(book)}", file=msg_file, expected="one order-book row per message",
                         got=len(book))
    levels = _VisibleBook(book, book_file, tick)
    m = _LEVELS.search(name)
    if m and int(m.group(1)) != levels.n_levels:
        report.warnings.append(f"file name says {m.group(1)} levels, the order book has "
                               f"{levels.n_levels}")
    _validate_book(book_file, levels.ask_px, levels.ask_sz, levels.bid_px, levels.bid_sz)

    # -- session cut: [first, last) messages kept; the book row before `first` seeds the book --
    first, last, cut_open = _session_cut(times, name, options, msg_file, report)
    seed = first - 1 if first > 0 else 0  # book row that seeds the book
    seed_ns = cut_open if first > 0 else int(times[0])

    # -- events -------------------------------------------------------------------------------
    ts_all = np.array([to_utc(int(t)) for t in times[first:last]], np.int64)
    seed_ts = to_utc(seed_ns)
    rows: list[tuple[int, int, float, float]] = []
    levels.seed(rows, seed, seed_ts)
    prev_row = book[seed]
    start = first if first > 0 else 1  # without a cut, row 0 is the seed itself
    if first == 0:
        _emit_trade(rows, 0, int(mtype[0]), int(mprice[0]), int(msize[0]), int(mdir[0]),
                    int(ts_all[0]), tick, msg_file, report, insert_at=0)
    for i in range(start, last):
        ts = int(ts_all[i - first])
        _emit_trade(rows, i, int(mtype[i]), int(mprice[i]), int(msize[i]), int(mdir[i]), ts,
                    tick, msg_file, report)
        row = book[i]
        if np.array_equal(row, prev_row):
            continue
        prev_row = row
        levels.update(rows, i, ts)
    report.has_snapshot = True
    kept = slice(first, last)
    for kind, what in ((6, "cross trades (type 6)"), (7, "trading halt messages (type 7)")):
        count = int((mtype[kept] == kind).sum())
        if count:
            report.warnings.append(f"{count} {what} counted but not emitted as events")

    events = np.zeros(len(rows), event_dtype)
    if rows:
        arr = np.array(rows, dtype=[("ev", "u8"), ("ts", "i8"), ("px", "f8"), ("qty", "f8")])
        events["ev"], events["px"], events["qty"] = arr["ev"], arr["px"], arr["qty"]
        events["exch_ts"] = events["local_ts"] = arr["ts"]
    check_raw_events(events, path, instrument)
    finish_report(report, events, seed_ts, int(ts_all[-1]) if len(ts_all) else None)
    return events, report


class _Inputs(NamedTuple):
    """The two files of a LOBSTER day as read: each one's name for errors (``archive[member]``
    inside a zip) and bytes, the message file's own name and the trading day it names."""

    msg_file: Path | str
    msg_bytes: bytes
    book_file: Path | str
    book_bytes: bytes
    name: str
    day: dt.date


def _open_inputs(path: Path) -> _Inputs:
    """The message and order-book bytes of a LOBSTER zip archive or of a message file and its
    order-book sibling."""
    if not path.is_file():
        raise InputError("data file not found" if not path.exists()
                         else "not a file (a folder?)", file=path)
    if zipfile.is_zipfile(path) or path.suffix.lower() == ".zip":
        msg_name, msg_bytes, book_name, book_bytes = _zip_members(path)
        msg_file, book_file = f"{path}[{msg_name}]", f"{path}[{book_name}]"
        name = Path(msg_name).name
        day = session_date(Path(name))
    else:
        book_path = orderbook_path(path)
        day = session_date(path)
        if not book_path.is_file():
            raise InputError(f"order book file not found: {book_path}", file=path,
                             expected=f"the sibling file {book_path.name}")
        msg_bytes, book_bytes = read_bytes(path), read_bytes(book_path)
        msg_file, book_file, name = path, book_path, path.name
    return _Inputs(msg_file, msg_bytes, book_file, book_bytes, name, day)


def _session_cut(times: np.ndarray, name: str, options: LobsterOptions, msg_file,
                 report: ReadReport) -> tuple[int, int, int]:
    """The messages kept, ``[first, last)``, and the cut's open time (ns after midnight);
    the dropped messages are counted in the report."""
    n_msg = len(times)
    span = _session_span(name) or (int(times[0]), int(times[-1]) + 1)
    cut_open = span[0] + round(options.skip_open_minutes * 60e9)
    cut_close = span[1] - round(options.skip_close_minutes * 60e9)
    first, last = 0, n_msg
    if options.skip_open_minutes or options.skip_close_minutes:
        first = int(np.searchsorted(times, cut_open, side="left")) if options.skip_open_minutes else 0
        last = (int(np.searchsorted(times, cut_close, side="left"))
                if options.skip_close_minutes else n_msg)
        report.count("dropped_open", first)
        report.count("dropped_close", n_msg - last)
        if last - first < 1:
            raise InputError("the session cut leaves no message", file=msg_file,
                             field="reader.skip_open_minutes / reader.skip_close_minutes",
                             expected=f"cuts shorter than the session "
                             f"({(span[1] - span[0]) / 60e9:.1f} min)",
                             got=f"{options.skip_open_minutes} + {options.skip_close_minutes}")
    return first, last, cut_open


class _VisibleBook:
    """The book rebuilt from LOBSTER's order-book rows (per side: ticks -> size), each row's
    visible levels diffed against it into depth rows (rules in the module docstring)."""

    def __init__(self, book: np.ndarray, book_file, tick: float) -> None:
        self.ask_px, self.ask_sz = book[:, 0::4], book[:, 1::4]
        self.bid_px, self.bid_sz = book[:, 2::4], book[:, 3::4]
        self.n_levels = book.shape[1] // 4
        self.book_file = book_file
        self.tick = tick
        self.digits = max(0, -int(np.floor(np.log10(tick)))) + 4
        self.state: tuple[dict[int, int], dict[int, int]] = ({}, {})  # bid, ask: ticks -> size
        self._px_cache: dict[int, float] = {}

    def price(self, t: int) -> float:
        v = self._px_cache.get(t)
        if v is None:
            v = self._px_cache[t] = round(t * self.tick, self.digits)
        return v

    def visible(self, i: int, side: int) -> list[tuple[int, int]]:
        """The (ticks, size) levels of book row ``i`` on ``side``, best first."""
        pxs, szs = ((self.bid_px[i], self.bid_sz[i]) if side == BID
                    else (self.ask_px[i], self.ask_sz[i]))
        name = "bid" if side == BID else "ask"
        return [(price_ticks(int(p) / PRICE_SCALE, self.tick, file=self.book_file, line=i + 1,
                             field=f"{name}_price_{j + 1}"), int(q))
                for j, (p, q) in enumerate(zip(pxs, szs))
                if p not in (DUMMY_ASK, DUMMY_BID) and q > 0]

    def seed(self, rows: list, i: int, ts: int) -> None:
        """Seed the book from row ``i``: per side a clear and the snapshot rows."""
        for side, flag in ((BID, SIDE_FLAG[BID]), (ASK, SIDE_FLAG[ASK])):
            valid = self.visible(i, side)
            if valid:
                rows.append((DEPTH_CLEAR_EVENT | flag, ts, self.price(valid[-1][0]), 0.0))
                for t, q in valid:
                    rows.append((DEPTH_SNAPSHOT_EVENT | flag, ts, self.price(t), float(q)))
                    self.state[side][t] = q

    def update(self, rows: list, i: int, ts: int) -> None:
        """Make the visible range of the book equal to row ``i``, a depth row per change."""
        for side, flag in ((BID, SIDE_FLAG[BID]), (ASK, SIDE_FLAG[ASK])):
            valid = self.visible(i, side)
            st = self.state[side]
            current = dict(valid)
            if len(valid) == self.n_levels:
                worst = valid[-1][0]
                gone = [t for t in st if t not in current
                        and (t >= worst if side == BID else t <= worst)]
            else:
                gone = [t for t in st if t not in current]
            for t in sorted(gone, reverse=side == BID):
                del st[t]
                rows.append((DEPTH_EVENT | flag, ts, self.price(t), 0.0))
            for t, q in valid:
                if st.get(t) != q:
                    st[t] = q
                    rows.append((DEPTH_EVENT | flag, ts, self.price(t), float(q)))


def _emit_trade(rows: list, i: int, kind: int, price_e4: int, size: int, direction: int, ts: int,
                tick: float, file, report: ReadReport, insert_at: int | None = None) -> None:
    """A trade row for an execution message (types 4 and 5), at its exact price: hidden
    executions may print between ticks (midpoint orders)."""
    if kind not in (4, 5):
        return
    px = price_e4 / PRICE_SCALE
    on_grid = abs(px / tick - round(px / tick)) <= 1e-6 * max(1.0, abs(px / tick)) + 1e-6
    if on_grid:
        px = price_ticks(px, tick, file=file, line=i + 1, field="price") * tick
        px = round(px, max(0, -int(np.floor(np.log10(tick)))) + 4)
    elif kind == 5:
        report.count("hidden_subtick_trades")
    else:
        raise InputError("visible execution price is not a multiple of the instrument's "
                         "tick_size", file=file, line=i + 1, field="price",
                         expected=f"a multiple of {tick}", got=px)
    flag = BUY_EVENT if direction == -1 else SELL_EVENT
    row = (TRADE_EVENT | flag, ts, px, float(size))
    if insert_at is None:
        rows.append(row)
    else:
        rows.insert(insert_at, row)


def _read_messages(file, text: bytes, report: ReadReport):
    """The message CSV as int64 columns (time ns after midnight, type, size, price, direction),
    with errors naming the line and field."""
    msg_lines = text.split(b"\n")
    while msg_lines and not msg_lines[-1].strip():
        msg_lines.pop()
    if not msg_lines:
        raise InputError("empty message file", file=file, expected="at least one message")
    n_msg = len(msg_lines)
    times = np.empty(n_msg, np.int64)
    mtype = np.empty(n_msg, np.int64)
    msize = np.empty(n_msg, np.int64)
    mprice = np.empty(n_msg, np.int64)
    mdir = np.empty(n_msg, np.int64)
    prev_ns = None
    prev_text = ""
    for i, raw in enumerate(msg_lines):
        lineno = i + 1
        cells = raw.decode("utf-8", "replace").strip().split(",")
        if len(cells) < len(MESSAGE_COLUMNS):
            raise InputError("too few columns", file=file, line=lineno,
                             expected=f"{len(MESSAGE_COLUMNS)} columns "
                             f"({', '.join(MESSAGE_COLUMNS)})", got=len(cells))
        ns = _seconds_to_ns(cells[0], file=file, line=lineno)
        if prev_ns is not None and ns < prev_ns:
            raise InputError(f"time goes backwards (line {lineno - 1} has {prev_text})",
                             file=file, line=lineno, field="time",
                             expected=f">= {prev_text}", got=cells[0])
        prev_ns, prev_text = ns, cells[0]
        kind = _int_field(cells[1], file=file, line=lineno, field="type")
        if kind not in TYPE_NAMES:
            raise InputError("unknown message type", file=file, line=lineno, field="type",
                             expected="an integer 1..7", got=cells[1])
        size = _int_field(cells[3], file=file, line=lineno, field="size")
        price = _int_field(cells[4], file=file, line=lineno, field="price")
        direction = _int_field(cells[5], file=file, line=lineno, field="direction")
        if kind != 7:
            if size <= 0:
                raise InputError("invalid size", file=file, line=lineno, field="size",
                                 expected="a size > 0", got=cells[3])
            if price <= 0:
                raise InputError("invalid price", file=file, line=lineno, field="price",
                                 expected="a price > 0 (dollars x 10000)", got=cells[4])
            if direction not in (1, -1):
                raise InputError("invalid direction", file=file, line=lineno,
                                 field="direction", expected="1 (buy) or -1 (sell)",
                                 got=cells[5])
        times[i], mtype[i], msize[i], mprice[i], mdir[i] = ns, kind, size, price, direction
        report.count(TYPE_NAMES[kind])
    report.lines = n_msg
    return times, mtype, msize, mprice, mdir


def _validate_book(path: Path, ask_px, ask_sz, bid_px, bid_sz) -> None:
    """Sizes >= 0, real prices > 0, visible levels strictly ordered away from the touch."""
    for name, px, sz, dummy in (("ask", ask_px, ask_sz, DUMMY_ASK), ("bid", bid_px, bid_sz,
                                                                      DUMMY_BID)):
        real = (px != DUMMY_ASK) & (px != DUMMY_BID)
        checks = [
            (sz < 0, "size", "invalid size", "a size >= 0"),
            (real & (px <= 0), "price", "invalid price",
             f"a price > 0 (dollars x 10000) or the dummy price {dummy}"),
        ]
        for bad, what, message, expected in checks:
            if bad.any():
                r, c = np.argwhere(bad)[0]
                raise InputError(message, file=path, line=int(r) + 1,
                                 field=f"{name}_{what}_{int(c) + 1}", expected=expected,
                                 got=int((sz if what == "size" else px)[r, c]))
        step = np.diff(px, axis=1)
        wrong = real[:, 1:] & real[:, :-1] & ((step <= 0) if name == "ask" else (step >= 0))
        if wrong.any():
            r, c = np.argwhere(wrong)[0]
            raise InputError(f"{name} prices out of order", file=path, line=int(r) + 1,
                             field=f"{name}_price_{int(c) + 2}",
                             expected=("above" if name == "ask" else "below")
                             + f" level {int(c) + 1} ({int(px[r, c])})", got=int(px[r, c + 1]))
