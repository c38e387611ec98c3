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
  ``trade_not_market``, like hftbacktest's converter.
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

Speed. The file is decompressed in one call and split into lines; local timestamps are parsed
in one pass; ``bookTicker`` lines (most of a futures capture) are set aside by their stream
name. Diff headers are parsed with orjson, while their level arrays are cut out as bytes and
converted to floats in one columnar pass over the whole file (polars' CSV parser, exact
round-to-nearest like ``float``), checked structurally (brackets, two numbers per level). A line
the fast path does not recognise is parsed in full with orjson. Columns are built by repeating
per-message values, never by per-row structured assignment. Errors are located afterwards by
re-parsing the offending line carefully.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import orjson

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
    lines = read_bytes(path).split(b"\n")
    nd, unit, mul = _detect_unit(path, lines)
    report.timestamp_unit = unit
    local = _local_timestamps(path, lines, nd)
    report.lines = len(local)
    report.first_local_ts = int(local[0]) * mul
    report.last_local_ts = int(local[-1]) * mul

    # Complete bookTicker frames are only counted; everything else goes through the loop.
    rest = [k for k, line in enumerate(lines)
            if line.find(b'@bookTicker"', nd, nd + 80) < 0 or line[-1] != 125]  # 125 = '}'

    seg_ev: list[int] = []  # per segment: a run of rows sharing type, side and timestamps
    seg_n: list[int] = []
    seg_exch: list[int] = []  # ns
    seg_local: list[int] = []  # file units
    seg_line: list[int] = []
    seg_src: list[int] = []
    seg_field: list[str] = []
    chunks: list[bytes] = []  # diff level arrays, as bytes, in row order
    chunk_line: list[int] = []
    chunk_levels: list[int] = []
    py_px: list[float] = []
    py_qty: list[float] = []
    counts = {"snapshot": 0, "markPriceUpdate": 0, "trade_not_market": 0, "error_frame": 0,
              "bookTicker": 0}
    n_depth = n_trade = n_seen = 0
    seq = _Sequencer(report)
    seq_diff = seq.diff

    ev_a, n_a, ex_a, lo_a = seg_ev.append, seg_n.append, seg_exch.append, seg_local.append
    li_a, src_a, fld_a = seg_line.append, seg_src.append, seg_field.append
    ch_a, chl_a, chn_a = chunks.append, chunk_line.append, chunk_levels.append
    px_a, qty_a = py_px.append, py_qty.append
    loads = orjson.loads

    lineno = 0
    try:
        for k in rest:
            line = lines[k]
            if not line:
                continue
            lineno = k + 1
            n_seen += 1
            ts = int(line[:nd])

            # Fast path for combined-stream depth diffs: parse the header, cut out the levels.
            i = line.find(b',"b":[', nd)
            if (i >= 0 and line.startswith(b'{"stream":', nd + 1)
                    and line.find(b'"e":"depthUpdate"', nd, i) >= 0):
                j = line.find(b'],"a":[', i)
                bchunk = line[i + 6:j]
                achunk = line[j + 7:-3]
                # no ':' in the level arrays: "b" and "a" are the last keys, nothing between
                if (j >= 0 and line.endswith(b"]}}") and bchunk.find(b":") < 0
                        and achunk.find(b":") < 0):
                    h = loads(line[nd + 1:i] + b"}}")["data"]
                    n_depth += 1
                    pu = h.get("pu")
                    if not seq_diff(lineno, h["U"], h["u"], pu):
                        continue
                    exch = h["E"] if pu is None else h["T"]
                    if exch.__class__ is not int:
                        raise _Fail("exchange time is not an integer",
                                    "E" if pu is None else "T", "milliseconds", exch)
                    exch *= MS
                    nb = bchunk.count(b"[")
                    na = achunk.count(b"[")
                    ev_a(_BID_DEPTH), n_a(nb), ex_a(exch), lo_a(ts), li_a(lineno)
                    src_a(_BUF), fld_a("b")
                    ev_a(_ASK_DEPTH), n_a(na), ex_a(exch), lo_a(ts), li_a(lineno)
                    src_a(_BUF), fld_a("a")
                    if nb:
                        ch_a(bchunk), chl_a(lineno), chn_a(nb)
                    if na:
                        ch_a(achunk), chl_a(lineno), chn_a(na)
                    continue

            msg = loads(line[nd + 1:])
            if msg.__class__ is not dict:
                raise _Fail("malformed message", "json", "a JSON object", _short(msg))
            data = msg.get("data")
            if data is None and "e" in msg:  # a plain (not combined) stream
                data = msg
            if data is not None:
                if data.__class__ is not dict:
                    raise _Fail("malformed message", "data", "a JSON object", _short(data))
                e = data.get("e")
                if e == "trade":
                    x = data.get("X")
                    if x is not None and x != "MARKET":
                        counts["trade_not_market"] += 1
                        continue
                    n_trade += 1
                    exch = data["T"]
                    if exch.__class__ is not int:
                        raise _Fail("exchange time is not an integer", "T", "milliseconds",
                                    exch)
                    m = data["m"]
                    if m.__class__ is not bool:
                        raise _Fail("invalid value", "m", "true or false", m)
                    ev_a(_SELL_TRADE if m else _BUY_TRADE), n_a(1), ex_a(exch * MS), lo_a(ts)
                    li_a(lineno), src_a(_PY), fld_a("p")
                    px_a(float(data["p"]))
                    qty_a(float(data["q"]))
                elif e == "depthUpdate":  # not in the fast path's layout: parse in full
                    n_depth += 1
                    pu = data.get("pu")
                    if not seq_diff(lineno, data["U"], data["u"], pu):
                        continue
                    exch = data["E"] if pu is None else data["T"]
                    if exch.__class__ is not int:
                        raise _Fail("exchange time is not an integer",
                                    "E" if pu is None else "T", "milliseconds", exch)
                    for side, ev in (("b", _BID_DEPTH), ("a", _ASK_DEPTH)):
                        levels = data[side]
                        _levels_to(levels, side, py_px, py_qty)
                        ev_a(ev), n_a(len(levels)), ex_a(exch * MS), lo_a(ts), li_a(lineno)
                        src_a(_PY), fld_a(side)
                elif e == "markPriceUpdate":
                    counts["markPriceUpdate"] += 1
                elif e == "bookTicker" or (e is None and "@bookTicker" in msg.get("stream", "")):
                    counts["bookTicker"] += 1
                elif e is None and ("code" in data or "result" in data):
                    counts["error_frame"] += 1
                    report.warnings.append(f"line {lineno}: exchange frame {_short(data)} "
                                           "ignored")
                elif e is None:
                    raise _Fail("required field is missing", "e",
                                "a message type: " + ", ".join(KNOWN_EVENTS))
                else:
                    raise _Fail("unknown message type", "e", ", ".join(KNOWN_EVENTS), e)
            elif "lastUpdateId" in msg:
                counts["snapshot"] += 1
                report.has_snapshot = True
                snap = msg["lastUpdateId"]
                if snap.__class__ is not int:
                    raise _Fail("invalid value", "lastUpdateId", "an integer", snap)
                exch = msg.get("T")
                if exch is None:
                    exch = ts * mul
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
                    ev_a(DEPTH_CLEAR_EVENT | ev), n_a(1), ex_a(exch), lo_a(ts), li_a(lineno)
                    src_a(_PY), fld_a(f"{side}[{len(levels) - 1}]")
                    ev_a(DEPTH_SNAPSHOT_EVENT | ev), n_a(len(levels)), ex_a(exch), lo_a(ts)
                    li_a(lineno), src_a(_PY), fld_a(side)
                seq.snapshot(snap)
            elif "code" in msg or "result" in msg:
                counts["error_frame"] += 1
                report.warnings.append(f"line {lineno}: exchange frame {_short(msg)} ignored")
            else:
                raise _Fail("unknown message", "data",
                            "a combined-stream frame {stream, data} or a depth snapshot "
                            "{lastUpdateId, bids, asks}", _short(msg))
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
        raise _diagnose(path, lineno, lines[lineno - 1], nd, exc) from None

    counts["bookTicker"] += report.lines - n_seen
    report.messages = {"depthUpdate": n_depth, "trade": n_trade,
                       **{k: v for k, v in counts.items() if v}}
    if counts["error_frame"]:
        report.warnings.insert(0, f"{counts['error_frame']} exchange error/reply frame(s) "
                                  "ignored")

    n = np.asarray(seg_n, dtype=np.int64)
    total = int(n.sum())
    events = np.zeros(total, dtype=event_dtype)
    if total:
        values = _parse_levels(chunks, 2 * sum(chunk_levels))
        if values is None:
            raise _locate_bad_levels(path, lines, nd, chunks, chunk_line, chunk_levels)
        events["ev"] = np.repeat(np.asarray(seg_ev, dtype=np.uint64), n)
        events["exch_ts"] = np.repeat(np.asarray(seg_exch, dtype=np.int64), n)
        events["local_ts"] = np.repeat(np.asarray(seg_local, dtype=np.int64) * mul, n)
        from_buf = np.repeat(np.asarray(seg_src, dtype=np.int8) == _BUF, n)
        px = np.empty(total)
        qty = np.empty(total)
        px[from_buf] = values[0::2]
        qty[from_buf] = values[1::2]
        from_py = ~from_buf
        px[from_py] = py_px
        qty[from_py] = py_qty
        events["px"] = px
        events["qty"] = qty
    report.events = total
    try:
        check_raw_events(events, path)
    except InputError as err:
        raise _locate_bad_value(path, events, n, seg_line, seg_field) or err from None
    return events, report


# ---------------------------------------------------------------------------------------------
# timestamps


def _detect_unit(path: Path, lines: list[bytes]) -> tuple[int, str, int]:
    """Digits of the first line's local timestamp -> (digits, unit, multiplier to ns)."""
    first_no = next(k for k, line in enumerate(lines) if line.strip())  # read_bytes: not empty
    first = lines[first_no]
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
                      seg_field: list[str]) -> InputError | None:
    """Name the line and field of the first impossible price or quantity."""
    kind = events["ev"] & EVENT_TYPE_MASK
    px, qty = events["px"], events["qty"]
    priced = kind != DEPTH_CLEAR_EVENT
    checks = (
        (~(px > 0) | ~np.isfinite(px), 0, "a finite price > 0"),
        (priced & (~(qty >= 0) | ~np.isfinite(qty)), 1, "a finite quantity >= 0"),
        ((kind == TRADE_EVENT) & ~(qty > 0), 1, "a trade quantity > 0"),
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
