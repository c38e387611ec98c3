"""Binance combined-stream captures (formats A and B) -> raw canonical events.

Each line is ``<local receive time> <raw exchange JSON>``. The local time is in microseconds
(format A, 16 digits) or nanoseconds (format B, 19 digits); the unit is detected per file from
the first line's digit count (10 = s, 13 = ms, 16 = us, 19 = ns), every line must have that many
digits, and the unit is recorded in ``ReadReport.timestamp_unit``. Exchange times ``E`` / ``T``
are milliseconds. All timestamps in the events are nanoseconds.

Messages and what they become (row order = file order; within a diff, bids then asks, as in
``hftbacktest.data.utils.binancefutures.convert``):

- ``depthUpdate`` diffs (futures ``@depth@0ms``, spot ``@depth@100ms``): one ``DEPTH_EVENT``
  row per ``[price, qty]`` level (qty 0 deletes the level). exch_ts = ``T`` for futures; spot
  diffs have no ``T`` and use ``E``.
- ``trade``: one ``TRADE_EVENT`` row; ``m`` true (buyer is maker) is a sell aggressor
  (``SELL_EVENT``), else ``BUY_EVENT``; exch_ts = ``T``. Trades whose ``X`` is present and not
  ``MARKET`` (futures liquidation / ADL / insurance-fund fills) are skipped and counted as
  ``trade_not_market``, like hftbacktest's converter. A trade that an earlier line of the file
  already had (same id ``t``, side, price, size and ``T``: a block received or captured twice)
  is dropped: repair ``duplicate_trade``.
- REST snapshot ``{"lastUpdateId", "bids", "asks"}``: per non-empty side a
  ``DEPTH_CLEAR_EVENT`` at the side's last (worst) price, then one ``DEPTH_SNAPSHOT_EVENT`` row
  per level, exactly like hftbacktest's converter; exch_ts = ``T``, or the local receive time
  when the snapshot has no ``T`` (spot).
- ``bookTicker``: counted in the report, never emitted (the diffs carry the same book).
  Recognised by the stream name without a JSON parse; such a line is only checked to be a
  complete ``{...}`` frame.
- ``markPriceUpdate``: counted, ignored.
- An exchange error frame (``{"code", "msg"}``, bare or as a stream's ``data``) or a
  subscription reply (``{"result", "id"}``): counted as ``error_frame`` and listed in
  ``report.warnings``.
- Any other ``e``: an error naming the field ``e``.

Sequence checks and repair policy. Futures diffs carry ``pu``, which must equal the previous
diff's ``u``; spot diffs must satisfy ``U == previous u + 1``. A snapshot is usually received
after the diffs that follow it (the REST reply is slower than the stream): when a diff already
received covers ``lastUpdateId`` (previous ``u >= lastUpdateId``), the chain simply continues.
Otherwise the snapshot is newer than every diff so far: the diffs it already contains are
dropped (futures ``u < lastUpdateId``, spot ``u <= lastUpdateId``, as in Binance's "manage a
local order book" procedures; repair ``stale_diff_dropped``) and the first diff applied must
straddle it (futures ``U <= lastUpdateId <= u``, spot ``U <= lastUpdateId + 1 <= u``). Every
break is listed in ``report.gaps`` as ``{"line", "expected", "got"}`` and the diffs keep being
applied; levels left crossed by a missed diff are cleared by the grid builder. Diffs before the
first snapshot are emitted too (``report.has_snapshot`` tells whether the file has one).

Speed. The file is decompressed in one call and its line ends found by numpy. One compiled pass
(numba, cached on disk after the first call) then parses the local timestamps, sets
``bookTicker`` lines aside by their stream name (most of a futures capture), and parses in place
every trade and diff written in the exchange's own compact layout: flat ``data`` members of the
expected types, no escapes, prices and sizes as plain decimal strings converted exactly (an
integer mantissa of at most 2**53 over a power of ten up to 1e22 is correctly rounded, like
``float``). Any other line (snapshots, error frames, other layouts, anything malformed) goes
through the per-line code: orjson, with diff level arrays cut out as bytes and converted in one
columnar pass (polars' CSV parser, exact like ``float``). The sequence checks run in bulk
between snapshots, and a second compiled pass writes the rows in file order. The compiled pass
only accepts lines that the per-line code would read without error, so malformed lines are
reported by that code as before; impossible values (a zero price, say) are caught on the rows
afterwards, naming the same line and field whichever path read them.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import orjson
from numba import njit

from cmm.config import Instrument, NoReaderOptions
from cmm.data.events import (
    BUY_EVENT,
    DEPTH_CLEAR_EVENT,
    DEPTH_EVENT,
    DEPTH_SNAPSHOT_EVENT,
    EVENT_TYPE_MASK,
    SELL_EVENT,
    TRADE_EVENT,
    ReadReport,
    check_raw_events,
    event_dtype,
    range_checks,
)
from cmm.data.readers import register_reader
from cmm.data.readers.compressed import read_bytes
from cmm.errors import InputError

__all__ = ["read_binance", "TIMESTAMP_UNITS", "KNOWN_EVENTS"]

# digits of an epoch timestamp -> (unit, multiplier to nanoseconds)
TIMESTAMP_UNITS: dict[int, tuple[str, int]] = {
    10: ("s", 1_000_000_000),
    13: ("ms", 1_000_000),
    16: ("us", 1_000),
    19: ("ns", 1),
}
MS = 1_000_000  # exchange times (ms) -> ns

KNOWN_EVENTS = ("depthUpdate", "trade", "bookTicker", "markPriceUpdate")

_BID_DEPTH = DEPTH_EVENT | BUY_EVENT
_ASK_DEPTH = DEPTH_EVENT | SELL_EVENT
_BUY_TRADE = TRADE_EVENT | BUY_EVENT
_SELL_TRADE = TRADE_EVENT | SELL_EVENT

# Where a segment's prices come from: the bulk buffer of diff levels, or Python floats.
_BUF, _PY = 0, 1
# Level arrays -> one number per line: ',' becomes '\n'; brackets and quotes go.
_LEVEL_TABLE = bytes.maketrans(b",", b"\n")


class _Fail(Exception):
    """Internal: a problem on the current line, turned into InputError with file and line."""

    def __init__(self, message: str, field: str | None = None, expected: str | None = None,
                 got: object | None = None) -> None:
        super().__init__(message)
        self.message, self.field, self.expected, self.got = message, field, expected, got


class _Sequencer:
    """Update-id continuity of depth diffs across snapshots (policy in the module docstring)."""

    def __init__(self, report: ReadReport) -> None:
        self.report = report
        self.prev_u: int | None = None  # last applied diff's u
        self.pending: int | None = None  # lastUpdateId awaiting its first straddling diff

    def snapshot(self, last_update_id: int) -> None:
        covered = self.prev_u is not None and self.prev_u >= last_update_id
        self.pending = None if covered else last_update_id

    def diff(self, lineno: int, U: int, u: int, pu: int | None) -> bool:
        """Check one diff; False if it is stale (already in the snapshot) and must be dropped."""
        if U.__class__ is not int or u.__class__ is not int:
            bad = "U" if U.__class__ is not int else "u"
            raise _Fail("invalid value", bad, "an integer update id", U if bad == "U" else u)
        lid = self.pending
        if lid is not None:
            if (u <= lid) if pu is None else (u < lid):
                self.report.repair("stale_diff_dropped")
                return False
            need = lid + 1 if pu is None else lid
            if not U <= need <= u:
                self.report.gaps.append({"line": lineno, "expected": f"U <= {need} <= u",
                                         "got": f"U={U}, u={u}"})
            self.pending = None
        elif self.prev_u is not None:
            if pu is None:
                if U != self.prev_u + 1:
                    self.report.gaps.append({"line": lineno, "expected": f"U={self.prev_u + 1}",
                                             "got": f"U={U}"})
            elif pu != self.prev_u:
                self.report.gaps.append({"line": lineno, "expected": f"pu={self.prev_u}",
                                         "got": f"pu={pu}"})
        self.prev_u = u
        return True


@register_reader("binance")
def read_binance(path: Path, instrument: Instrument,
                 options: NoReaderOptions = NoReaderOptions()) -> tuple[np.ndarray, ReadReport]:
    """Read one Binance capture (see the module docstring) into raw ``event_dtype`` rows in
    file order with nanosecond timestamps, and a report of what was seen.

    ``instrument`` is not needed to decode the file (prices and sizes are absolute); it is
    accepted for the reader contract. Raises :class:`cmm.errors.InputError` naming the file,
    the 1-based line and the field for any malformed input.
    """
    path = Path(path)
    report = ReadReport(file=str(path), format="binance")
    data = read_bytes(path)
    nd, unit, mul = _detect_unit(path, *_first_line(data))
    report.timestamp_unit = unit

    # One compiled pass over the bytes: line bounds, local times, and every line in the
    # layouts of the fast path (see _scan) parsed; the rest are _K_OTHER, handled below.
    buf, s = _scan_lines(path, data, nd)
    kind, start, end = s.kind, s.start, s.end
    local_ts = s.ts[kind != _K_EMPTY]
    report.lines = len(local_ts)
    report.first_local_ts = int(local_ts[0]) * mul
    report.last_local_ts = int(local_ts[-1]) * mul

    lines = _LineReader(report, nd, mul)
    keep = np.ones(len(kind), dtype=np.bool_)  # False: a parsed diff dropped as stale
    _read_other_lines(path, data, s, lines, keep)
    is_trade = kind == _K_TRADE
    _count_messages(report, lines, kind)

    # Rows of the per-line code, as before; then every row in file order.
    py_events = lines.events(path, data)
    fast = (kind == _K_DEPTH) & keep
    total = (int(np.count_nonzero(is_trade)) + int(s.nrow[fast].sum()) + len(py_events))
    events = np.zeros(total, dtype=event_dtype)
    _assemble(kind, keep, s.ts, mul, s.exch, s.flag, s.nrow, s.off, s.px, s.qty,
              lines.rows_per_line(len(kind)), _as_2d(py_events, np.int64),
              _as_2d(py_events, np.float64), _as_2d(events, np.int64),
              _as_2d(events, np.float64))
    report.events = total
    try:
        check_raw_events(events, path, instrument)
    except InputError as err:
        raise _locate_in_file(path, events, s, is_trade, fast, lines, instrument) or err from None
    events = _drop_duplicate_trades(events, report, buf, start, end,
                                    lines.trade_lines(is_trade))
    return events, report


def _scan_lines(path: Path, data: bytes, nd: int) -> tuple[np.ndarray, _ScanArrays]:
    """The data as bytes and what :func:`_scan` made of each line; local timestamps that the
    scan could not read are read (or refused, naming the line) by the exact check."""
    buf = np.frombuffer(data, np.uint8)
    newlines = np.flatnonzero(buf == 10)
    n_lines = len(newlines) + 1
    s = _ScanArrays(n_lines, len(data))
    s.end[:-1] = newlines
    s.end[-1] = len(data)
    s.start[0] = 0
    s.start[1:] = newlines + 1
    del newlines
    ts_bad = _scan(buf, nd, _POW10, s.kind, s.ts, s.start, s.end, s.exch, s.upd, s.flag, s.nrow,
                   s.off, s.px, s.qty)
    if ts_bad:  # not nd digits and a space, or backwards: the exact check names the line
        local = _local_timestamps(path, data.split(b"\n"), nd)
        s.ts[s.kind != _K_EMPTY] = local  # (a separator int() accepts, e.g. a tab: _K_OTHER)
    return buf, s


def _read_other_lines(path: Path, data: bytes, s: _ScanArrays, lines: _LineReader,
                      keep: np.ndarray) -> None:
    """Every line the scan did not parse, through the per-line code in file order, with the
    parsed diffs' sequence checks in between; an error names the line and the field."""
    kind, start, end, nd = s.kind, s.start, s.end, lines.nd
    n_lines = len(kind)
    # Parsed diffs only need the sequencer; between two other lines (snapshots above all) it is
    # vectorised by _chain. Everything else goes through the per-line code in file order.
    stops = np.flatnonzero(kind == _K_OTHER).tolist()
    diff_lines = np.flatnonzero(kind == _K_DEPTH)
    diff_at = 0
    lineno = 0
    try:
        for k in stops + [n_lines]:
            # parsed diffs before this line
            stop = int(np.searchsorted(diff_lines, k, side="left"))
            if stop > diff_at:
                _chain(lines.seq, diff_lines[diff_at:stop], s.upd, s.flag, keep)
                diff_at = stop
            if k == n_lines:
                break
            line = data[start[k]:end[k]]
            lineno = k + 1
            lines.read(line, lineno)
    except _Fail as f:
        raise InputError(f.message, file=path, line=lineno, field=f.field, expected=f.expected,
                         got=f.got) from None
    except orjson.JSONDecodeError as exc:
        raise InputError(f"malformed JSON ({exc})", file=path, line=lineno,
                         field="json") from None
    except KeyError as exc:
        raise InputError("required field is missing", file=path, line=lineno,
                         field=str(exc.args[0])) from None
    except (TypeError, ValueError, AttributeError, IndexError) as exc:
        raise _diagnose(path, lineno, data[start[lineno - 1]:end[lineno - 1]], nd,
                        exc) from None


def _count_messages(report: ReadReport, lines: _LineReader, kind: np.ndarray) -> None:
    """The report's message counts: the per-line code's and the scan's together."""
    counts = lines.counts
    n_trade = lines.n_trade + int(np.count_nonzero(kind == _K_TRADE))
    n_depth = lines.n_depth + int(np.count_nonzero(kind == _K_DEPTH))
    counts["bookTicker"] += int(np.count_nonzero(kind == _K_BOOK))
    report.messages = {"depthUpdate": n_depth, "trade": n_trade,
                       **{k: v for k, v in counts.items() if v}}
    if counts["error_frame"]:
        report.warnings.insert(0, f"{counts['error_frame']} exchange error/reply frame(s) "
                                  "ignored")


def _locate_in_file(path: Path, events: np.ndarray, s: _ScanArrays, is_trade: np.ndarray,
                    fast: np.ndarray, lines: _LineReader, instrument: Instrument
                    ) -> InputError | None:
    """:func:`_locate_bad_value` over every row of the file: the scan's and the per-line
    code's segments, in row order, to name the line and field."""
    segs = [(k + 1, 1, "p") for k in np.flatnonzero(is_trade).tolist()]
    for k in np.flatnonzero(fast).tolist():
        segs += [(k + 1, int(s.nrow[k, 0]), "b"), (k + 1, int(s.nrow[k, 1]), "a")]
    segs = sorted(segs + list(zip(lines.seg_line, lines.seg_n, lines.seg_field)),
                  key=lambda seg: seg[0])
    all_n = np.asarray([seg[1] for seg in segs], dtype=np.int64)
    return _locate_bad_value(path, events, all_n, [seg[0] for seg in segs],
                             [seg[2] for seg in segs], instrument)


class _LineReader:
    """The per-line code: reads the lines the scan left, one at a time, into *segments* (a run
    of rows sharing type, side and timestamps), with diff level arrays cut out as bytes (one
    columnar parse later) and other prices and sizes as Python floats; counts the messages."""

    def __init__(self, report: ReadReport, nd: int, mul: int) -> None:
        self.report, self.nd, self.mul = report, nd, mul
        self.seq = _Sequencer(report)
        self.seg_ev: list[int] = []
        self.seg_n: list[int] = []
        self.seg_exch: list[int] = []  # ns
        self.seg_local: list[int] = []  # file units
        self.seg_line: list[int] = []
        self.seg_src: list[int] = []
        self.seg_field: list[str] = []
        self.chunks: list[bytes] = []  # diff level arrays, as bytes, in row order
        self.chunk_line: list[int] = []
        self.chunk_levels: list[int] = []
        self.py_px: list[float] = []
        self.py_qty: list[float] = []
        self.counts = {"snapshot": 0, "markPriceUpdate": 0, "trade_not_market": 0,
                       "error_frame": 0, "bookTicker": 0}
        self.n_depth = self.n_trade = 0

    def _segment(self, ev: int, n: int, exch: int, local: int, line: int, src: int,
                 field: str) -> None:
        self.seg_ev.append(ev)
        self.seg_n.append(n)
        self.seg_exch.append(exch)
        self.seg_local.append(local)
        self.seg_line.append(line)
        self.seg_src.append(src)
        self.seg_field.append(field)

    def read(self, line: bytes, lineno: int) -> None:
        """One line (1-based ``lineno``); problems raise :class:`_Fail` and the parsers' own
        errors, which the caller turns into an InputError naming the line."""
        nd = self.nd
        ts = int(line[:nd])
        if self._compact_diff(line, lineno, ts):
            return
        msg = orjson.loads(line[nd + 1:])
        if msg.__class__ is not dict:
            raise _Fail("malformed message", "json", "a JSON object", _short(msg))
        data_ = msg.get("data")
        if data_ is None and "e" in msg:  # a plain (not combined) stream
            data_ = msg
        if data_ is not None:
            self._stream_message(msg, data_, lineno, ts)
        elif "lastUpdateId" in msg:
            self._snapshot(msg, lineno, ts)
        elif "code" in msg or "result" in msg:
            self.counts["error_frame"] += 1
            self.report.warnings.append(f"line {lineno}: exchange frame {_short(msg)} ignored")
        else:
            raise _Fail("unknown message", "data",
                        "a combined-stream frame {stream, data} or a depth snapshot "
                        "{lastUpdateId, bids, asks}", _short(msg))

    def _compact_diff(self, line: bytes, lineno: int, ts: int) -> bool:
        """Fast path for combined-stream depth diffs: parse the header, cut out the levels.
        False when the line is not in that layout."""
        nd = self.nd
        i = line.find(b',"b":[', nd)
        if not (i >= 0 and line.startswith(b'{"stream":', nd + 1)
                and line.find(b'"e":"depthUpdate"', nd, i) >= 0):
            return False
        j = line.find(b'],"a":[', i)
        bchunk = line[i + 6:j]
        achunk = line[j + 7:-3]
        # no ':' in the level arrays: "b" and "a" are the last keys, nothing between
        if not (j >= 0 and line.endswith(b"]}}") and bchunk.find(b":") < 0
                and achunk.find(b":") < 0):
            return False
        h = orjson.loads(line[nd + 1:i] + b"}}")["data"]
        self.n_depth += 1
        pu = h.get("pu")
        if not self.seq.diff(lineno, h["U"], h["u"], pu):
            return True
        exch = h["E"] if pu is None else h["T"]
        if exch.__class__ is not int:
            raise _Fail("exchange time is not an integer",
                        "E" if pu is None else "T", "milliseconds", exch)
        exch *= MS
        nb = bchunk.count(b"[")
        na = achunk.count(b"[")
        self._segment(_BID_DEPTH, nb, exch, ts, lineno, _BUF, "b")
        self._segment(_ASK_DEPTH, na, exch, ts, lineno, _BUF, "a")
        for chunk, n in ((bchunk, nb), (achunk, na)):
            if n:
                self.chunks.append(chunk)
                self.chunk_line.append(lineno)
                self.chunk_levels.append(n)
        return True

    def _stream_message(self, msg: dict, data_: object, lineno: int, ts: int) -> None:
        """A stream's message (``data`` of a combined stream, or a plain stream's frame)."""
        counts = self.counts
        if data_.__class__ is not dict:
            raise _Fail("malformed message", "data", "a JSON object", _short(data_))
        e = data_.get("e")
        if e == "trade":
            x = data_.get("X")
            if x is not None and x != "MARKET":
                counts["trade_not_market"] += 1
                return
            self.n_trade += 1
            exch = data_["T"]
            if exch.__class__ is not int:
                raise _Fail("exchange time is not an integer", "T", "milliseconds",
                            exch)
            m = data_["m"]
            if m.__class__ is not bool:
                raise _Fail("invalid value", "m", "true or false", m)
            self._segment(_SELL_TRADE if m else _BUY_TRADE, 1, exch * MS, ts, lineno, _PY, "p")
            self.py_px.append(float(data_["p"]))
            self.py_qty.append(float(data_["q"]))
        elif e == "depthUpdate":  # not in the fast path's layout: parse in full
            self.n_depth += 1
            pu = data_.get("pu")
            if not self.seq.diff(lineno, data_["U"], data_["u"], pu):
                return
            exch = data_["E"] if pu is None else data_["T"]
            if exch.__class__ is not int:
                raise _Fail("exchange time is not an integer",
                            "E" if pu is None else "T", "milliseconds", exch)
            for side, ev in (("b", _BID_DEPTH), ("a", _ASK_DEPTH)):
                levels = data_[side]
                _levels_to(levels, side, self.py_px, self.py_qty)
                self._segment(ev, len(levels), exch * MS, ts, lineno, _PY, side)
        elif e == "markPriceUpdate":
            counts["markPriceUpdate"] += 1
        elif e == "bookTicker" or (e is None and "@bookTicker" in msg.get("stream", "")):
            counts["bookTicker"] += 1
        elif e is None and ("code" in data_ or "result" in data_):
            counts["error_frame"] += 1
            self.report.warnings.append(f"line {lineno}: exchange frame {_short(data_)} "
                                        "ignored")
        elif e is None:
            raise _Fail("required field is missing", "e",
                        "a message type: " + ", ".join(KNOWN_EVENTS))
        else:
            raise _Fail("unknown message type", "e", ", ".join(KNOWN_EVENTS), e)

    def _snapshot(self, msg: dict, lineno: int, ts: int) -> None:
        """A REST depth snapshot: per non-empty side a clear row, then the level rows."""
        py_px, py_qty = self.py_px, self.py_qty
        self.counts["snapshot"] += 1
        self.report.has_snapshot = True
        snap = msg["lastUpdateId"]
        if snap.__class__ is not int:
            raise _Fail("invalid value", "lastUpdateId", "an integer", snap)
        exch = msg.get("T")
        if exch is None:
            exch = ts * self.mul
        elif exch.__class__ is not int:
            raise _Fail("exchange time is not an integer", "T", "milliseconds", exch)
        else:
            exch *= MS
        for side, ev in (("bids", BUY_EVENT), ("asks", SELL_EVENT)):
            levels = msg[side]
            if levels.__class__ is not list:
                raise _Fail("invalid value", side, "a list of [price, qty]",
                            _short(levels))
            if not levels:
                continue
            _levels_to(levels, side, py_px, py_qty)
            # the clear row goes before the level rows: insert its price and qty
            at = len(py_px) - len(levels)
            py_px.insert(at, py_px[-1])
            py_qty.insert(at, 0.0)
            self._segment(DEPTH_CLEAR_EVENT | ev, 1, exch, ts, lineno, _PY,
                          f"{side}[{len(levels) - 1}]")
            self._segment(DEPTH_SNAPSHOT_EVENT | ev, len(levels), exch, ts, lineno, _PY, side)
        self.seq.snapshot(snap)

    def events(self, path: Path, data: bytes) -> np.ndarray:
        """The segments' rows as events (local times in ns), the level bytes parsed in one
        columnar pass; a malformed level array is an error naming its line."""
        n = np.asarray(self.seg_n, dtype=np.int64)
        py_total = int(n.sum())
        py_events = np.zeros(py_total, dtype=event_dtype)
        if py_total:
            values = _parse_levels(self.chunks, 2 * sum(self.chunk_levels))
            if values is None:
                raise _locate_bad_levels(path, data.split(b"\n"), self.nd, self.chunks,
                                         self.chunk_line, self.chunk_levels)
            py_events["ev"] = np.repeat(np.asarray(self.seg_ev, dtype=np.uint64), n)
            py_events["exch_ts"] = np.repeat(np.asarray(self.seg_exch, dtype=np.int64), n)
            py_events["local_ts"] = np.repeat(
                np.asarray(self.seg_local, dtype=np.int64) * self.mul, n)
            from_buf = np.repeat(np.asarray(self.seg_src, dtype=np.int8) == _BUF, n)
            px = np.empty(py_total)
            qty = np.empty(py_total)
            px[from_buf] = values[0::2]
            qty[from_buf] = values[1::2]
            from_py = ~from_buf
            px[from_py] = self.py_px
            qty[from_py] = self.py_qty
            py_events["px"] = px
            py_events["qty"] = qty
        return py_events

    def rows_per_line(self, n_lines: int) -> np.ndarray:
        """How many of :meth:`events`' rows each line has (0-based lines)."""
        py_rows = np.zeros(n_lines, dtype=np.int64)
        np.add.at(py_rows, np.asarray(self.seg_line, dtype=np.int64) - 1,
                  np.asarray(self.seg_n, dtype=np.int64))
        return py_rows

    def trade_lines(self, is_trade: np.ndarray) -> np.ndarray:
        """The 0-based line of every trade row of the file, the scan's (``is_trade``) and
        this code's, in row order."""
        trade_lines = np.flatnonzero(is_trade)
        if len(self.seg_line):  # trades the per-line code read (0-based lines)
            trade_lines = np.sort(np.concatenate([trade_lines, np.asarray(
                [ln - 1 for ln, ev in zip(self.seg_line, self.seg_ev)
                 if ev & EVENT_TYPE_MASK == TRADE_EVENT], dtype=np.int64)]))
        return trade_lines


def _chain(seq: _Sequencer, lines: np.ndarray, upd: np.ndarray, flag: np.ndarray,
           keep: np.ndarray) -> None:
    """``seq.diff`` on consecutive parsed diffs (0-based line numbers ``lines``), in bulk: once
    no snapshot is pending, each diff only has to continue the previous one."""
    U, u, pu = upd[lines, 0], upd[lines, 1], upd[lines, 2]
    has_pu = (flag[lines] & _F_PU) != 0
    seq_diff = seq.diff
    n = len(lines)
    a = 0
    while a < n and (n - a < 16 or seq.pending is not None or seq.prev_u is None):
        if not seq_diff(int(lines[a]) + 1, int(U[a]), int(u[a]),
                        int(pu[a]) if has_pu[a] else None):
            keep[lines[a]] = False
        a += 1
    if a == n:
        return
    prev = np.empty(n - a, dtype=np.int64)
    prev[0] = seq.prev_u
    prev[1:] = u[a:-1]
    fut = has_pu[a:]
    bad = np.where(fut, pu[a:] != prev, U[a:] != prev + 1)
    for i in np.flatnonzero(bad).tolist():
        k = a + i
        if fut[i]:
            got, want = f"pu={int(pu[k])}", f"pu={int(prev[i])}"
        else:
            got, want = f"U={int(U[k])}", f"U={int(prev[i]) + 1}"
        seq.report.gaps.append({"line": int(lines[k]) + 1, "expected": want, "got": got})
    seq.prev_u = int(u[-1])


# ---------------------------------------------------------------------------------------------
# the compiled scan

# what _scan made of a line
_K_EMPTY, _K_BOOK, _K_TRADE, _K_DEPTH, _K_OTHER = 0, 1, 2, 3, 4
_F_PU, _F_SELL = 1, 2  # flag bits: a diff with "pu" (futures); a trade with "m" true
_MAX_MS = (2**63 - 1) // MS  # the largest exchange time (ms) whose ns fit in int64
_POW10 = np.array([float(10**k) for k in range(23)])  # exact doubles


class _ScanArrays:
    """Per-line outputs of :func:`_scan` and the parsed numbers."""

    def __init__(self, n_lines: int, n_bytes: int) -> None:
        self.kind = np.empty(n_lines, np.uint8)
        self.ts = np.zeros(n_lines, np.int64)  # local time, file units
        self.start = np.empty(n_lines, np.int64)  # line bounds in the data
        self.end = np.empty(n_lines, np.int64)
        self.exch = np.empty(n_lines, np.int64)  # ns
        self.upd = np.empty((n_lines, 3), np.int64)  # diffs: U, u, pu
        self.flag = np.zeros(n_lines, np.uint8)
        self.nrow = np.zeros((n_lines, 2), np.int64)  # diffs: bid and ask levels
        self.off = np.empty(n_lines, np.int64)  # first number in px / qty
        # a level takes at least 10 bytes (["1","1"],), a trade line more
        cap = n_bytes // 10 + 16
        self.px = np.empty(cap)
        self.qty = np.empty(cap)


_KEY_E, _KEY_EE, _KEY_T, _KEY_U, _KEY_UU, _KEY_PU, _KEY_M, _KEY_P, _KEY_Q, _KEY_X = range(10)
_PREFIX = np.frombuffer(b'{"stream":"', np.uint8)
_DATA = np.frombuffer(b'","data":{', np.uint8)
_BOOK = np.frombuffer(b'@bookTicker"', np.uint8)
_MARKET = np.frombuffer(b"MARKET", np.uint8)
_TRADE = np.frombuffer(b"trade", np.uint8)
_DEPTH = np.frombuffer(b"depthUpdate", np.uint8)


@njit(cache=True)
def _at(buf, p, n, word):
    """Whether ``word`` is at ``buf[p:]``."""
    m = len(word)
    if p + m > n:
        return False
    for i in range(m):
        if buf[p + i] != word[i]:
            return False
    return True


# Speed notes, measured: these helpers are plain @njit functions, which LLVM inlines well;
# numba's own inline="always" made the level parsing 2-3x slower. Their loops test the bound
# inside ``while True``, which compiles better than ``while p < n`` with a break.


@njit(cache=True)
def _string_end(buf, p, n):
    """The position after the JSON string opening at ``p``, or -1 unless it is printable ASCII
    without escapes."""
    while True:
        p += 1
        if p >= n:
            return -1
        c = buf[p]
        if c == 34:
            return p + 1
        if c < 32 or c > 126 or c == 92:
            return -1


@njit(cache=True)
def _decimal(buf, p, n, pow10, signed):
    """The JSON string at ``p`` as ``-?digits(.digits)?`` -> (end after the closing quote, value)
    with end -1 if it is not one: exact (an integer mantissa <= 2**53 over an exact power of
    ten is correctly rounded, like ``float``)."""
    if p >= n or buf[p] != 34:
        return -1, 0.0
    p += 1
    neg = False
    if signed and p < n and buf[p] == 45:
        neg = True
        p += 1
    m = 0
    digits = 0
    frac = -1  # digits after the point; -1: no point
    while True:
        if p >= n:
            return -1, 0.0
        c = buf[p]
        d = np.int64(c) - 48
        if 0 <= d <= 9:
            m = m * 10 + d
            digits += 1
            frac += frac >= 0
        elif c == 46 and frac < 0 and digits > 0:
            frac = 0
        else:
            break
        p += 1
    if c != 34 or digits == 0 or frac == 0 or frac > 22 or digits > 18 or m > 9007199254740992:
        return -1, 0.0
    v = m / pow10[max(frac, 0)]
    return p + 1, -v if neg else v


@njit(cache=True)
def _levels(buf, p, n, pow10, px, qty, nv):
    """The level array whose '[' is at ``p``: -> (end after its ']', levels) with end -1 unless
    it is ``[["price","qty"],...]`` with unsigned decimals; values written from ``nv``."""
    p += 1
    count = 0
    if p < n and buf[p] == 93:
        return p + 1, 0
    while True:
        if p >= n or buf[p] != 91 or nv + count >= len(px):
            return -1, 0
        p, a = _decimal(buf, p + 1, n, pow10, False)
        if p < 0 or p >= n or buf[p] != 44:
            return -1, 0
        p, b = _decimal(buf, p + 1, n, pow10, False)
        if p < 0 or p + 1 >= n or buf[p] != 93:
            return -1, 0
        px[nv + count] = a
        qty[nv + count] = b
        count += 1
        p += 1
        if buf[p] == 93:
            return p + 1, count
        if buf[p] != 44:
            return -1, 0
        p += 1


@njit(cache=True)
def _frame(buf, p, n, k, pow10, exch, upd, flag, nrow, off, px, qty, nv):
    """The frame from ``p`` if it is a ``{"stream":...,"data":{...}}`` trade or diff in the
    layouts the per-line code would turn into rows without error (compact, printable ASCII, no
    escapes, flat ``data`` members with the expected types, no repeated key; a diff as in
    that code's fast path). -> (kind, end of the frame, numbers used); _K_OTHER if not."""
    if not _at(buf, p, n, _PREFIX):
        return _K_OTHER, -1, nv
    p = _string_end(buf, p + len(_PREFIX) - 1, n)
    if p < 0 or not _at(buf, p - 1, n, _DATA):
        return _K_OTHER, -1, nv
    p += len(_DATA) - 1
    seen = 0
    etype = 0  # 1 trade, 2 diff
    U = u = pu = E = T = -1
    m = -1
    p_at = q_at = -1
    first = True
    while True:
        # a member: "key": value
        if p >= n or buf[p] != 34:
            return _K_OTHER, -1, nv
        ks = p + 1
        p = _string_end(buf, p, n)
        if p < 0 or p >= n or buf[p] != 58:
            return _K_OTHER, -1, nv
        klen = p - 1 - ks
        p += 1
        key = -1
        if klen == 1:
            c = buf[ks]
            if c == 101:  # e
                key = _KEY_E
            elif c == 69:  # E
                key = _KEY_EE
            elif c == 84:  # T
                key = _KEY_T
            elif c == 85:  # U
                key = _KEY_U
            elif c == 117:  # u
                key = _KEY_UU
            elif c == 109:  # m
                key = _KEY_M
            elif c == 112:  # p
                key = _KEY_P
            elif c == 113:  # q
                key = _KEY_Q
            elif c == 88:  # X
                key = _KEY_X
            elif c == 98 and p < n and buf[p] == 91:  # "b":[ -> the diff's level arrays
                break
        elif klen == 2 and buf[ks] == 112 and buf[ks + 1] == 117:  # pu
            key = _KEY_PU
        if key >= 0:
            if seen & (1 << key):
                return _K_OTHER, -1, nv
            seen |= 1 << key
        if p >= n:
            return _K_OTHER, -1, nv
        c = buf[p]
        vs = p
        if c == 34:  # string
            p = _string_end(buf, p, n)
            if p < 0:
                return _K_OTHER, -1, nv
            if key == _KEY_E:
                if _at(buf, vs + 1, n, _TRADE) and p == vs + 2 + len(_TRADE):
                    etype = 1
                elif _at(buf, vs + 1, n, _DEPTH) and p == vs + 2 + len(_DEPTH):
                    etype = 2
                else:
                    return _K_OTHER, -1, nv
            elif key == _KEY_X:
                if not (_at(buf, vs + 1, n, _MARKET) and p == vs + 2 + len(_MARKET)):
                    return _K_OTHER, -1, nv
            elif key == _KEY_P:
                p_at = vs
            elif key == _KEY_Q:
                q_at = vs
            elif key >= 0:
                return _K_OTHER, -1, nv
        elif 48 <= c <= 57:  # an unsigned integer of at most 18 digits
            v = np.int64(c) - 48
            while True:
                p += 1
                if p >= n:
                    return _K_OTHER, -1, nv
                d = np.int64(buf[p]) - 48
                if not 0 <= d <= 9:
                    break
                v = v * 10 + d
            c = buf[p]
            # at most 18 digits, no leading zero, not a fraction or exponent
            if p - vs > 18 or (buf[vs] == 48 and p - vs > 1) or c == 46 or c == 101 or c == 69:
                return _K_OTHER, -1, nv
            if key == _KEY_EE:
                E = v
            elif key == _KEY_T:
                T = v
            elif key == _KEY_U:
                U = v
            elif key == _KEY_UU:
                u = v
            elif key == _KEY_PU:
                pu = v
            elif key >= 0:
                return _K_OTHER, -1, nv
        elif c == 116 or c == 102 or c == 110:  # true, false, null
            if _at(buf, p, n, _TRUE):
                p += 4
                if key == _KEY_M:
                    m = 1
                elif key >= 0:
                    return _K_OTHER, -1, nv
            elif _at(buf, p, n, _FALSE):
                p += 5
                if key == _KEY_M:
                    m = 0
                elif key >= 0:
                    return _K_OTHER, -1, nv
            elif _at(buf, p, n, _NULL):
                p += 4
                if key >= 0:
                    return _K_OTHER, -1, nv
            else:
                return _K_OTHER, -1, nv
        else:
            return _K_OTHER, -1, nv
        if p >= n:
            return _K_OTHER, -1, nv
        if buf[p] == 44:
            p += 1
            first = False
        elif buf[p] == 125:  # end of data
            break
        else:
            return _K_OTHER, -1, nv

    if etype == 1:  # a market trade
        if (buf[p] != 125 or p + 1 >= n or buf[p + 1] != 125 or T < 0 or T > _MAX_MS or m < 0
                or p_at < 0 or q_at < 0 or nv >= len(px)):
            return _K_OTHER, -1, nv
        e1, price = _decimal(buf, p_at, n, pow10, True)
        e2, size = _decimal(buf, q_at, n, pow10, True)
        if e1 < 0 or e2 < 0:
            return _K_OTHER, -1, nv
        exch[k] = T * 1_000_000
        flag[k] = _F_SELL if m == 1 else 0
        off[k] = nv
        px[nv] = price
        qty[nv] = size
        return _K_TRADE, p + 2, nv + 1
    if etype != 2 or buf[p] == 125 or first or U < 0 or u < 0:
        return _K_OTHER, -1, nv
    # a diff, at '[' of "b": its header must have U, u and T (with pu) or E (without)
    has_pu = pu >= 0
    t = T if has_pu else E
    if t < 0 or t > _MAX_MS:
        return _K_OTHER, -1, nv
    p, nb = _levels(buf, p, n, pow10, px, qty, nv)
    if p < 0 or not _at(buf, p, n, _ASKS):
        return _K_OTHER, -1, nv
    p, na = _levels(buf, p + len(_ASKS) - 1, n, pow10, px, qty, nv + nb)
    if p < 0 or p + 1 >= n or buf[p] != 125 or buf[p + 1] != 125:
        return _K_OTHER, -1, nv
    exch[k] = t * 1_000_000
    upd[k, 0] = U
    upd[k, 1] = u
    upd[k, 2] = pu
    flag[k] = _F_PU if has_pu else 0
    nrow[k, 0] = nb
    nrow[k, 1] = na
    off[k] = nv
    return _K_DEPTH, p + 2, nv + nb + na


_TRUE = np.frombuffer(b"true", np.uint8)
_FALSE = np.frombuffer(b"false", np.uint8)
_NULL = np.frombuffer(b"null", np.uint8)
_ASKS = np.frombuffer(b',"a":[', np.uint8)


@njit(cache=True, nogil=True)
def _scan(buf, nd, pow10, kind, ts, start, end, exch, upd, flag, nrow, off, px, qty):
    """Every line (``start`` / ``end``: its bounds): local time (file units) and kind; trades
    and diffs parsed (see :func:`_frame`). -> whether any local time is not ``nd`` digits and a
    space (without a leading zero, below 2**63 - 1) or goes backwards."""
    nv = 0
    bad = False
    prev = -1
    for k in range(len(kind)):
        s = start[k]
        e = end[k]
        if s == e:
            kind[k] = _K_EMPTY
            continue
        ok = e - s > nd and buf[s] != 48
        v = 0
        if ok:
            for i in range(nd):
                c = buf[s + i]
                if not 48 <= c <= 57:
                    ok = False
                    break
                v = v * 10 + (np.int64(c) - 48)  # 19 digits may wrap: checked below
            ok = ok and buf[s + nd] == 32
            if ok and nd == 19:
                ok = _below_int64_max(buf, s)
        if not ok:
            bad = True  # the exact check decides (int() accepts a tab, say)
        else:
            if v < prev:
                bad = True
            prev = v
            ts[k] = v
        if _book(buf, s, nd, e):
            kind[k] = _K_BOOK if buf[e - 1] == 125 else _K_OTHER
        elif ok:
            kd, end_at, nv = _frame(buf, s + nd + 1, e, k, pow10, exch, upd, flag, nrow, off,
                                    px, qty, nv)
            kind[k] = kd if end_at == e else _K_OTHER
        else:
            kind[k] = _K_OTHER
    return bad


@njit(cache=True)
def _book(buf, s, nd, e):
    """``line.find(b'@bookTicker"', nd, nd + 80) >= 0`` for the line ``buf[s:e]``."""
    m = len(_BOOK)
    q = s + nd
    lim = min(s + nd + 80, e) - m
    while q <= lim:
        if buf[q] == 64 and _at(buf, q, e, _BOOK):
            return True
        q += 1
    return False


_INT64_MAX = np.frombuffer(b"9223372036854775807", np.uint8)


@njit(cache=True)
def _below_int64_max(buf, s):
    for i in range(19):
        if buf[s + i] != _INT64_MAX[i]:
            return buf[s + i] < _INT64_MAX[i]
    return False


@njit(cache=True, nogil=True)
def _assemble(kind, keep, ts, mul, exch, flag, nrow, off, px, qty, py_rows, py_i, py_f, out_i,
              out_f):
    """Rows in file order: parsed trades and kept diffs from the scan's numbers, the per-line
    code's rows in between. ``*_i`` / ``*_f``: event arrays seen as int64 / float64 (n, 8)."""
    pos = 0
    pp = 0
    for k in range(len(kind)):
        kd = kind[k]
        if kd == _K_TRADE:
            out_i[pos, 0] = _SELL_TRADE if flag[k] & _F_SELL else _BUY_TRADE
            out_i[pos, 1] = exch[k]
            out_i[pos, 2] = ts[k] * mul
            out_f[pos, 3] = px[off[k]]
            out_f[pos, 4] = qty[off[k]]
            pos += 1
        elif kd == _K_DEPTH:
            if keep[k]:
                o = off[k]
                nb = nrow[k, 0]
                t = ts[k] * mul
                x = exch[k]
                for i in range(nb + nrow[k, 1]):
                    out_i[pos, 0] = _BID_DEPTH if i < nb else _ASK_DEPTH
                    out_i[pos, 1] = x
                    out_i[pos, 2] = t
                    out_f[pos, 3] = px[o + i]
                    out_f[pos, 4] = qty[o + i]
                    pos += 1
        else:
            for _ in range(py_rows[k]):
                for j in range(3):
                    out_i[pos, j] = py_i[pp, j]
                for j in range(3, 5):
                    out_f[pos, j] = py_f[pp, j]
                pos += 1
                pp += 1
    return pos


def _as_2d(events: np.ndarray, dtype: type) -> np.ndarray:
    """An event array's memory as (n, 8) of int64 or float64 (its 8 fields are all 8 bytes)."""
    return events.view(dtype).reshape(len(events), 8)


def _first_line(data: bytes) -> tuple[int, bytes]:
    """The first line that is not blank, and its 0-based number (read_bytes: there is one)."""
    k = pos = 0
    while True:
        e = data.find(b"\n", pos)
        line = data[pos:] if e < 0 else data[pos:e]
        if line.strip():
            return k, line
        pos = e + 1
        k += 1


# ---------------------------------------------------------------------------------------------
# timestamps


def _detect_unit(path: Path, first_no: int, first: bytes) -> tuple[int, str, int]:
    """Digits of the first non-blank line's local timestamp -> (digits, unit, multiplier to
    ns); ``first_no`` is that line's 0-based number."""
    nd = first.find(b" ")
    if nd not in TIMESTAMP_UNITS or not first[:nd].isdigit():
        raise InputError("cannot detect the local timestamp unit", file=path,
                         line=first_no + 1, field="local_ts",
                         expected="a 10, 13, 16 or 19 digit epoch time (s, ms, us or ns) "
                                  "followed by a space",
                         got=first[:30].decode("utf-8", "replace"))
    unit, mul = TIMESTAMP_UNITS[nd]
    return nd, unit, mul


def _local_timestamps(path: Path, lines: list[bytes], nd: int) -> np.ndarray:
    """Every non-blank line's local timestamp (file units): ``nd`` digits then a space, never
    going backwards."""
    try:
        # int() accepts the trailing space and rejects anything else but digits
        local = np.array([int(line[:nd + 1]) for line in lines if line], dtype=np.int64)
        bad = (local < 10 ** (nd - 1)) | (local >= min(10 ** nd, 2 ** 63 - 1))
    except (ValueError, OverflowError):
        bad = None
    if bad is None or bad.any():
        for k, line in enumerate(lines):
            if line and not (line[:nd].isdigit() and line[nd:nd + 1] == b" "):
                raise InputError(f"local timestamp does not have {nd} digits (unit detected "
                                 f"from the first line: {TIMESTAMP_UNITS[nd][0]})", file=path,
                                 line=k + 1, field="local_ts",
                                 expected=f"{nd} digits then a space",
                                 got=line[:nd + 3].decode("utf-8", "replace"))
    back = np.diff(local) < 0
    if back.any():
        i = int(np.argmax(back)) + 1
        linenos = [k + 1 for k, line in enumerate(lines) if line]
        raise InputError(f"local timestamp goes backwards (line {linenos[i]} vs previous line "
                         f"{linenos[i - 1]})", file=path, line=linenos[i], field="local_ts",
                         expected=f">= {int(local[i - 1])}", got=int(local[i]))
    return local


# ---------------------------------------------------------------------------------------------
# numbers


def _num(value: object, field: str) -> float:
    """A price or quantity given as a JSON string (or number)."""
    if value.__class__ in (str, float, int):
        try:
            return float(value)
        except ValueError:
            pass
    raise _Fail("unparsable number", field, "a decimal number as a string", _short(value))


def _levels_to(levels: object, side: str, px: list[float], qty: list[float]) -> None:
    """Append a ``[[price, qty], ...]`` array's floats; a bad level raises naming its index."""
    if not isinstance(levels, list):
        raise _Fail("invalid value", side, "a list of [price, qty]", _short(levels))
    n0 = len(px)
    try:
        for p, q in levels:
            px.append(float(p))
            qty.append(float(q))
    except (TypeError, ValueError):
        del px[n0:], qty[n0:]
        for k, level in enumerate(levels):
            if not isinstance(level, list) or len(level) != 2:
                raise _Fail("invalid level", f"{side}[{k}]", "[price, qty]",
                            _short(level)) from None
            _num(level[0], f"{side}[{k}][0]")
            _num(level[1], f"{side}[{k}][1]")
        raise


def _parse_levels(chunks: list[bytes], n_numbers: int) -> np.ndarray | None:
    """All diff levels' numbers in order (price, qty, price, ...), or None when the level
    arrays are not well formed."""
    if not chunks:
        return np.empty(0)
    buf = b",".join(chunks)
    if buf.count(b"[") != buf.count(b"]"):
        return None
    buf = buf.translate(_LEVEL_TABLE, b'[]"')
    values = None
    try:
        import polars as pl

        col = pl.read_csv(buf, has_header=False, new_columns=["v"],
                          schema_overrides=[pl.Float64])["v"]
        if col.null_count() == 0:
            values = col.to_numpy()
    except Exception:  # noqa: BLE001 - any parser failure: try the next parser
        values = None
    if values is None or len(values) != n_numbers:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error", DeprecationWarning)
                values = np.fromstring(buf.replace(b"\n", b","), dtype=np.float64, sep=",")
        except (DeprecationWarning, ValueError):
            return None
    return values if len(values) == n_numbers else None


# ---------------------------------------------------------------------------------------------
# locating errors


def _short(obj: object) -> str:
    text = obj if isinstance(obj, str) else orjson.dumps(obj).decode()
    return text if len(text) <= 120 else text[:117] + "..."


def _diagnose(path: Path, lineno: int, line: bytes, nd: int, exc: Exception) -> InputError:
    """Re-parse one line carefully to name the field behind an unexpected exception."""
    try:
        msg = orjson.loads(line[nd + 1:])
    except orjson.JSONDecodeError as err:
        return InputError(f"malformed JSON ({err})", file=path, line=lineno, field="json")
    data = msg.get("data", msg) if isinstance(msg, dict) else msg
    if isinstance(data, dict):
        checks: list[tuple[str, str]] = []
        if data.get("e") == "depthUpdate":
            checks = [("b", "levels"), ("a", "levels"), ("U", "int"), ("u", "int"),
                      ("E", "int"), ("T", "int")]
        elif data.get("e") == "trade":
            checks = [("p", "num"), ("q", "num"), ("T", "int")]
        elif "lastUpdateId" in data:
            checks = [("bids", "levels"), ("asks", "levels"), ("lastUpdateId", "int")]
        for name, kind in checks:
            if name not in data:
                continue
            value = data[name]
            try:
                if kind == "levels":
                    _levels_to(value, name, [], [])
                elif kind == "num":
                    _num(value, name)
                elif value.__class__ is not int:
                    raise _Fail("invalid value", name, "an integer", _short(value))
            except _Fail as f:
                return InputError(f.message, file=path, line=lineno, field=f.field,
                                  expected=f.expected, got=f.got)
    return InputError(f"invalid message ({type(exc).__name__}: {exc})", file=path, line=lineno)


def _locate_bad_levels(path: Path, lines: list[bytes], nd: int, chunks: list[bytes],
                       chunk_line: list[int], chunk_levels: list[int]) -> InputError:
    for chunk, lineno, nlev in zip(chunks, chunk_line, chunk_levels):
        if _parse_levels([chunk], 2 * nlev) is None:
            err = _diagnose(path, lineno, lines[lineno - 1], nd,
                            ValueError("malformed level array"))
            if err.field is not None:
                return err
            return InputError("malformed depth level array", file=path, line=lineno,
                              field="b" if chunk is not None else None,
                              expected="[[price, qty], ...] with decimal strings",
                              got=chunk[:60].decode("utf-8", "replace"))
    return InputError("malformed depth level arrays", file=path)


def _locate_bad_value(path: Path, events: np.ndarray, n: np.ndarray, seg_line: list[int],
                      seg_field: list[str], instrument: Instrument | None = None
                      ) -> InputError | None:
    """Name the line and field of the first impossible price or quantity (or one past what
    the instrument's tick and lot can hold: :func:`cmm.data.events.range_checks`)."""
    kind = events["ev"] & EVENT_TYPE_MASK
    px, qty = events["px"], events["qty"]
    priced = kind != DEPTH_CLEAR_EVENT
    checks = (
        (~(px > 0) | ~np.isfinite(px), 0, "a finite price > 0"),
        (priced & (~(qty >= 0) | ~np.isfinite(qty)), 1, "a finite quantity >= 0"),
        ((kind == TRADE_EVENT) & ~(qty > 0), 1, "a trade quantity > 0"),
        *((bad, int(name == "qty"), expected)
          for bad, name, expected in range_checks(events, instrument)),
    )
    ends = np.cumsum(n)
    for bad, col, expected in checks:
        if not bad.any():
            continue
        row = int(np.argmax(bad))
        seg = int(np.searchsorted(ends, row, side="right"))
        offset = row - int(ends[seg] - n[seg])
        name = seg_field[seg]
        if name == "p":
            field = "p" if col == 0 else "q"
        elif name.endswith("]"):  # a snapshot's clear row: its side's last level
            field = f"{name}[{col}]"
        else:
            field = f"{name}[{offset}][{col}]"
        value = float(px[row] if col == 0 else qty[row])
        return InputError("invalid value", file=path, line=seg_line[seg], field=field,
                          expected=expected, got=value)
    return None


# ---------------------------------------------------------------------------------------------
# duplicated trades

_TRADE_ID = np.frombuffer(b'"t":', np.uint8)


@njit(cache=True, nogil=True)
def _trade_ids(buf, start, end, lines):
    """The trade id (the integer after ``"t":``) of each line in ``lines``; -1 if none."""
    out = np.full(len(lines), -1, np.int64)
    for i in range(len(lines)):
        k = lines[i]
        e = end[k]
        q = start[k]
        while q + 4 < e:
            if buf[q] == 34 and _at(buf, q, e, _TRADE_ID):
                p = q + 4
                while p < e and (buf[p] == 32 or buf[p] == 9):
                    p += 1
                v = 0
                nd = 0
                while p < e and 48 <= buf[p] <= 57 and nd < 19:
                    v = v * 10 + (np.int64(buf[p]) - 48)
                    nd += 1
                    p += 1
                if 0 < nd < 19 and p < e and (buf[p] == 44 or buf[p] == 125 or buf[p] == 32
                                              or buf[p] == 9):
                    out[i] = v
                break
            q += 1
    return out


def _drop_duplicate_trades(events: np.ndarray, report: ReadReport, buf: np.ndarray,
                           start: np.ndarray, end: np.ndarray, trade_lines: np.ndarray
                           ) -> np.ndarray:
    """Trades counted once: a trade that an earlier line of the file already had (the same id
    ``t``, side, price, size and exchange time: a block received or captured twice) is dropped
    (repair ``duplicate_trade``). ``trade_lines``: the 0-based line of each trade row, in row
    order."""
    if len(trade_lines) < 2:
        return events
    ids = _trade_ids(buf, start, end, trade_lines)
    known = ids[ids >= 0]
    if len(known) < 2 or bool(np.all(known[1:] > known[:-1])):  # ids increase: no repeats
        return events
    rows = np.flatnonzero((events["ev"] & EVENT_TYPE_MASK) == TRADE_EVENT)
    if len(rows) != len(ids):  # (cannot happen: one row per trade line)
        return events
    rows = rows[ids >= 0]
    t = events[rows]
    cols = (ids[ids >= 0], t["ev"], t["exch_ts"], t["px"], t["qty"])
    order = np.lexsort((np.arange(len(rows)),) + cols[::-1])  # by id, ..., then file order
    same = np.ones(len(rows) - 1, dtype=np.bool_)
    for c in cols:
        cs = c[order]
        same &= cs[1:] == cs[:-1]
    n_dup = int(np.count_nonzero(same))
    if n_dup == 0:
        return events
    keep = np.ones(len(events), dtype=np.bool_)
    keep[rows[order[1:][same]]] = False  # each repeat after its first occurrence
    report.repair("duplicate_trade", n_dup)
    report.events = len(events) - n_dup
    return events[keep]
