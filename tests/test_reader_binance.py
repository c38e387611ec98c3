"""Binance reader (formats A and B): every real capture, sequence gaps, bad inputs, and a
round-trip property on generated diffs and trades."""

from __future__ import annotations

import contextlib
import gzip
import io
import itertools
import json
import re
from datetime import datetime, timezone
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmm.config import Instrument
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
from cmm.data.readers.binance import read_binance
from cmm.errors import InputError
from cmm.io import default_data_dir

INSTRUMENT = Instrument(tick_size=0.01, lot_size=0.00001)

# path -> (local timestamp unit, UTC start from the data README)
REAL_FILES = {
    "binance/usdm/btcusdt_20230404.gz": ("us", "2023-04-04 23:58:20"),
    "binance/usdm/btcusdt_20230405.gz": ("us", "2023-04-05 00:00:00"),
    "binance/usdm/btcusdt_20240718.gz": ("ns", "2024-07-18 23:57:00"),
    "binance/usdm/btcusdt_20240719.gz": ("ns", "2024-07-19 00:00:00"),
    "binance/usdm/btcusdt_20240808.gz": ("ns", "2024-08-08 23:54:15"),
    "binance/usdm/ethusdt_20240718.gz": ("ns", "2024-07-18 23:57:01"),
    "binance/usdm/ethusdt_20240719.gz": ("ns", "2024-07-19 00:00:00"),
    "binance/usdm/ethusdt_20240808.gz": ("ns", "2024-08-08 23:54:15"),
    "binance/spot/btcusdt_20230405.gz": ("us", "2023-04-05 00:00:00"),
    "binance/spot/btcusdt_20240808.gz": ("ns", "2024-08-08 23:54:13"),
    "binance/spot/btcusdt_20240809.gz": ("ns", "2024-08-09 00:00:00"),
    "binance/spot/ethusdt_20240808.gz": ("ns", "2024-08-08 23:54:14"),
    "binance/spot/ethusdt_20240809.gz": ("ns", "2024-08-09 00:00:00"),
}


def _real(rel: str) -> Path:
    return default_data_dir() / rel


@lru_cache(maxsize=None)
def _read_real(rel: str):
    return read_binance(_real(rel), INSTRUMENT)


def _independent_counts(path: Path) -> dict[str, int]:
    """Counts from the raw text with the standard json module, sharing no code with the reader."""
    counts = {"trade": 0, "depth_rows": 0, "snapshot_rows": 0, "bookTicker": 0}
    with gzip.open(path, "rb") as f:
        for line in f:
            body = line.split(b" ", 1)[1]
            if b'@trade"' in body:
                if b'"X":"' not in body or b'"X":"MARKET"' in body:
                    counts["trade"] += 1
            elif b'@bookTicker"' in body:
                counts["bookTicker"] += 1
            elif b'"depthUpdate"' in body:
                data = json.loads(body)["data"]
                counts["depth_rows"] += len(data["b"]) + len(data["a"])
            elif b'"lastUpdateId"' in body:
                snap = json.loads(body)
                for side in ("bids", "asks"):
                    if snap[side]:
                        counts["snapshot_rows"] += len(snap[side]) + 1  # + the clear row
    return counts


# --------------------------------------------------------------------------------------------
# real captures


@pytest.mark.parametrize("rel", sorted(REAL_FILES))
def test_real_file_parses_with_expected_counts(rel, data_dir):
    events, report = _read_real(rel)
    expected = _independent_counts(data_dir / rel)
    kind = events["ev"] & EVENT_TYPE_MASK
    assert int((kind == TRADE_EVENT).sum()) == expected["trade"] == report.messages["trade"]
    assert report.messages["bookTicker"] == expected["bookTicker"]
    assert report.repairs.get("stale_diff_dropped", 0) == 0  # no stale diff in these captures
    assert int((kind == DEPTH_EVENT).sum()) == expected["depth_rows"]
    n_snapshot = int(((kind == DEPTH_SNAPSHOT_EVENT) | (kind == DEPTH_CLEAR_EVENT)).sum())
    assert n_snapshot == expected["snapshot_rows"]
    assert report.has_snapshot == (expected["snapshot_rows"] > 0)
    assert len(events) == report.events == sum(
        expected[k] for k in ("trade", "depth_rows", "snapshot_rows"))
    assert report.gaps == []  # these captures are continuous
    # no EXCH/LOCAL flags on raw events
    assert not (events["ev"] & ~np.uint64(0xFF | BUY_EVENT | SELL_EVENT)).any()


@pytest.mark.parametrize("rel", sorted(REAL_FILES))
def test_real_file_timestamp_unit_and_range(rel):
    events, report = _read_real(rel)
    unit, start = REAL_FILES[rel]
    assert report.timestamp_unit == unit
    start_ns = int(datetime.strptime(start, "%Y-%m-%d %H:%M:%S")
                   .replace(tzinfo=timezone.utc).timestamp()) * 10**9
    assert abs(report.first_local_ts - start_ns) < 2 * 10**9
    assert report.first_local_ts <= int(events["local_ts"].min())
    assert int(events["local_ts"].max()) <= report.last_local_ts < start_ns + 10 * 60 * 10**9
    # exchange times (ms * 1e6) within a few seconds of the local ones
    assert np.abs(events["exch_ts"] - events["local_ts"]).max() < 5 * 10**9


@pytest.mark.parametrize("rel", sorted(REAL_FILES))
def test_real_file_finalizes_to_valid_order(rel):
    from hftbacktest.data.validation import validate_event_order

    events, _ = _read_real(rel)
    final = finalize_events(events)
    validate_event_order(final)  # raises on a bad order
    assert len(final) >= len(events)


def test_matches_hftbacktest_converter_exactly(data_dir):
    """On a format-B futures file our raw events + finalize_events equal hftbacktest's own
    converter's output, row for row."""
    from hftbacktest.data.utils import binancefutures

    rel = "binance/usdm/btcusdt_20240718.gz"
    with contextlib.redirect_stdout(io.StringIO()):
        theirs = binancefutures.convert(str(data_dir / rel), buffer_size=1_000_000)
    ours = finalize_events(_read_real(rel)[0])
    assert ours.dtype == theirs.dtype
    assert np.array_equal(ours, theirs)


def _delete_line(src: Path, dst: Path, pick) -> tuple[int, dict, int]:
    """Copy ``src`` to ``dst`` without the line chosen by ``pick(k, data)``; return its 1-based
    number, its data, and the 1-based number (in ``dst``) of the next depth diff."""
    lines = gzip.decompress(src.read_bytes()).split(b"\n")
    depth = [k for k, line in enumerate(lines) if b'"depthUpdate"' in line]
    chosen = next(k for n, k in enumerate(depth) if pick(n, k))
    data = json.loads(lines[chosen].split(b" ", 1)[1])["data"]
    nxt = depth[depth.index(chosen) + 1]
    dst.write_bytes(gzip.compress(b"\n".join(lines[:chosen] + lines[chosen + 1:])))
    return chosen + 1, data, nxt  # nxt (0-based in src) == its 1-based number in dst


def test_gap_detected_when_a_futures_diff_is_deleted(tmp_path, data_dir):
    dst = tmp_path / "gap.gz"
    _, deleted, next_line = _delete_line(data_dir / "binance/usdm/btcusdt_20240718.gz", dst,
                                         lambda n, k: n == 200)
    _, report = read_binance(dst, INSTRUMENT)
    assert report.gaps == [{"line": next_line, "expected": f"pu={deleted['pu']}",
                            "got": f"pu={deleted['u']}"}]


def test_gap_detected_when_a_spot_diff_is_deleted(tmp_path, data_dir):
    dst = tmp_path / "gap.gz"
    _, deleted, next_line = _delete_line(data_dir / "binance/spot/btcusdt_20230405.gz", dst,
                                         lambda n, k: n == 100)
    _, report = read_binance(dst, INSTRUMENT)
    assert report.gaps == [{"line": next_line, "expected": f"U={deleted['U']}",
                            "got": f"U={deleted['u'] + 1}"}]


# --------------------------------------------------------------------------------------------
# synthetic lines

T0_NS = 1_723_161_255_030_314_667  # a format-B local time
T0_MS = 1_723_161_256_298


def _frame(stream: str, data: dict, compact: bool = True) -> str:
    sep = (",", ":") if compact else (", ", ": ")
    return json.dumps({"stream": stream, "data": data}, separators=sep)


def _fdepth(U, u, pu, bids, asks, t=0, compact=True) -> str:
    return _frame("btcusdt@depth@0ms", {"e": "depthUpdate", "E": T0_MS + t + 1, "T": T0_MS + t,
                                        "s": "BTCUSDT", "U": U, "u": u, "pu": pu,
                                        "b": bids, "a": asks}, compact)


def _sdepth(U, u, bids, asks, t=0, compact=True) -> str:
    return _frame("btcusdt@depth@100ms", {"e": "depthUpdate", "E": T0_MS + t, "s": "BTCUSDT",
                                          "U": U, "u": u, "b": bids, "a": asks}, compact)


_TRADE_IDS = itertools.count(1)  # each trade its own id, as on the exchange (repeats are dropped)


def _trade(p, q, m, t=0, x="MARKET", compact=True) -> str:
    data = {"e": "trade", "E": T0_MS + t + 1, "T": T0_MS + t, "s": "BTCUSDT",
            "t": next(_TRADE_IDS),
            "p": p, "q": q, "m": m}
    if x is not None:
        data["X"] = x
    return _frame("btcusdt@trade", data, compact)


def _ticker() -> str:
    return _frame("btcusdt@bookTicker", {"e": "bookTicker", "u": 1, "s": "BTCUSDT",
                                         "b": "100.0", "B": "1", "a": "100.1", "A": "1",
                                         "T": T0_MS, "E": T0_MS})


def _snapshot(last_update_id, bids, asks, with_t=True) -> str:
    msg = {"lastUpdateId": last_update_id}
    if with_t:
        msg.update({"E": T0_MS + 1, "T": T0_MS})
    msg.update({"bids": bids, "asks": asks})
    return json.dumps(msg)


def _write(tmp_path: Path, bodies: list[str], name="x.gz", t0=T0_NS, step=1000,
           compress=True) -> Path:
    text = "\n".join(f"{t0 + k * step} {body}" for k, body in enumerate(bodies)) + "\n"
    path = tmp_path / name
    path.write_bytes(gzip.compress(text.encode()) if compress else text.encode())
    return path


def _where(path: Path, line: int, field: str) -> str:
    return re.escape(f"{path}:{line}, field '{field}'")


def test_synthetic_rows_flags_and_timestamps(tmp_path):
    path = _write(tmp_path, [
        _ticker(),
        _fdepth(10, 12, 9, [["100.10", "1.5"]], [["100.20", "0"], ["100.30", "2"]]),
        _trade("100.20", "0.5", True),
        _trade("100.30", "0.25", False, t=3),
        _trade("100.30", "7", False, x="LIQUIDATION"),
    ])
    events, report = read_binance(path, INSTRUMENT)
    assert list(events["ev"]) == [DEPTH_EVENT | BUY_EVENT, DEPTH_EVENT | SELL_EVENT,
                                  DEPTH_EVENT | SELL_EVENT, TRADE_EVENT | SELL_EVENT,
                                  TRADE_EVENT | BUY_EVENT]
    assert list(events["px"]) == [100.10, 100.20, 100.30, 100.20, 100.30]
    assert list(events["qty"]) == [1.5, 0.0, 2.0, 0.5, 0.25]
    assert list(events["local_ts"]) == [T0_NS + 1000] * 3 + [T0_NS + 2000, T0_NS + 3000]
    assert list(events["exch_ts"]) == [T0_MS * 10**6] * 4 + [(T0_MS + 3) * 10**6]
    assert report.messages["bookTicker"] == 1
    assert report.messages["trade_not_market"] == 1
    assert report.timestamp_unit == "ns" and report.lines == 5


@pytest.mark.parametrize("digits,unit,mul", [(16, "us", 1000), (19, "ns", 1), (13, "ms", 10**6)])
def test_timestamp_unit_detected_per_file(tmp_path, digits, unit, mul):
    t0 = T0_NS // 10 ** (19 - digits)
    path = _write(tmp_path, [_trade("1.0", "1.0", True) for _ in range(2)], t0=t0, step=1)
    events, report = read_binance(path, INSTRUMENT)
    assert report.timestamp_unit == unit
    assert list(events["local_ts"]) == [t0 * mul, (t0 + 1) * mul]


def test_snapshot_seeds_book_like_hftbacktest(tmp_path):
    path = _write(tmp_path, [_snapshot(100, [["10.0", "1"], ["9.0", "2"]], [["11.0", "3"]],
                                       with_t=False)], compress=False)
    events, report = read_binance(path, INSTRUMENT)
    assert report.has_snapshot
    assert list(events["ev"]) == [DEPTH_CLEAR_EVENT | BUY_EVENT, DEPTH_SNAPSHOT_EVENT | BUY_EVENT,
                                  DEPTH_SNAPSHOT_EVENT | BUY_EVENT,
                                  DEPTH_CLEAR_EVENT | SELL_EVENT,
                                  DEPTH_SNAPSHOT_EVENT | SELL_EVENT]
    assert list(events["px"]) == [9.0, 10.0, 9.0, 11.0, 11.0]
    assert list(events["qty"]) == [0.0, 1.0, 2.0, 0.0, 3.0]
    assert (events["exch_ts"] == T0_NS).all()  # no T: the local time


def test_stale_diffs_after_snapshot_dropped_and_straddle_checked(tmp_path):
    lv = [["10.0", "1"]]
    path = _write(tmp_path, [
        _snapshot(100, lv, lv),
        _fdepth(80, 90, 79, lv, lv),  # stale: u < 100
        _fdepth(91, 99, 90, lv, lv),  # stale
        _fdepth(100, 110, 99, lv, lv),  # straddles 100
        _fdepth(111, 120, 110, lv, lv),
        _snapshot(200, lv, lv),
        _fdepth(205, 210, 204, lv, lv),  # does not straddle 200: a gap
    ])
    events, report = read_binance(path, INSTRUMENT)
    assert report.repairs == {"stale_diff_dropped": 2}
    assert report.gaps == [{"line": 7, "expected": "U <= 200 <= u", "got": "U=205, u=210"}]
    assert int(((events["ev"] & EVENT_TYPE_MASK) == DEPTH_EVENT).sum()) == 6


def test_snapshot_covered_by_earlier_diffs_is_not_a_gap(tmp_path):
    lv = [["10.0", "1"]]
    path = _write(tmp_path, [
        _sdepth(90, 105, lv, lv),
        _snapshot(100, lv, lv, with_t=False),  # arrives after the diff that covers it
        _sdepth(106, 110, lv, lv),
        _sdepth(112, 115, lv, lv),  # 111 missing
    ])
    _, report = read_binance(path, INSTRUMENT)
    assert report.gaps == [{"line": 4, "expected": "U=111", "got": "U=112"}]
    assert report.repairs == {}


def test_error_frame_is_a_warning(tmp_path):
    path = _write(tmp_path, [_trade("1.0", "1.0", True),
                             json.dumps({"code": -1003, "msg": "Too many requests"})])
    events, report = read_binance(path, INSTRUMENT)
    assert len(events) == 1
    assert report.messages["error_frame"] == 1
    assert any("Too many requests" in w for w in report.warnings)


# --------------------------------------------------------------------------------------------
# bad inputs: each error names the file, the line and the field


def test_malformed_json(tmp_path):
    good = _fdepth(1, 2, 0, [["10.0", "1"]], [])
    path = _write(tmp_path, [_trade("1.0", "1.0", True), good[:-40]])
    with pytest.raises(InputError, match=_where(path, 2, "json") + ": malformed JSON"):
        read_binance(path, INSTRUMENT)


def test_truncated_book_ticker_frame(tmp_path):
    path = _write(tmp_path, [_trade("1.0", "1.0", True), _ticker()[:-10]])
    with pytest.raises(InputError, match=_where(path, 2, "json") + ": malformed JSON"):
        read_binance(path, INSTRUMENT)


def test_missing_field(tmp_path):
    body = _trade("1.0", "1.0", True).replace('"m":true', '"M":true')
    path = _write(tmp_path, [_trade("1.0", "1.0", True), body])
    with pytest.raises(InputError, match=_where(path, 2, "m") + ": required field is missing"):
        read_binance(path, INSTRUMENT)


@pytest.mark.parametrize("price,field", [("nan", "b[1][0]"), ("-5.0", "b[1][0]"),
                                         ("0.00", "b[1][0]"), ("abc", "b[1][0]")])
def test_bad_depth_price(tmp_path, price, field):
    path = _write(tmp_path, [
        _fdepth(1, 2, 0, [["10.0", "1"]], [["11.0", "1"]]),
        _fdepth(3, 4, 2, [["10.0", "1"], [price, "1"]], [["11.0", "1"]]),
    ])
    expected = "unparsable number" if price == "abc" else "invalid value; expected a finite price"
    with pytest.raises(InputError, match=_where(path, 2, field) + ": " + expected):
        read_binance(path, INSTRUMENT)


def test_bad_depth_price_slow_path(tmp_path):
    """The same check on a diff written with spaces (not the fast path's layout)."""
    path = _write(tmp_path, [_fdepth(3, 4, 2, [["10.0", "1"]], [["NaN", "1"]], compact=False)])
    with pytest.raises(InputError, match=_where(path, 1, "a[0][0]") + ": invalid value"):
        read_binance(path, INSTRUMENT)


def test_negative_depth_qty(tmp_path):
    path = _write(tmp_path, [_fdepth(3, 4, 2, [["10.0", "1"]], [["11.0", "-1"]])])
    with pytest.raises(InputError, match=_where(path, 1, "a[0][1]") + ".*quantity >= 0"):
        read_binance(path, INSTRUMENT)


@pytest.mark.parametrize("price,qty,field,expected", [
    ("NaN", "1.0", "p", "finite price"), ("-1.0", "1.0", "p", "finite price"),
    ("0", "1.0", "p", "finite price"), ("1.0", "0.000", "q", "trade quantity > 0"),
    ("1.0", "-2", "q", "quantity"), ("x1", "1.0", "p", "unparsable number"),
])
def test_bad_trade(tmp_path, price, qty, field, expected):
    path = _write(tmp_path, [_trade("1.0", "1.0", True), _trade("1.0", "1.0", False),
                             _trade(price, qty, True)])
    with pytest.raises(InputError, match=_where(path, 3, field) + f".*{expected}"):
        read_binance(path, INSTRUMENT)


def test_bad_snapshot_price(tmp_path):
    path = _write(tmp_path, [_snapshot(1, [["10.0", "1"], ["-9.0", "1"]], [["11.0", "1"]])])
    with pytest.raises(InputError, match=_where(path, 1, r"bids[1][0]") + ": invalid value"):
        read_binance(path, INSTRUMENT)


def test_timestamp_backwards(tmp_path):
    bodies = [_trade("1.0", "1.0", True)] * 4
    path = _write(tmp_path, bodies)
    lines = path.read_bytes()
    lines = gzip.decompress(lines).split(b"\n")
    lines[1], lines[2] = lines[2], lines[1]
    path.write_bytes(gzip.compress(b"\n".join(lines)))
    with pytest.raises(InputError, match=_where(path, 3, "local_ts")
                       + r": local timestamp goes backwards \(line 3 vs previous line 2\)"):
        read_binance(path, INSTRUMENT)


def test_timestamp_digit_count_changes(tmp_path):
    path = tmp_path / "x.txt"
    body = _trade("1.0", "1.0", True)
    path.write_text(f"{T0_NS} {body}\n{T0_NS // 1000} {body}\n")
    with pytest.raises(InputError, match=_where(path, 2, "local_ts") + ": .*19 digits"):
        read_binance(path, INSTRUMENT)


def test_unknown_message_type(tmp_path):
    body = _frame("btcusdt@kline_1m", {"e": "kline", "E": T0_MS, "s": "BTCUSDT"})
    path = _write(tmp_path, [_trade("1.0", "1.0", True), body])
    with pytest.raises(InputError, match=_where(path, 2, "e") + ": unknown message type.*'kline'"):
        read_binance(path, INSTRUMENT)


def test_truncated_gzip(tmp_path, data_dir):
    raw = (data_dir / "binance/usdm/btcusdt_20240718.gz").read_bytes()
    path = tmp_path / "cut.gz"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=re.escape(str(path)) + ": truncated or corrupt"):
        read_binance(path, INSTRUMENT)


# mtime=0: the same bytes (and test id) in every collecting process (pytest-xdist workers)
@pytest.mark.parametrize("content", [b"", gzip.compress(b"", mtime=0), b"\n\n"],
                         ids=["empty", "empty-gzip", "blank-lines"])
def test_empty_file(tmp_path, content):
    path = tmp_path / "empty.gz"
    path.write_bytes(content)
    with pytest.raises(InputError, match=re.escape(str(path)) + ": empty file"):
        read_binance(path, INSTRUMENT)


# --------------------------------------------------------------------------------------------
# property: generated valid diffs and trades round-trip

_decimal = st.builds(
    lambda whole, frac, digits: f"{whole}.{str(frac).zfill(digits)[:digits]}" if digits
    else str(whole),
    st.integers(0, 10**6), st.integers(0, 10**8), st.integers(0, 8))
_price = _decimal.filter(lambda s: float(s) > 0)
_level = st.tuples(_price, _decimal).map(list)
_diff = st.tuples(st.lists(_level, max_size=6), st.lists(_level, max_size=6))
_trade_msg = st.tuples(_price, _decimal.filter(lambda s: float(s) > 0), st.booleans())
_message = st.one_of(_diff.map(lambda d: ("diff", d)), _trade_msg.map(lambda t: ("trade", t)))


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(messages=st.lists(_message, min_size=1, max_size=25), spot=st.booleans(),
       compact=st.booleans())
def test_round_trip_property(tmp_path, messages, spot, compact):
    bodies, want_px, want_qty, want_ev = [], [], [], []
    u = 1000
    for k, (kind, payload) in enumerate(messages):
        if kind == "diff":
            bids, asks = payload
            U, u_new = u + 1, u + 1 + k
            bodies.append(_sdepth(U, u_new, bids, asks, t=k, compact=compact) if spot
                          else _fdepth(U, u_new, u, bids, asks, t=k, compact=compact))
            u = u_new
            for side, levels in ((BUY_EVENT, bids), (SELL_EVENT, asks)):
                want_px += [float(p) for p, _ in levels]
                want_qty += [float(q) for _, q in levels]
                want_ev += [DEPTH_EVENT | side] * len(levels)
        else:
            p, q, m = payload
            bodies.append(_trade(p, q, m, t=k, x=None if spot else "MARKET", compact=compact))
            want_px.append(float(p))
            want_qty.append(float(q))
            want_ev.append(TRADE_EVENT | (SELL_EVENT if m else BUY_EVENT))
    path = _write(tmp_path, bodies, name="prop.gz")
    events, report = read_binance(path, INSTRUMENT)
    assert len(events) == len(want_px)
    assert events["px"].tolist() == want_px
    assert events["qty"].tolist() == want_qty
    assert events["ev"].tolist() == want_ev
    assert report.gaps == []


def test_registered_under_its_format_name():
    from cmm.data import readers

    assert readers._READERS["binance"] is read_binance
