"""Databento MBO reader (format F) on the real files in the data folder, and on tiny DBN files
written here with databento_dbn's own encoder.

Counts and timestamps are checked against an independent decode with ``databento_dbn``; books
against an order-by-order rebuild that follows Databento's reference book (T/F/N leave the book
alone, C removes its size, M sets price and size, R clears).
"""

from __future__ import annotations

import collections
import hashlib
import re
from pathlib import Path

import databento_dbn as dbn
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmm.config import DatabentoOptions, Instrument
from cmm.data.events import (
    BUY_EVENT,
    DEPTH_CLEAR_EVENT,
    DEPTH_EVENT,
    DEPTH_SNAPSHOT_EVENT,
    EVENT_TYPE_MASK,
    SELL_EVENT,
    TRADE_EVENT,
    finalize_events,
)
from cmm.data.readers import _READERS, get_reader
from cmm.data.readers.databento import check_zstd_complete, read_databento_mbo
from cmm.errors import InputError
from cmm.io import default_data_dir

DATA = default_data_dir() / "databento"
LIVE = DATA / "orderbooks_mbo_2024-05-08T00-00-00_2024-05-08T00-00-02.dbn.zst"
ESH4 = DATA / "esh4-glbx-mdp3-20231224.mbo.dbn.zst"
DEFINITION = DATA / "definition-glbx-es-fut.dbn.zst"
ES = Instrument(tick_size=0.25, lot_size=1.0, contract_size=50.0)
SCALE = dbn.FIXED_PRICE_SCALE
A, B, N = dbn.Side.ASK, dbn.Side.BID, dbn.Side.NONE


def need(*paths: Path) -> None:
    for p in paths:
        if not p.is_file():
            pytest.skip(f"real data file missing: {p}")


def decode(path: Path) -> tuple[object, list]:
    recs = dbn.DBNDecoder(compression=dbn.Compression.ZSTD).write_and_decode(path.read_bytes())
    return recs[0], recs[1:]


def kinds(events):
    return events["ev"] & np.uint64(EVENT_TYPE_MASK)


def replay(events) -> tuple[dict, dict, list]:
    """Levels {price: qty} per side (hftbacktest semantics for clears) and the trades."""
    book = {BUY_EVENT: {}, SELL_EVENT: {}}
    trades = []
    for row in events:
        ev = int(row["ev"])
        kind, side = ev & EVENT_TYPE_MASK, ev & (BUY_EVENT | SELL_EVENT)
        px, qty = float(row["px"]), float(row["qty"])
        if kind in (DEPTH_EVENT, DEPTH_SNAPSHOT_EVENT):
            if qty > 0:
                book[side][px] = qty
            else:
                book[side].pop(px, None)
        elif kind == DEPTH_CLEAR_EVENT:
            d = book[side]
            for p in [p for p in d if (p >= px if side == BUY_EVENT else p <= px)]:
                del d[p]
        elif kind == TRADE_EVENT:
            trades.append((px, qty, side))
    return book[BUY_EVENT], book[SELL_EVENT], trades


class RefBook:
    """Databento's reference rebuild (order by order), aggregated to {price: size} per side."""

    def __init__(self) -> None:
        self.orders: dict[int, tuple] = {}

    def apply(self, r) -> None:
        act = str(r.action)
        if act in ("T", "F", "N"):
            return
        if act == "R":
            self.orders.clear()
        elif act == "A":
            self.orders[r.order_id] = (str(r.side), r.price, r.size)
        elif act == "C":
            s, p, q = self.orders[r.order_id]
            if q - r.size > 0:
                self.orders[r.order_id] = (s, p, q - r.size)
            else:
                del self.orders[r.order_id]
        elif act == "M":
            if r.size:
                self.orders[r.order_id] = (str(r.side), r.price, r.size)
            else:
                self.orders.pop(r.order_id, None)

    def levels(self) -> tuple[dict, dict]:
        bids: dict = collections.defaultdict(float)
        asks: dict = collections.defaultdict(float)
        for s, p, q in self.orders.values():
            (bids if s == "B" else asks)[p / SCALE] += q
        return dict(bids), dict(asks)


def reference_levels(records) -> tuple[dict, dict]:
    ref = RefBook()
    for r in records:
        ref.apply(r)
    return ref.levels()


def msg(action, side, price, size, oid, ts, *, iid=7, flags=dbn.F_LAST, exch=None, seq=0):
    """One MBO record; ``price`` in currency units (None: UNDEF_PRICE), ts_event 100 ns early."""
    px = dbn.UNDEF_PRICE if price is None else round(price * SCALE)
    return dbn.MBOMsg(publisher_id=1, instrument_id=iid, ts_event=ts - 100 if exch is None
                      else exch, order_id=oid, price=px, size=size, action=action, side=side,
                      ts_recv=ts, flags=flags, sequence=seq)


def write_dbn(path: Path, records, schema=dbn.Schema.MBO) -> Path:
    meta = dbn.Metadata(dataset="GLBX.MDP3", start=0, stype_in=dbn.SType.RAW_SYMBOL,
                        stype_out=dbn.SType.INSTRUMENT_ID, schema=schema, symbols=["TEST"])
    path.write_bytes(meta.encode() + b"".join(bytes(r) for r in records))
    return path


SNAP = dbn.F_SNAPSHOT
ACT = dbn.Action


# -- real file: 2 s of ESM4 ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def live():
    need(LIVE)
    events, report = read_databento_mbo(LIVE, ES)
    meta, records = decode(LIVE)
    return events, report, meta, records


def test_registered():
    assert get_reader("databento-mbo") is read_databento_mbo
    assert _READERS["databento-mbo"] is read_databento_mbo


def test_counts_and_timestamps_match_an_independent_decode(live):
    events, report, meta, records = live
    assert str(meta.schema) == "mbo" and meta.symbols == ["ESM4"]
    assert len(records) == report.lines == 13796
    names = {"A": "add", "C": "cancel", "M": "modify", "R": "clear", "T": "trade", "F": "fill"}
    by_action = collections.Counter(names[str(r.action)] for r in records)
    for name, n in by_action.items():
        assert report.messages[name] == n
    snap = [r for r in records if r.flags & dbn.F_SNAPSHOT]
    assert report.messages["snapshot_records"] == len(snap) == 13601
    assert all(r.flags & dbn.F_SNAPSHOT for r in records[:len(snap)])  # a leading block
    assert report.has_snapshot and report.timestamp_unit == "ns" and report.repairs == {}
    assert report.events == len(events)
    # Trades: one per T record, aggressor side from `side`, price and size as decoded.
    t = [r for r in records if str(r.action) == "T"]
    k = kinds(events)
    tr = events[k == TRADE_EVENT]
    assert len(tr) == len(t) == 5
    assert np.array_equal(tr["local_ts"], [r.ts_recv for r in t])
    assert np.array_equal(tr["exch_ts"], [r.ts_event for r in t])
    assert np.allclose(tr["px"], [r.price / SCALE for r in t])
    assert np.array_equal(tr["qty"], [r.size for r in t])
    want_side = [BUY_EVENT if str(r.side) == "B" else SELL_EVENT for r in t]
    assert np.array_equal(tr["ev"] & np.uint64(BUY_EVENT | SELL_EVENT), want_side)
    # First / last timestamps: the snapshot's ts_recv, the last record's ts_recv.
    assert report.first_local_ts == records[0].ts_recv == 1715126400000000000
    assert report.last_local_ts == records[-1].ts_recv == 1715126401995697728
    assert events["local_ts"][0] == records[0].ts_recv
    assert events["local_ts"][-1] == records[-1].ts_recv
    assert (np.diff(events["local_ts"]) >= 0).all()
    assert set(events["local_ts"][k == DEPTH_EVENT]) <= {r.ts_recv for r in records}
    # The snapshot: one clear per side, then one row per level, before any live row.
    n_clear = int((k == DEPTH_CLEAR_EVENT).sum())
    n_snap = int((k == DEPTH_SNAPSHOT_EVENT).sum())
    assert n_clear == 2 and np.all(k[:n_clear + n_snap] != DEPTH_EVENT)
    levels = {(str(r.side), r.price) for r in snap if str(r.action) == "A"}
    assert n_snap == len(levels)
    finalize_events(events)  # hftbacktest's own ordering checks accept the rows


def test_book_equals_an_order_by_order_rebuild(live):
    events, report, meta, records = live
    bids, asks, _ = replay(events)
    ref_bids, ref_asks = reference_levels(records)
    assert bids == ref_bids and asks == ref_asks
    assert max(bids) == 5214.0 and min(asks) == 5214.25  # ESM4 at 00:00:02 UTC
    # The same at the end of the snapshot: replay the snapshot rows only.
    k = kinds(events)
    n0 = int(((k == DEPTH_CLEAR_EVENT) | (k == DEPTH_SNAPSHOT_EVENT)).sum())
    b0, a0, _ = replay(events[:n0])
    rb0, ra0 = reference_levels([r for r in records if r.flags & dbn.F_SNAPSHOT])
    assert b0 == rb0 and a0 == ra0 and max(b0) < min(a0)
    # Along the live records: at every receive time, the replayed book is the reference book.
    ref = RefBook()
    snap = [r for r in records if r.flags & dbn.F_SNAPSHOT]
    for r in snap:
        ref.apply(r)
    live_recs = records[len(snap):]
    rows = events[n0:]
    state = {BUY_EVENT: dict(b0), SELL_EVENT: dict(a0)}
    j = checked = 0
    for i, r in enumerate(live_recs):
        ref.apply(r)
        if i + 1 < len(live_recs) and live_recs[i + 1].ts_recv == r.ts_recv:
            continue
        while j < len(rows) and rows["local_ts"][j] <= r.ts_recv:
            ev = int(rows["ev"][j])
            if ev & EVENT_TYPE_MASK == DEPTH_EVENT:
                d = state[ev & (BUY_EVENT | SELL_EVENT)]
                px, qty = float(rows["px"][j]), float(rows["qty"][j])
                if qty > 0:
                    d[px] = qty
                else:
                    del d[px]  # a level that is gone was there
            j += 1
        assert (state[BUY_EVENT], state[SELL_EVENT]) == ref.levels(), f"live record {i}"
        checked += 1
    assert j == len(rows) and checked > 150


def test_fills_do_not_touch_the_book_the_following_cancel_or_modify_does(live):
    """Why F is only counted: every fill is followed by a C or M of the same resting order."""
    records = live[3]
    for i, r in enumerate(records):
        if str(r.action) == "F":
            later = next(x for x in records[i + 1:] if x.order_id == r.order_id)
            assert str(later.action) in ("C", "M")


def test_single_instrument_and_instrument_option(live):
    events, report, meta, records = live
    assert collections.Counter(r.instrument_id for r in records) == {5602: 13796}
    assert meta.mappings["ESM4"][0]["symbol"] == "5602"
    ev2, _ = read_databento_mbo(LIVE, ES, DatabentoOptions(instrument_id=5602))
    assert np.array_equal(ev2, events)
    with pytest.raises(InputError, match=r"instrument_id 1 is not in the file.*5602 \(ESM4\): "
                                         r"13796 records"):
        read_databento_mbo(LIVE, ES, DatabentoOptions(instrument_id=1))


def test_off_grid_price_names_file_record_and_field(live):
    records = live[3]
    half = ES.model_copy(update={"tick_size": 0.5})
    bad = next(i for i, r in enumerate(records, start=1)
               if str(r.action) != "R" and r.price % (SCALE // 2))
    with pytest.raises(InputError, match=re.escape(f"{LIVE}, record {bad}, field 'price'")
                       + ".*multiple of 0.5"):
        read_databento_mbo(LIVE, half)


# -- real file: ESH4 book state only ------------------------------------------------------------
def test_book_state_file_seeds_a_book():
    need(ESH4)
    events, report = read_databento_mbo(ESH4, ES)
    meta, records = decode(ESH4)
    assert meta.symbols == ["ESH4"]
    assert report.lines == len(records) == report.messages["add"] == 8725
    assert report.has_snapshot and report.messages["snapshot_records"] == 8725
    k = kinds(events)
    assert set(k.tolist()) == {DEPTH_CLEAR_EVENT, DEPTH_SNAPSHOT_EVENT}
    assert (k == DEPTH_CLEAR_EVENT).sum() == 2
    bids, asks, trades = replay(events)
    assert (bids, asks) == reference_levels(records) and not trades
    assert max(bids) < min(asks)
    assert sum(bids.values()) + sum(asks.values()) == sum(r.size for r in records)
    # Clear price: the worst level of its side (hftbacktest's convention).
    clears = events[k == DEPTH_CLEAR_EVENT]
    assert sorted(clears["px"].tolist()) == sorted([min(bids), max(asks)])
    assert (events["local_ts"] == records[-1].ts_recv).all()


# -- errors -------------------------------------------------------------------------------------
def test_wrong_schema_names_both():
    need(DEFINITION)
    with pytest.raises(InputError, match=re.escape(str(DEFINITION)) + ".*schema.*mbo.*definition"):
        read_databento_mbo(DEFINITION, ES)


def test_truncated_zstd_file(tmp_path):
    need(LIVE)
    raw = LIVE.read_bytes()
    assert check_zstd_complete(raw) is None
    cut = tmp_path / LIVE.name
    for n in (len(raw) // 2, len(raw) - 1, 7):
        cut.write_bytes(raw[:n])
        assert check_zstd_complete(raw[:n])
        with pytest.raises(InputError, match=re.escape(str(cut)) + ".*truncated"):
            read_databento_mbo(cut, ES)
    cut.write_bytes(raw[:len(raw) // 2])
    with pytest.raises(InputError, match=r"record \d+.*whole records decode before the cut"):
        read_databento_mbo(cut, ES)
    bad = bytearray(raw)
    bad[len(raw) // 2] ^= 0xFF  # a flipped byte: zstd's checksum or decoder notices
    cut.write_bytes(bytes(bad))
    with pytest.raises(InputError, match=re.escape(str(cut)) + ".*cannot decode"):
        read_databento_mbo(cut, ES)


def test_truncated_plain_dbn_and_unreadable_files(tmp_path):
    good = write_dbn(tmp_path / "ok.dbn", [msg(ACT.ADD, B, 100.0, 1, 1, 1000)] * 3)
    read_databento_mbo(good, ES)
    raw = good.read_bytes()
    cut = tmp_path / "cut.dbn"
    cut.write_bytes(raw[:-20])
    with pytest.raises(InputError, match=re.escape(str(cut)) + ", record 3.*truncated DBN"):
        read_databento_mbo(cut, ES)
    empty = tmp_path / "empty.dbn.zst"
    empty.write_bytes(b"")
    with pytest.raises(InputError, match=re.escape(str(empty)) + ".*empty file"):
        read_databento_mbo(empty, ES)
    text = tmp_path / "text.dbn"
    text.write_bytes(b"ts,price\n1,2\n")
    with pytest.raises(InputError, match=re.escape(str(text)) + ".*not a DBN file"):
        read_databento_mbo(text, ES)
    with pytest.raises(InputError, match="file not found"):
        read_databento_mbo(tmp_path / "missing.dbn.zst", ES)
    header_only = tmp_path / "header.dbn"
    header_only.write_bytes(raw[:10])
    with pytest.raises(InputError, match=re.escape(str(header_only))):
        read_databento_mbo(header_only, ES)


# -- hand-made DBN files --------------------------------------------------------------------------
def test_hand_made_book_exact_rows(tmp_path):
    recs = [
        msg(ACT.CLEAR, N, None, 0, 0, 1000, flags=SNAP),
        msg(ACT.ADD, B, 100.00, 5, 1, 1000, flags=SNAP),
        msg(ACT.ADD, B, 99.75, 2, 2, 1000, flags=SNAP),
        msg(ACT.ADD, B, 99.75, 1, 5, 1000, flags=SNAP),
        msg(ACT.ADD, A, 100.25, 3, 3, 1000, flags=SNAP | dbn.F_LAST),
        msg(ACT.ADD, A, 100.25, 4, 4, 2000),              # ask 100.25 -> 7
        msg(ACT.MODIFY, B, 100.00, 2, 2, 3000),           # order 2 moves: 99.75 -> 1, 100 -> 7
        msg(ACT.CANCEL, A, 100.25, 1, 4, 4000),           # partial cancel: 100.25 -> 6
        msg(ACT.TRADE, A, 100.00, 2, 0, 5000, flags=0),   # sell aggressor
        msg(ACT.FILL, B, 100.00, 2, 1, 5000, flags=0),    # no book change
        msg(ACT.MODIFY, B, 100.00, 3, 1, 5000),           # the fill's reduction: 100 -> 5
        msg(ACT.CANCEL, B, 99.75, 1, 99, 6000),           # unknown id: repair, nothing emitted
        msg(ACT.TRADE, N, 100.00, 1, 0, 7000),            # no aggressor: counted, not emitted
        msg(ACT.NONE, N, None, 0, 0, 7500),
        msg(ACT.CANCEL, B, 99.75, 1, 5, 8000),            # 99.75 gone
        msg(ACT.MODIFY, A, 100.50, 6, 6, 8500),           # unknown id: an add at 100.50
        msg(ACT.CLEAR, N, None, 0, 0, 9000),              # both sides gone
        msg(ACT.ADD, A, 101.00, 1, 7, 9500, exch=9400),
    ]
    events, report = read_databento_mbo(write_dbn(tmp_path / "book.dbn", recs), ES)
    buy, sell = BUY_EVENT, SELL_EVENT
    got = [(int(e["ev"]), int(e["exch_ts"]), int(e["local_ts"]), float(e["px"]), float(e["qty"]))
           for e in events]
    want = [
        (DEPTH_CLEAR_EVENT | buy, 1000, 1000, 99.75, 0.0),
        (DEPTH_SNAPSHOT_EVENT | buy, 1000, 1000, 100.0, 5.0),
        (DEPTH_SNAPSHOT_EVENT | buy, 1000, 1000, 99.75, 3.0),
        (DEPTH_CLEAR_EVENT | sell, 1000, 1000, 100.25, 0.0),
        (DEPTH_SNAPSHOT_EVENT | sell, 1000, 1000, 100.25, 3.0),
        (DEPTH_EVENT | sell, 1900, 2000, 100.25, 7.0),
        (DEPTH_EVENT | buy, 2900, 3000, 99.75, 1.0),
        (DEPTH_EVENT | buy, 2900, 3000, 100.0, 7.0),
        (DEPTH_EVENT | sell, 3900, 4000, 100.25, 6.0),
        (TRADE_EVENT | sell, 4900, 5000, 100.0, 2.0),
        (DEPTH_EVENT | buy, 4900, 5000, 100.0, 5.0),
        (DEPTH_EVENT | buy, 7900, 8000, 99.75, 0.0),
        (DEPTH_EVENT | sell, 8400, 8500, 100.5, 6.0),
        (DEPTH_EVENT | buy, 8900, 9000, 100.0, 0.0),
        (DEPTH_EVENT | sell, 8900, 9000, 100.25, 0.0),
        (DEPTH_EVENT | sell, 8900, 9000, 100.5, 0.0),
        (DEPTH_EVENT | sell, 9400, 9500, 101.0, 1.0),
    ]
    assert got == want
    assert report.lines == len(recs) and report.has_snapshot
    assert report.messages == {"clear": 2, "add": 6, "modify": 3, "cancel": 3, "trade": 2,
                               "fill": 1, "none": 1, "snapshot_records": 5, "trade_no_side": 1}
    assert report.repairs == {"cancel_unknown_order": 1, "modify_unknown_order": 1}
    assert any("side N" in w for w in report.warnings)
    assert report.first_local_ts == 1000 and report.last_local_ts == 9500


def test_snapshot_exch_ts_not_after_first_live_event(tmp_path):
    recs = [msg(ACT.ADD, B, 100.0, 1, 1, 5000, flags=SNAP | dbn.F_LAST, exch=10),
            msg(ACT.ADD, A, 100.25, 1, 2, 5001, exch=4000)]
    events, _ = read_databento_mbo(write_dbn(tmp_path / "s.dbn", recs), ES)
    assert events["exch_ts"].tolist() == [4000, 4000, 4000]
    assert events["local_ts"].tolist() == [5000, 5000, 5001]


def test_no_snapshot_starts_empty_with_warning(tmp_path):
    recs = [msg(ACT.ADD, B, 100.0, 2, 1, 1000), msg(ACT.CANCEL, B, 100.0, 2, 1, 2000)]
    events, report = read_databento_mbo(write_dbn(tmp_path / "n.dbn", recs), ES)
    assert not report.has_snapshot and any("no snapshot" in w for w in report.warnings)
    assert kinds(events).tolist() == [DEPTH_EVENT, DEPTH_EVENT]
    assert events["qty"].tolist() == [2.0, 0.0]


def test_multiple_instruments(tmp_path):
    recs = [msg(ACT.ADD, B, 100.0, 1, 1, 1000, iid=7), msg(ACT.ADD, B, 100.0, 2, 2, 1001, iid=8),
            msg(ACT.ADD, A, 100.5, 3, 3, 1002, iid=8), msg(ACT.ADD, A, 100.25, 4, 4, 1003, iid=7),
            msg(ACT.ADD, A, 100.75, 5, 5, 1004, iid=8)]
    path = write_dbn(tmp_path / "multi.dbn", recs)
    with pytest.raises(InputError, match=re.escape(str(path)) + r".*field 'instrument_id'.*"
                       r"2 instruments: 8: 3 records, 7: 2 records.*reader: \{instrument_id"):
        read_databento_mbo(path, ES)
    events, report = read_databento_mbo(path, ES, DatabentoOptions(instrument_id=8))
    assert events["px"].tolist() == [100.0, 100.5, 100.75]
    assert events["qty"].tolist() == [2.0, 3.0, 5.0]
    assert report.messages["other_instrument"] == 2 and report.lines == 5
    with pytest.raises(InputError, match=r"instrument_id 9 is not in the file.*8: 3 records, "
                                         r"7: 2 records"):
        read_databento_mbo(path, ES, DatabentoOptions(instrument_id=9))


def test_order_event_without_side_is_an_error(tmp_path):
    path = write_dbn(tmp_path / "noside.dbn", [msg(ACT.ADD, N, 100.0, 1, 1, 1000)])
    with pytest.raises(InputError, match=r"record 1, field 'side'"):
        read_databento_mbo(path, ES)


def test_ts_recv_backwards_is_an_error(tmp_path):
    path = write_dbn(tmp_path / "back.dbn", [msg(ACT.ADD, B, 100.0, 1, 1, 2000),
                                             msg(ACT.ADD, B, 100.0, 1, 2, 1000)])
    with pytest.raises(InputError, match=r"record 2, field 'ts_recv'.*backwards"):
        read_databento_mbo(path, ES)


ops = st.lists(st.tuples(st.sampled_from("AACMM"), st.integers(0, 11), st.integers(-3, 3),
                         st.integers(1, 5), st.booleans()), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(ops)
def test_random_order_flow_matches_the_reference_rebuild(tmp_path, seq):
    """Adds, cancels (partial or whole) and modifies (moves, resizes) of a handful of ids: the
    replayed events always equal the reference rebuild, level by level."""
    resting: dict[int, tuple] = {}
    recs = []
    for ts, (act, oid, dp, size, bid) in enumerate(seq, start=1):
        side = B if bid else A
        base = 100.0 if bid else 102.0
        price = base + 0.25 * dp
        if act == "A":
            if oid in resting:
                continue
            resting[oid] = (side, price, size)
            recs.append(msg(ACT.ADD, side, price, size, oid, 1000 + ts * 10))
        elif act == "C":
            if oid not in resting:
                continue
            s, p, q = resting[oid]
            take = min(size, q)
            recs.append(msg(ACT.CANCEL, s, p, take, oid, 1000 + ts * 10))
            if q - take:
                resting[oid] = (s, p, q - take)
            else:
                del resting[oid]
        else:
            if oid not in resting:
                continue
            s = resting[oid][0]
            p = (100.0 if s is B else 102.0) + 0.25 * dp
            resting[oid] = (s, p, size)
            recs.append(msg(ACT.MODIFY, s, p, size, oid, 1000 + ts * 10))
    if not recs:
        return
    path = write_dbn(tmp_path / "prop.dbn", recs)
    events, report = read_databento_mbo(path, ES)
    bids, asks, _ = replay(events)
    assert (bids, asks) == reference_levels(recs)
    assert report.repairs == {}


# -- registry and the whole path ------------------------------------------------------------------
def test_registry_entry_and_prepare(tmp_path):
    need(LIVE)
    from cmm.data.prepare import prepare_dataset
    from cmm.data.spec import load_dataset_spec

    spec = load_dataset_spec("cme-mbo-sample")
    assert spec.format == "databento-mbo" and spec.instrument.tick_size == 0.25
    (src,) = spec.sources
    assert hashlib.sha256(spec.resolve(src.path).read_bytes()).hexdigest() == src.sha256
    assert src.url.endswith("/a95c804/tests/test_data/databento/" + LIVE.name)
    ds = prepare_dataset("cme-mbo-sample", cache_dir=tmp_path, progress=False)
    assert ds.meta["reports"][0]["has_snapshot"]
    assert ds.meta["split_counts"]["train"] > 0
    steps = ds.steps
    assert steps["valid"].all() and (steps["bid_px_0"] < steps["ask_px_0"]).all()


@pytest.mark.parametrize("fault", ["definition-schema", "truncated"])
def test_cli_prepare_of_a_bad_dbn_file_is_one_line_exit_2_and_leaves_nothing(tmp_path, fault):
    import os
    import subprocess
    import sys

    src = DATA / "orderbooks_mbo_2024-05-08T00-00-00_2024-05-08T00-00-02.dbn.zst"
    bad = tmp_path / "bad.dbn.zst"
    if fault == "truncated":
        raw = src.read_bytes()
        bad.write_bytes(raw[: len(raw) // 2])
    else:
        bad.write_bytes((DATA / "definition-glbx-es-fut.dbn.zst").read_bytes())
    spec = tmp_path / "spec.yaml"
    spec.write_text("name: bad-mbo\nformat: databento-mbo\nfiles: [bad.dbn.zst]\n"
                    "instrument: {tick_size: 0.25, lot_size: 1.0, contract_size: 50.0}\n"
                    "grid: {dt_ms: 2, levels: 10}\n")
    cache = tmp_path / "cache"
    r = subprocess.run([sys.executable, "-m", "cmm", "data", "prepare", str(spec)],
                       capture_output=True, text=True, timeout=300,
                       env={**os.environ, "CMM_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr and str(bad) in lines[0]
    if fault == "definition-schema":
        assert "definition" in lines[0] and "mbo" in lines[0]
    prepared = cache / "prepared"
    assert not prepared.exists() or not any(prepared.iterdir())
