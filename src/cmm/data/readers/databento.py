"""Format F: Databento DBN files, schema MBO (market by order), rebuilt into price levels.

A file is DBN (any version ``databento-dbn`` decodes; older ones are upgraded), zstd-compressed
(``.dbn.zst``) or plain (``.dbn``), detected by its magic bytes. It starts with a metadata header
(dataset, schema, symbols, symbol-to-``instrument_id`` mappings) followed by fixed-size records.
Records are numbered from 1 after the header; errors name the file, that record number and the
field. The schema must be ``mbo``; another schema (``definition``, ``mbp-10``, ...) is an
error naming both. Records of other types in an MBO file (symbol mappings, system or error
messages of live captures) are counted and skipped.

Integrity: a zstd stream is walked frame by frame and block by block (block headers only, no
decompression) before decoding, so a file cut anywhere, even on a record boundary, is an error
naming the file; so is a partial record left at the end of the decoded stream (plain DBN) or a
stream that does not decode.

Fields used: ``ts_recv`` (Databento's capture-server receive time, ns) is the local timestamp,
``ts_event`` (the matching engine's time, ns) the exchange timestamp. ``price`` is fixed-point
int64 in units of 1e-9; it must be a positive whole number of the instrument's ``tick_size``
(checked in integers, exactly), otherwise an error naming record and field ``price``; negative
prices (calendar spreads) are not supported. ``size`` is an integer number of contracts, emitted
as is (quantities are contracts: set the instrument's ``lot_size`` to 1). ``sequence`` is not
checked for gaps: a file filtered to one instrument skips the packets of the other instruments
of its channel. ``ts_recv`` must not go backwards (Databento sorts files by it).

One instrument: the reader rebuilds one ``instrument_id``. With ``reader: {instrument_id: N}``
in the dataset spec only N's records are used (others counted in ``messages["other_instrument"]``);
without it a file that holds several ids is an error listing them, their symbols and record
counts. An id that is set but absent is an error listing the ids found.

Book, order by order (the rules of Databento's own reference book; ids are ``order_id``):

* ``A`` add: the order rests at its price and side; its level grows by its size. An id already
  resting is replaced (repair ``duplicate_order_id``); size 0 is ignored (repair ``add_zero_size``).
* ``C`` cancel: ``size`` is the amount cancelled; the order shrinks by it and leaves the book at
  0. The resting order's own price and side are used (repair ``cancel_price_mismatch`` when the
  record says otherwise). Unknown id: ignored (repair ``cancel_unknown_order``; orders that
  rested before a file without a snapshot); more than the order holds: the order is removed
  (repair ``cancel_exceeds_order``).
* ``M`` modify: the order's new price and size; a price change moves it to the new level (both
  levels emitted). Unknown id: treated as an add (repair ``modify_unknown_order``); size 0 removes
  the order; a side change moves it to the other side (repair ``modify_side_change``).
* ``R`` clear book: every level of both sides is removed (each emitted with size 0).
* ``T`` trade: a trade print; ``side`` is the *aggressor* side (Databento: "B" a buy aggressor,
  "A" a sell aggressor), emitted as ``TRADE_EVENT | BUY_EVENT`` / ``SELL_EVENT`` with the trade
  price and size. ``T`` does not change the book. Side ``N`` (no aggressor, e.g. auction and
  implied prints) is not emitted, as it cannot be given a side honestly: counted in
  ``messages["trade_no_side"]`` with a warning. A trade of size 0 is dropped (repair
  ``trade_zero_size``). Trades flagged ``F_SNAPSHOT`` are ignored (``snapshot_trade_ignored``).
* ``F`` fill: the resting (maker) order's side of a trade. It does not change the book either:
  the venue follows every fill with a ``C`` or ``M`` of the same order that removes the filled
  size (in the 2 s ESM4 sample each of the 5 fills is followed by one), so reducing on ``F`` too
  would remove it twice; and the ``T`` already carries the print. Counted only.
* ``N`` none: counted, ignored.
* Records flagged ``F_TOB`` (top-of-book venues, not CME) replace their side with one level:
  an add at ``UNDEF_PRICE`` empties the side.
* ``side`` must be ``A`` or ``B`` for ``A`` / ``C`` / ``M``. Records flagged
  ``F_MAYBE_BAD_BOOK`` (Databento detected an unrecoverable gap) are counted with a warning.

Events (raw hftbacktest ``event_dtype`` rows in record order, ``exch_ts = ts_event``,
``local_ts = ts_recv``): every change of a level emits a ``DEPTH_EVENT`` (``BUY_EVENT`` bid,
``SELL_EVENT`` ask) with the level's *new total* size (0 = level gone).

Snapshot: a file requested from Databento starts with records flagged ``F_SNAPSHOT`` (0x20) that
replay the book state (an ``R`` then one ``A`` per resting order). They seed the book silently;
when the snapshot ends (the first record of the instrument without the flag, or the end of the
file) the book is emitted per side as a ``DEPTH_CLEAR_EVENT`` (price: the side's worst level,
hftbacktest's convention) and ``DEPTH_SNAPSHOT_EVENT`` rows, best level first, bids then asks,
at ``local_ts`` = the last snapshot record's ``ts_recv`` (synthetic, flagged ``F_BAD_TS_RECV``:
the request's start) and ``exch_ts`` = that or the first live record's ``ts_event`` if earlier,
so no live event precedes the snapshot on either clock. ``report.has_snapshot`` is set. Snapshot
records later in a file are applied as live records (their ``R`` removes every level, their adds
re-insert them). Without a snapshot the book starts empty (with a warning).
"""

from __future__ import annotations

import math
from pathlib import Path

import databento_dbn as dbn
import numpy as np

from cmm.config import DatabentoOptions, Instrument
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
from cmm.data.readers.common import finish_report
from cmm.errors import InputError
from cmm.vocabulary import ASK, BID

__all__ = ["read_databento_mbo", "check_zstd_complete", "MboBook", "PRICE_SCALE", "ACTION_NAMES"]

PRICE_SCALE = dbn.FIXED_PRICE_SCALE  # 1e9 price units per currency unit
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
DBN_MAGIC = b"DBN"
CHUNK = 1 << 20  # compressed bytes fed to the decoder at a time

_A = dbn.Action
ACTION_NAMES = {_A.ADD: "add", _A.CANCEL: "cancel", _A.MODIFY: "modify", _A.CLEAR: "clear",
                _A.TRADE: "trade", _A.FILL: "fill", _A.NONE: "none"}
_SIDES = {dbn.Side.BID: BID, dbn.Side.ASK: ASK, dbn.Side.NONE: None}


def check_zstd_complete(raw: bytes) -> str | None:
    """Why a zstd stream is incomplete or malformed (None: every frame is whole).

    Walks frame and block headers (RFC 8878) without decompressing; skippable frames allowed."""
    pos, n = 0, len(raw)
    frames = 0
    while pos < n:
        if n - pos < 4:
            return f"{n - pos} stray bytes after frame {frames}"
        magic = int.from_bytes(raw[pos:pos + 4], "little")
        if 0x184D2A50 <= magic <= 0x184D2A5F:  # skippable frame
            if n - pos < 8:
                return "skippable frame header cut short"
            size = int.from_bytes(raw[pos + 4:pos + 8], "little")
            pos += 8 + size
            if pos > n:
                return "skippable frame cut short"
            frames += 1
            continue
        if raw[pos:pos + 4] != ZSTD_MAGIC:
            return f"no zstd frame at byte {pos}"
        pos += 4
        if pos >= n:
            return "frame header cut short"
        fhd = raw[pos]
        pos += 1
        single = (fhd >> 5) & 1
        fcs_size = (0, 2, 4, 8)[fhd >> 6] or (1 if single else 0)
        did_size = (0, 1, 2, 4)[fhd & 3]
        checksum = (fhd >> 2) & 1
        if fhd & 0x08:
            return f"reserved bit set in the frame header at byte {pos - 1}"
        pos += (0 if single else 1) + did_size + fcs_size
        while True:
            if pos + 3 > n:
                return f"cut inside frame {frames + 1} (block header at byte {pos} missing)"
            bh = int.from_bytes(raw[pos:pos + 3], "little")
            pos += 3
            last, btype, bsize = bh & 1, (bh >> 1) & 3, bh >> 3
            if btype == 3:
                return f"reserved block type at byte {pos - 3}"
            pos += 1 if btype == 1 else bsize
            if pos > n:
                return f"cut inside frame {frames + 1} (a block needs {pos - n} more bytes)"
            if last:
                break
        pos += 4 * checksum
        if pos > n:
            return f"cut inside frame {frames + 1} (checksum missing)"
        frames += 1
    return None if frames else "no zstd frame"


class MboBook:
    """Single orders aggregated into price levels (integer ticks -> integer contracts), each
    change emitted as a raw hftbacktest row (ev, exch_ts, local_ts, px, qty)."""

    def __init__(self, report: ReadReport, tick_size: float) -> None:
        self.report = report
        self.tick = tick_size
        self.px_digits = max(0, -math.floor(math.log10(tick_size))) + 4
        self.live = True
        self.orders: dict[int, list[int]] = {}  # order_id -> [side, ticks, size]
        self.levels: tuple[dict[int, int], dict[int, int]] = ({}, {})
        self.rows: list[tuple[int, int, int, float, float]] = []
        self._px_cache: dict[int, float] = {}

    def price(self, ticks: int) -> float:
        px = self._px_cache.get(ticks)
        if px is None:
            px = self._px_cache[ticks] = round(ticks * self.tick, self.px_digits)
        return px

    def _change(self, side: int, ticks: int, delta: int, exch: int, local: int) -> None:
        lv = self.levels[side]
        total = lv.get(ticks, 0) + delta
        if total > 0:
            lv[ticks] = total
        else:
            lv.pop(ticks, None)
            total = 0
        if self.live and delta:
            self.rows.append((DEPTH_EVENT | SIDE_FLAG[side], exch, local, self.price(ticks),
                              float(total)))

    def _remove(self, oid: int, exch: int, local: int) -> None:
        side, ticks, size = self.orders.pop(oid)
        self._change(side, ticks, -size, exch, local)

    def add(self, oid: int, side: int, ticks: int, size: int, exch: int, local: int) -> None:
        if oid in self.orders:
            self.report.repair("duplicate_order_id")
            self._remove(oid, exch, local)
        if size <= 0:
            self.report.repair("add_zero_size")
            return
        self.orders[oid] = [side, ticks, size]
        self._change(side, ticks, size, exch, local)

    def cancel(self, oid: int, side: int, ticks: int, size: int, exch: int, local: int) -> None:
        order = self.orders.get(oid)
        if order is None:
            self.report.repair("cancel_unknown_order")
            return
        if order[0] != side or order[1] != ticks:
            self.report.repair("cancel_price_mismatch")
        if size >= order[2]:
            if size > order[2]:
                self.report.repair("cancel_exceeds_order")
            self._remove(oid, exch, local)
        else:
            order[2] -= size
            self._change(order[0], order[1], -size, exch, local)

    def modify(self, oid: int, side: int, ticks: int, size: int, exch: int, local: int) -> None:
        order = self.orders.get(oid)
        if order is None:
            self.report.repair("modify_unknown_order")
            self.add(oid, side, ticks, size, exch, local)
            return
        if size <= 0:
            self._remove(oid, exch, local)
            return
        o_side, o_ticks, o_size = order
        if o_side != side:
            self.report.repair("modify_side_change")
        if (o_side, o_ticks) != (side, ticks):
            self._remove(oid, exch, local)
            self.orders[oid] = [side, ticks, size]
            self._change(side, ticks, size, exch, local)
        else:
            order[2] = size
            self._change(side, ticks, size - o_size, exch, local)

    def clear_side(self, side: int, exch: int, local: int) -> None:
        lv = self.levels[side]
        for oid in [o for o, v in self.orders.items() if v[0] == side]:
            del self.orders[oid]
        for ticks in sorted(lv, reverse=side == BID):
            self._change(side, ticks, -lv[ticks], exch, local)

    def clear(self, exch: int, local: int) -> None:
        self.orders.clear()
        for side in (BID, ASK):
            self.clear_side(side, exch, local)

    def top_of_book(self, side: int, ticks: int | None, size: int, exch: int, local: int) -> None:
        """A top-of-book venue's update: the side becomes this one level (None: empty)."""
        lv = self.levels[side]
        for t in sorted((t for t in lv if t != ticks), reverse=side == BID):
            self._change(side, t, -lv[t], exch, local)
        if ticks is not None:
            self._change(side, ticks, size - lv.get(ticks, 0), exch, local)

    def emit_snapshot(self, exch: int, local: int) -> None:
        for side in (BID, ASK):
            lv = self.levels[side]
            if not lv:
                continue
            order = sorted(lv, reverse=side == BID)
            flag = SIDE_FLAG[side]
            self.rows.append((DEPTH_CLEAR_EVENT | flag, exch, local, self.price(order[-1]), 0.0))
            for t in order:
                self.rows.append((DEPTH_SNAPSHOT_EVENT | flag, exch, local, self.price(t),
                                  float(lv[t])))

    def trade(self, is_buy: bool, ticks: int, size: int, exch: int, local: int) -> None:
        self.rows.append((TRADE_EVENT | (BUY_EVENT if is_buy else SELL_EVENT), exch, local,
                          self.price(ticks), float(size)))

    def to_array(self) -> np.ndarray:
        out = np.zeros(len(self.rows), event_dtype)
        if self.rows:
            rows = np.array(self.rows, dtype=[("ev", "u8"), ("exch", "i8"), ("local", "i8"),
                                              ("px", "f8"), ("qty", "f8")])
            out["ev"], out["exch_ts"], out["local_ts"] = rows["ev"], rows["exch"], rows["local"]
            out["px"], out["qty"] = rows["px"], rows["qty"]
        return out


def _decode(path: Path, raw: bytes):
    """Yield (record number, record) after the metadata, which is yielded first as (0, meta)."""
    if raw[:4] == ZSTD_MAGIC:
        problem = check_zstd_complete(raw)
        if problem:
            whole = _count_records(raw)
            where = f"; {whole} whole records decode before the cut" if whole is not None else ""
            raise InputError(f"truncated or corrupt zstd stream: {problem}{where}", file=path,
                             record=whole + 1 if whole is not None else None,
                             expected="a complete zstd-compressed DBN file")
        decoder = dbn.DBNDecoder(compression=dbn.Compression.ZSTD)
    elif raw[:3] == DBN_MAGIC:
        decoder = dbn.DBNDecoder()
    else:
        raise InputError("not a DBN file", file=path,
                         expected="Databento DBN, zstd-compressed (.dbn.zst) or plain (.dbn)",
                         got=raw[:8])
    index = 0
    for start in range(0, len(raw), CHUNK):
        try:
            records = decoder.write_and_decode(raw[start:start + CHUNK])
        except Exception as exc:  # DBNError, and RuntimeError from zstd on corrupt data
            where = f" after record {index - 1}" if index > 1 else ""
            raise InputError(f"cannot decode the DBN stream{where} ({exc}): corrupt or not "
                             "DBN", file=path) from None
        for rec in records:
            if index == 0 and not isinstance(rec, dbn.Metadata):
                raise InputError("DBN stream without a metadata header", file=path,
                                 expected="the DBN metadata first")
            yield index, rec
            index += 1
    if index == 0:
        raise InputError("no DBN metadata header (file cut short or not DBN)", file=path)
    left = len(decoder.buffer())
    if left:
        raise InputError(f"truncated DBN file: {left} bytes of an incomplete record at the end",
                         file=path, record=index, expected="whole records")


def _count_records(raw: bytes) -> int | None:
    """How many records after the metadata decode from a damaged zstd stream (None: not even
    the metadata)."""
    decoder = dbn.DBNDecoder(compression=dbn.Compression.ZSTD)
    n = 0
    try:
        for start in range(0, len(raw), CHUNK):
            n += len(decoder.write_and_decode(raw[start:start + CHUNK]))
    except Exception:  # noqa: BLE001 - only a count for the message; the cut is reported
        pass
    return n - 1 if n else None


def _symbols(meta) -> dict[int, str]:
    out: dict[int, str] = {}
    try:
        for raw_symbol, intervals in (meta.mappings or {}).items():
            for iv in intervals:
                sym = iv["symbol"] if isinstance(iv, dict) else getattr(iv, "symbol", "")
                if str(sym).isdigit():
                    out.setdefault(int(sym), raw_symbol)
    except (AttributeError, TypeError, KeyError):
        pass
    return out


def _describe_ids(counts: dict[int, int], symbols: dict[int, str]) -> str:
    parts = []
    for iid, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])):
        sym = f" ({symbols[iid]})" if iid in symbols else ""
        parts.append(f"{iid}{sym}: {n} records")
    return ", ".join(parts)


@register_reader("databento-mbo")
def read_databento_mbo(path: Path, instrument: Instrument,
                       options: DatabentoOptions = DatabentoOptions()
                       ) -> tuple[np.ndarray, ReadReport]:
    """Read a Databento MBO file (format F) into raw events; see the module docstring."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", file=path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read the file ({exc})", file=path) from None
    if not raw:
        raise InputError("empty file", file=path, expected="a DBN file")
    report = ReadReport(file=str(path), format="databento-mbo", timestamp_unit="ns")
    book = MboBook(report, instrument.tick_size)
    book.live = False
    replay = _MboReplay(path, report, book, instrument.tick_size, options.instrument_id)
    meta = None
    for index, rec in _decode(path, raw):
        if index == 0:
            meta = rec
            schema = meta.schema
            if schema is not None and schema != dbn.Schema.MBO:
                raise InputError("wrong DBN schema", file=path, field="schema",
                                 expected="mbo (market by order)", got=str(schema))
            continue
        replay.record(index, rec)

    _check_instrument(path, replay, options, _symbols(meta))
    if replay.in_snapshot:  # the file ends inside the snapshot (a book-state-only file)
        book.live = True
        book.emit_snapshot(replay.snap_local, replay.snap_local)
    _warn(report, replay)
    events = book.to_array()
    check_raw_events(events, path, instrument)
    finish_report(report, events, replay.first_ts, replay.last_ts)
    return events, report


class _MboReplay:
    """One pass over a file's MBO records into the book: the instrument filter, the ts_recv
    order, the end of the snapshot and each record's action (rules in the module docstring)."""

    def __init__(self, path: Path, report: ReadReport, book: MboBook, tick: float,
                 instrument_id: int | None) -> None:
        self.path, self.report, self.book, self.tick = path, report, book, tick
        self.tick_units = round(tick * PRICE_SCALE)
        self.exact = self.tick_units >= 1 and abs(tick * PRICE_SCALE - self.tick_units) < 1e-6
        self.target = instrument_id
        self.auto = instrument_id is None
        self.counts: dict[int, int] = {}  # instrument_id -> MBO records
        self.other_types: dict[str, int] = {}
        self.in_snapshot: bool | None = None  # None: no record of the instrument yet
        self.snap_local: int | None = None
        self.mixed = False
        self.last_recv: int | None = None
        self.last_recv_record = 0
        self.first_ts: int | None = None
        self.last_ts: int | None = None

    def ticks(self, price: int, index: int) -> int:
        """A record's fixed-point price as integer ticks (checked in integers when the tick
        is a whole number of 1e-9 units)."""
        undef = dbn.UNDEF_PRICE
        if price == undef or price <= 0:
            raise InputError("invalid price", file=self.path, record=index, field="price",
                             expected="a price > 0 (fixed-point, 1e-9 units)",
                             got="UNDEF_PRICE" if price == undef else price)
        if self.exact:
            t, rem = divmod(price, self.tick_units)
            if rem == 0:
                return t
        else:
            v = price / (self.tick * PRICE_SCALE)
            t = round(v)
            if t > 0 and abs(v - t) <= 1e-6 * max(1.0, t):
                return t
        raise InputError("price is not a multiple of the instrument's tick_size", file=self.path,
                         record=index, field="price", expected=f"a multiple of {self.tick}",
                         got=price / PRICE_SCALE)

    def record(self, index: int, rec) -> None:
        """Count one record after the metadata, and apply it if it is of the instrument read."""
        report = self.report
        report.lines += 1
        if type(rec) is not dbn.MBOMsg:
            name = type(rec).__name__
            self.other_types[name] = self.other_types.get(name, 0) + 1
            return
        iid = rec.instrument_id
        self.counts[iid] = self.counts.get(iid, 0) + 1
        if self.auto:  # no instrument_id set: the first one seen, and it must be the only one
            if self.target is None:
                self.target = iid
            elif iid != self.target:
                self.mixed = True
        if self.mixed or iid != self.target:
            return
        recv = rec.ts_recv
        if self.last_recv is not None and recv < self.last_recv:
            raise InputError(f"ts_recv goes backwards (record {self.last_recv_record} has "
                             f"{self.last_recv})", file=self.path, record=index, field="ts_recv",
                             expected=f">= {self.last_recv}", got=recv)
        self.last_recv, self.last_recv_record = recv, index
        if self.first_ts is None:
            self.first_ts = recv
        self.last_ts = recv
        exch = rec.ts_event
        flags = rec.flags
        report.count(ACTION_NAMES.get(rec.action, "unknown_action"))
        if flags & dbn.F_MAYBE_BAD_BOOK:
            report.count("maybe_bad_book")
        self._track_snapshot(bool(flags & dbn.F_SNAPSHOT), exch, recv)
        self._apply(index, rec, flags, exch, recv)

    def _track_snapshot(self, snap: bool, exch: int, recv: int) -> None:
        """Note a snapshot record; at the first live record after a snapshot, emit the book."""
        if self.in_snapshot is None:
            self.in_snapshot = snap
            self.report.has_snapshot = snap
            if not snap:
                self.book.live = True
        if snap and self.in_snapshot:
            self.report.count("snapshot_records")
            self.snap_local = recv
        elif self.in_snapshot:  # first live record: the snapshot is complete
            self.in_snapshot = False
            self.book.live = True
            self.book.emit_snapshot(min(self.snap_local, exch), self.snap_local)

    def _apply(self, index: int, rec, flags: int, exch: int, recv: int) -> None:
        """A record's action on the book (or a trade row)."""
        book, report, action = self.book, self.report, rec.action
        if action is _A.TRADE:
            if self.in_snapshot:  # a replay of the book state has no trades to emit
                report.count("snapshot_trade_ignored")
                return
            side = _SIDES.get(rec.side)
            if side is None:
                report.count("trade_no_side")
                return
            if rec.size <= 0:
                report.repair("trade_zero_size")
                return
            book.trade(side == BID, self.ticks(rec.price, index), rec.size, exch, recv)
            return
        if action is _A.CLEAR:
            book.clear(exch, recv)
            return
        if action is not _A.ADD and action is not _A.CANCEL and action is not _A.MODIFY:
            if action not in ACTION_NAMES:
                raise InputError("unknown action", file=self.path, record=index, field="action",
                                 expected="one of A C M R T F N", got=str(action))
            return  # F fill, N none: no book change
        side = _SIDES.get(rec.side)
        if side is None:
            raise InputError("order event without a side", file=self.path, record=index,
                             field="side", expected="A (ask) or B (bid)", got=str(rec.side))
        price = rec.price
        if flags & dbn.F_TOB:
            report.count("top_of_book")
            if action is _A.ADD:
                ticks = None if price == dbn.UNDEF_PRICE else self.ticks(price, index)
                book.top_of_book(side, ticks, rec.size, exch, recv)
                return
        ticks = self.ticks(price, index)
        if action is _A.ADD:
            book.add(rec.order_id, side, ticks, rec.size, exch, recv)
        elif action is _A.CANCEL:
            book.cancel(rec.order_id, side, ticks, rec.size, exch, recv)
        else:
            book.modify(rec.order_id, side, ticks, rec.size, exch, recv)


def _check_instrument(path: Path, replay: _MboReplay, options: DatabentoOptions,
                      symbols: dict[int, str]) -> None:
    """Refuse a file of several instruments read without ``instrument_id``, and an
    ``instrument_id`` the file does not hold."""
    counts = replay.counts
    if replay.mixed:
        raise InputError(
            f"the file holds {len(counts)} instruments: {_describe_ids(counts, symbols)}",
            file=path, field="instrument_id",
            expected="one instrument; choose one with `reader: {instrument_id: <id>}` in the "
                     "dataset spec")
    if options.instrument_id is not None and options.instrument_id not in counts:
        found = _describe_ids(counts, symbols) if counts else "no MBO records"
        raise InputError(f"instrument_id {options.instrument_id} is not in the file (found: "
                         f"{found})", file=path, field="instrument_id",
                         expected="an instrument_id of the file (reader: {instrument_id: ...})",
                         got=options.instrument_id)


def _warn(report: ReadReport, replay: _MboReplay) -> None:
    """The report's counts and warnings of what was skipped, ignored or repaired."""
    counts, target = replay.counts, replay.target
    if target is not None:
        others = sum(n for i, n in counts.items() if i != target)
        if others:
            report.count("other_instrument", others)
            report.warnings.append(f"{others} record(s) of other instruments skipped "
                                   f"(instrument_id {target} read)")
    for name, n in sorted(replay.other_types.items()):
        report.count(f"record_{name}", n)
        report.warnings.append(f"{n} {name} record(s) skipped (not MBO)")
    if not counts:
        report.warnings.append("no MBO records: no events")
    elif not report.has_snapshot:
        report.warnings.append("no snapshot (F_SNAPSHOT records) at the start: the book starts "
                               "empty, orders resting before the file began are unknown")
    if report.messages.get("trade_no_side"):
        report.warnings.append(f"{report.messages['trade_no_side']} trade(s) without an aggressor "
                               "side (side N) counted but not emitted")
    if report.messages.get("maybe_bad_book"):
        report.warnings.append(f"{report.messages['maybe_bad_book']} record(s) flagged "
                               "F_MAYBE_BAD_BOOK (Databento saw an unrecoverable gap): the book "
                               "may be wrong after them")
    if report.messages.get("snapshot_trade_ignored"):
        report.warnings.append(f"{report.messages['snapshot_trade_ignored']} trade(s) flagged "
                               "F_SNAPSHOT ignored")
    for kind in ("duplicate_order_id", "cancel_unknown_order", "modify_unknown_order",
                 "cancel_exceeds_order", "trade_zero_size"):
        if report.repairs.get(kind):
            report.warnings.append(f"{report.repairs[kind]} record(s) repaired: {kind}")
