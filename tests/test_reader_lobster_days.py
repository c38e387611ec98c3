"""LOBSTER's full-day zip archives (GOOG 10 levels, AAPL 1 level, 2012-06-21) read in place.

Every expected value is computed here from the archives' members, parsed with ``zipfile`` and
numpy, not through the reader: message counts per type, trades, sub-tick hidden executions,
times (EDT = UTC-4), the replayed book against LOBSTER's own order-book rows, the session cut.
Bad archives must raise an ``InputError`` naming the file (and member / line) and leave no
partial artefact in the cache.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from test_readers_orderlevel import DATA, STOCK, kinds, need, sides

from cmm.config import LobsterOptions
from cmm.data.events import (
    BUY_EVENT,
    DEPTH_CLEAR_EVENT,
    DEPTH_EVENT,
    DEPTH_SNAPSHOT_EVENT,
    EVENT_TYPE_MASK,
    SELL_EVENT,
    TRADE_EVENT,
)
from cmm.data.prepare import prepare_dataset
from cmm.data.readers.lobster import read_lobster
from cmm.errors import InputError

GOOG = DATA / "lobster" / "LOBSTER_SampleFile_GOOG_2012-06-21_10.zip"
AAPL = DATA / "lobster" / "LOBSTER_SampleFile_AAPL_2012-06-21_1.zip"
GOOG_MSG = "GOOG_2012-06-21_34200000_57600000_message_10.csv"
GOOG_BOOK = "GOOG_2012-06-21_34200000_57600000_orderbook_10.csv"
README = "LOBSTER_SampleFiles_ReadMe.txt"
# 09:30:00 New York on 2012-06-21 (EDT, UTC-4) is 13:30:00 UTC.
OPEN_UTC_NS = int(np.datetime64("2012-06-21T13:30:00", "ns").astype(np.int64))
OPEN_S = 34_200  # 09:30 in seconds after midnight
CUT_OPEN_S, CUT_CLOSE_S = OPEN_S + 300, 57_600 - 300  # 09:35, 15:55
DUMMY_ASK, DUMMY_BID = 9_999_999_999, -9_999_999_999
CUT = LobsterOptions(skip_open_minutes=5, skip_close_minutes=5)
SPEC_YAML = """name: broken-lobster
format: lobster
files: [{file}]
instrument: {{tick_size: 0.01, lot_size: 1.0}}
grid: {{dt_ms: 100, levels: 10}}
reader: {reader}
"""


# -- independent parsing of the archives ------------------------------------------------------
def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as z:
        return {name: z.read(name) for name in z.namelist()}


def _seconds_ns(text: str) -> int:
    whole, _, frac = text.partition(".")
    assert len(frac) <= 9, text
    return int(whole) * 10**9 + int(frac.ljust(9, "0"))


class Day:
    """One archive's message and order-book members, parsed with numpy."""

    def __init__(self, path: Path) -> None:
        members = _members(path)
        msg_name = next(n for n in members if "_message_" in n)
        book_name = next(n for n in members if "_orderbook_" in n)
        self.msg_name, self.book_name = msg_name, book_name
        self.msg_bytes, self.book_bytes = members[msg_name], members[book_name]
        self.readme = members.get(README, b"")
        cells = np.loadtxt(io.BytesIO(self.msg_bytes), delimiter=",", dtype=str, ndmin=2)
        self.time_text = cells[:, 0]
        self.ns = np.array([_seconds_ns(t) for t in cells[:, 0]], np.int64)  # after midnight
        self.type = cells[:, 1].astype(np.int64)
        self.size = cells[:, 3].astype(np.int64)
        self.price = cells[:, 4].astype(np.int64)
        self.direction = cells[:, 5].astype(np.int64)
        self.book = np.loadtxt(io.BytesIO(self.book_bytes), delimiter=",", dtype=np.int64,
                               ndmin=2)
        self.utc = OPEN_UTC_NS + self.ns - OPEN_S * 10**9

    def visible(self, k: int) -> dict[int, list[tuple[float, float]]]:
        """LOBSTER's own order-book row k: per side, (price in dollars, size), touch first."""
        row = self.book[k]
        out = {BUY_EVENT: [], SELL_EVENT: []}
        for j in range(len(row) // 4):
            ap, az, bp, bz = (int(x) for x in row[4 * j: 4 * j + 4])
            if ap != DUMMY_ASK and az > 0:
                out[SELL_EVENT].append((ap / 10_000, float(az)))
            if bp != DUMMY_BID and bz > 0:
                out[BUY_EVENT].append((bp / 10_000, float(bz)))
        return out

    def last_of_time(self, k: int) -> int:
        """The last row that shares message k's time (its book row is the state at that time)."""
        k = int(np.searchsorted(self.ns, self.ns[k], side="right")) - 1
        assert k == len(self.ns) - 1 or self.ns[k + 1] > self.ns[k]
        return k


def replay_tops(events: np.ndarray, checkpoints: list[int], depth: int):
    """Cumulative dict replay of the events (hftbacktest semantics: a depth row sets its
    level's new total, 0 deletes it; a clear removes the side's levels from the touch up to
    and including its price). After all events with ``local_ts <= t`` for each checkpoint t
    (ascending), the top ``depth`` levels per side."""
    ev = events["ev"].tolist()
    ts = events["local_ts"].tolist()
    px = events["px"].tolist()
    qty = events["qty"].tolist()
    book = {BUY_EVENT: {}, SELL_EVENT: {}}
    out, j, n = [], 0, len(ev)
    for t in checkpoints:
        while j < n and ts[j] <= t:
            kind, side = ev[j] & EVENT_TYPE_MASK, ev[j] & (BUY_EVENT | SELL_EVENT)
            d = book[side]
            if kind in (DEPTH_EVENT, DEPTH_SNAPSHOT_EVENT):
                if qty[j] > 0:
                    d[px[j]] = qty[j]
                else:
                    d.pop(px[j], None)
            elif kind == DEPTH_CLEAR_EVENT:
                for p in [p for p in d if (p >= px[j] if side == BUY_EVENT else p <= px[j])]:
                    del d[p]
            j += 1
        out.append({s: [(p, book[s][p]) for p in sorted(book[s], reverse=s == BUY_EVENT)[:depth]]
                    for s in (BUY_EVENT, SELL_EVENT)})
    return out


def _snapshot(events: np.ndarray) -> dict[int, list[tuple[float, float]]]:
    """The DEPTH_SNAPSHOT rows of the seed (at the first depth row's time), per side."""
    k, s = kinds(events), sides(events)
    depth = k != TRADE_EVENT
    t0 = events["local_ts"][depth][0]
    at = (events["local_ts"] == t0) & (k == DEPTH_SNAPSHOT_EVENT)
    return {side: [(float(p), float(q)) for p, q in zip(events["px"][at & (s == side)],
                                                        events["qty"][at & (s == side)])]
            for side in (BUY_EVENT, SELL_EVENT)}


# -- fixtures ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def goog_day() -> Day:
    need(GOOG)
    return Day(GOOG)


@pytest.fixture(scope="module")
def goog(goog_day):
    """The whole day, no cut (the read takes several seconds: once per module)."""
    return read_lobster(GOOG, STOCK, LobsterOptions())


@pytest.fixture(scope="module")
def goog_cut(goog_day):
    return read_lobster(GOOG, STOCK, CUT)


# -- 1. GOOG, whole day -----------------------------------------------------------------------
def test_goog_day_counts_trades_and_times(goog, goog_day):
    events, report = goog
    day = goog_day
    assert day.msg_name == GOOG_MSG and day.book_name == GOOG_BOOK
    assert report.lines == len(day.type) == len(day.book) == 147_916
    assert day.book.shape[1] == 40
    names = {1: "submission", 2: "partial_cancellation", 3: "deletion",
             4: "execution_visible", 5: "execution_hidden", 6: "cross_trade", 7: "halt"}
    counts = np.bincount(day.type, minlength=8)
    for t, name in names.items():
        assert report.messages.get(name, 0) == counts[t], name
    assert "dropped_open" not in report.messages and "dropped_close" not in report.messages

    k = kinds(events)
    is_trade = (day.type == 4) | (day.type == 5)
    assert (k == TRADE_EVENT).sum() == is_trade.sum() == counts[4] + counts[5]
    # The trades, in message order, at their exact prices and sizes; direction is the resting
    # order's side, so -1 (a sell order executed) is a buyer-initiated trade.
    tr = events[k == TRADE_EVENT]
    np.testing.assert_array_equal(tr["px"], day.price[is_trade] / 10_000)
    np.testing.assert_array_equal(tr["qty"], day.size[is_trade].astype(float))
    np.testing.assert_array_equal(tr["local_ts"], day.utc[is_trade])
    buy = (tr["ev"] & np.uint64(BUY_EVENT)) != 0
    np.testing.assert_array_equal(buy, day.direction[is_trade] == -1)
    np.testing.assert_array_equal((tr["ev"] & np.uint64(SELL_EVENT)) != 0, ~buy)

    # Hidden executions of midpoint orders print between ticks; visible ones never do.
    off_grid = day.price % 100 != 0
    assert not (off_grid & (day.type == 4)).any()
    sub = off_grid & (day.type == 5)
    assert report.messages["hidden_subtick_trades"] == sub.sum() == 50
    assert 577.775 in set(tr["px"].tolist())
    tr_e4 = np.round(tr["px"] * 10_000).astype(np.int64)
    assert set(tr["px"][tr_e4 % 100 != 0].tolist()) == set((day.price[sub] / 10_000).tolist())
    # Book prices are on the tick grid.
    book_px = events["px"][k != TRADE_EVENT]
    np.testing.assert_array_equal(np.round(book_px * 100) / 100, book_px)

    # Times: 2012-06-21 09:30 ET = 13:30 UTC, plus the seconds after 09:30.
    assert day.time_text[0] == "34200.015105074" and day.time_text[-1] == "57599.871751084"
    assert report.first_local_ts == day.utc[0] == \
        np.datetime64("2012-06-21T13:30:00.015105074", "ns").astype(np.int64)
    assert report.last_local_ts == day.utc[-1] == \
        np.datetime64("2012-06-21T19:59:59.871751084", "ns").astype(np.int64)
    assert events["local_ts"][0] == day.utc[0] and events["local_ts"][-1] == day.utc[-1]
    assert (np.diff(events["local_ts"]) >= 0).all()
    assert (events["exch_ts"] == events["local_ts"]).all()
    assert set(np.unique(events["local_ts"]).tolist()) <= set(day.utc.tolist())
    assert report.has_snapshot and not report.warnings


# -- 2. the replayed book is LOBSTER's own order-book row -------------------------------------
def test_goog_replay_equals_lobster_book_rows(goog, goog_day):
    events, _ = goog
    day = goog_day
    n = len(day.ns)
    named = [day.last_of_time(k) for k in (0, 1000, 50_000, n - 1)]
    assert named[-1] == n - 1
    # ... and 400 more rows spread over the day, each the last one of its time.
    spread = sorted({day.last_of_time(int(k)) for k in np.linspace(0, n - 1, 400)})
    rows = sorted(set(named) | set(spread))
    tops = replay_tops(events, [int(day.utc[k]) for k in rows], 10)
    for k, top in zip(rows, tops):
        vis = day.visible(k)
        assert top[BUY_EVENT] == vis[BUY_EVENT], (k, "bid")
        assert top[SELL_EVENT] == vis[SELL_EVENT], (k, "ask")
    assert len(day.visible(0)[BUY_EVENT]) == len(day.visible(0)[SELL_EVENT]) == 10
    # The seed is LOBSTER's first row, one clear + ten snapshot rows per side.
    assert _snapshot(events) == day.visible(0)


# -- 3. the session cut -----------------------------------------------------------------------
def test_goog_cut_drops_open_and_close_and_seeds_from_lobster_row(goog_cut, goog_day):
    events, report = goog_cut
    day = goog_day
    cut_open_utc = OPEN_UTC_NS + (CUT_OPEN_S - OPEN_S) * 10**9
    cut_close_utc = OPEN_UTC_NS + (CUT_CLOSE_S - OPEN_S) * 10**9
    assert cut_open_utc == np.datetime64("2012-06-21T13:35:00", "ns").astype(np.int64)
    assert cut_close_utc == np.datetime64("2012-06-21T19:55:00", "ns").astype(np.int64)
    before = day.ns < CUT_OPEN_S * 10**9
    after = day.ns >= CUT_CLOSE_S * 10**9
    assert report.messages["dropped_open"] == before.sum() == 1737
    assert report.messages["dropped_close"] == after.sum() == 4034
    assert report.lines == len(day.ns)  # every message was read, some were dropped

    assert report.first_local_ts == events["local_ts"][0] == cut_open_utc  # 09:35:00 exactly
    assert events["local_ts"].max() < cut_close_utc
    kept = ~before & ~after
    first, last = int(np.argmax(kept)), len(kept) - int(np.argmax(kept[::-1])) - 1
    assert kept[first:last + 1].all()
    assert report.last_local_ts == events["local_ts"][-1] == day.utc[last]
    # After the seed, every event is at the time of a kept message.
    k = kinds(events)
    seed = events["local_ts"] == cut_open_utc
    assert set(k[seed].tolist()) <= {DEPTH_CLEAR_EVENT, DEPTH_SNAPSHOT_EVENT}
    assert set(events["local_ts"][~seed].tolist()) <= set(day.utc[kept].tolist())

    # The seed is LOBSTER's row of the last message before 09:35.
    assert _snapshot(events) == day.visible(first - 1)
    assert len(_snapshot(events)[BUY_EVENT]) == 10
    # Trades: the kept executions only.
    is_trade = ((day.type == 4) | (day.type == 5)) & kept
    tr = events[k == TRADE_EVENT]
    assert len(tr) == is_trade.sum()
    np.testing.assert_array_equal(tr["px"], day.price[is_trade] / 10_000)
    assert report.messages["hidden_subtick_trades"] == \
        ((day.type == 5) & (day.price % 100 != 0) & kept).sum()
    # The replay from the seed still follows LOBSTER's rows.
    rows = sorted({day.last_of_time(i) for i in (first, first + 500, 70_000, last)})
    tops = replay_tops(events, [cut_open_utc] + [int(day.utc[i]) for i in rows], 10)
    assert tops[0] == day.visible(first - 1)
    for i, top in zip(rows, tops[1:]):
        assert top == day.visible(i), i


# -- 4. AAPL, one level -----------------------------------------------------------------------
def test_aapl_level_one_day():
    need(AAPL)
    day = Day(AAPL)
    assert day.book.shape[1] == 4
    events, report = read_lobster(AAPL, STOCK, LobsterOptions())
    assert report.lines == len(day.ns) == 118_497
    assert not report.warnings  # the file name's 1 level is the book's
    snap = _snapshot(events)
    assert len(snap[BUY_EVENT]) == len(snap[SELL_EVENT]) == 1
    assert snap == day.visible(0)
    k = kinds(events)
    assert (k == TRADE_EVENT).sum() == ((day.type == 4) | (day.type == 5)).sum() \
        == report.messages["execution_visible"] + report.messages["execution_hidden"]
    assert report.first_local_ts == day.utc[0] and report.last_local_ts == day.utc[-1]
    n = len(day.ns)
    rows = sorted({day.last_of_time(int(i)) for i in np.linspace(0, n - 1, 200)})
    for i, top in zip(rows, replay_tops(events, [int(day.utc[i]) for i in rows], 1)):
        assert top == day.visible(i), i


# -- 5. bad archives --------------------------------------------------------------------------
def _zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return path


def _drop_last_lines(data: bytes, n: int) -> bytes:
    lines = data.rstrip(b"\n").split(b"\n")
    return b"\n".join(lines[:-n]) + b"\n"


def _with_line(data: bytes, lineno: int, new: bytes) -> bytes:
    lines = data.split(b"\n")
    lines[lineno - 1] = new
    return b"\n".join(lines)


def _corrupt_member(path: Path) -> None:
    """Flip bytes inside the message member's compressed data (the directory stays intact)."""
    with zipfile.ZipFile(GOOG) as z:
        info = z.getinfo(GOOG_MSG)
    raw = bytearray(GOOG.read_bytes())
    # The local header: 30 bytes + name + extra, then the compressed data.
    name_len = int.from_bytes(raw[info.header_offset + 26: info.header_offset + 28], "little")
    extra_len = int.from_bytes(raw[info.header_offset + 28: info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len
    mid = start + info.compress_size // 2
    raw[mid: mid + 64] = bytes(b ^ 0x5A for b in raw[mid: mid + 64])
    path.write_bytes(bytes(raw))


def _case(case: str, tmp_path: Path, day: Day) -> tuple[Path, dict, str]:
    """(broken file, reader options, regex the error must match) for one bad-input case."""
    z = tmp_path / GOOG.name
    full_msg = re.escape(f"{z}[{GOOG_MSG}]")
    if case == "truncated":
        data = GOOG.read_bytes()
        z.write_bytes(data[: len(data) // 2])
        return z, {}, re.escape(str(z)) + r": not a readable zip archive, truncated or corrupt"
    if case == "corrupt-member":
        _corrupt_member(z)
        return z, {}, re.escape(str(z)) + rf": member {re.escape(GOOG_MSG)} is truncated or corrupt"
    if case == "no-orderbook":
        _zip(z, {GOOG_MSG: day.msg_bytes, README: day.readme})
        return z, {}, (re.escape(str(z)) + r": LOBSTER archive has 0 orderbook members.*"
                       + re.escape(f"got '{GOOG_MSG}"))
    if case == "row-mismatch":
        _zip(z, {GOOG_BOOK: day.book_bytes, GOOG_MSG: _drop_last_lines(day.msg_bytes, 10),
                 README: day.readme})
        return z, {}, (full_msg + r": message file has 147906 rows but order book file "
                       + re.escape(f"{z}[{GOOG_BOOK}]") + " has 147916")
    if case == "bad-line":
        cells = day.msg_bytes.split(b"\n")[1233].split(b",")
        msg = _with_line(day.msg_bytes, 1234, b",".join([cells[0], b"x", *cells[2:]]))
        _zip(z, {GOOG_BOOK: day.book_bytes, GOOG_MSG: msg, README: day.readme})
        return z, {}, full_msg + r":1234, field 'type': not an integer"
    if case == "cut-leaves-nothing":
        # The real archive (hashed and read like any other), cut after 400 of its 390 minutes.
        return GOOG, {"skip_open_minutes": 400}, (re.escape(f"{GOOG}[{GOOG_MSG}]")
                                                 + r".*the session cut leaves no message")
    raise AssertionError(case)


BAD_CASES = ["truncated", "corrupt-member", "no-orderbook", "row-mismatch", "bad-line",
             "cut-leaves-nothing"]


def _spec(tmp_path: Path, file: Path, reader: dict) -> Path:
    spec = tmp_path / "spec" / "broken.yaml"
    spec.parent.mkdir(exist_ok=True)
    inline = "{" + ", ".join(f"{k}: {v}" for k, v in reader.items()) + "}"
    spec.write_text(SPEC_YAML.format(file=file, reader=inline))
    return spec


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_archive_is_input_error_and_leaves_no_artefact(case, tmp_path, goog_day):
    path, reader, pattern = _case(case, tmp_path, goog_day)
    if case != "cut-leaves-nothing":  # that one reads the whole day; once, through prepare
        with pytest.raises(InputError, match=pattern):
            read_lobster(path, STOCK, LobsterOptions(**reader))
    cache = tmp_path / "cache"
    with pytest.raises(InputError, match=pattern) as info:
        prepare_dataset(_spec(tmp_path, path, reader), cache_dir=cache, progress=False)
    assert "\n" not in str(info.value)
    leftovers = list(cache.iterdir()) if cache.exists() else []
    assert leftovers == [], leftovers  # no dataset folder, no half-built temporary one


def test_cli_prepare_truncated_zip_is_one_line_exit_2(tmp_path, goog_day):
    path, reader, pattern = _case("truncated", tmp_path, goog_day)
    spec = _spec(tmp_path, path, reader)
    cache = tmp_path / "cache"
    env = {**os.environ, "CMM_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1", "COLUMNS": "160"}
    r = subprocess.run([sys.executable, "-m", "cmm", "data", "prepare", str(spec)],
                       capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr and r.stdout.strip() == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert re.search(pattern, lines[0]) and str(path) in lines[0]
    prepared = cache / "prepared"
    assert not prepared.exists() or list(prepared.iterdir()) == []


# -- 6. the registered dataset ----------------------------------------------------------------
def test_prepare_registered_goog_day(tmp_path):
    need(GOOG)
    ds = prepare_dataset("lobster-goog-2012-06-21", cache_dir=tmp_path, progress=False)
    steps = ds.steps
    ts = steps["ts_ns"].to_numpy()
    cut_open_utc = np.datetime64("2012-06-21T13:35:00", "ns").astype(np.int64)
    cut_close_utc = np.datetime64("2012-06-21T19:55:00", "ns").astype(np.int64)
    dt_ns = ds.config.grid.dt_ms * 1_000_000
    assert cut_open_utc < ts[0] <= cut_open_utc + dt_ns  # the first step after the 09:35 seed
    assert ts[-1] < cut_close_utc
    assert (np.diff(ts) == dt_ns).all() and len(ds.sessions) == 1
    for side in ("bid", "ask"):
        for lv in range(ds.config.grid.levels):
            px = steps[f"{side}_px_{lv}"].to_numpy()
            px = px[np.isfinite(px)]
            assert len(px) and np.abs(px * 100 - np.round(px * 100)).max() < 1e-6, (side, lv)
    assert (steps["bid_px_0"].to_numpy() < steps["ask_px_0"].to_numpy()).all()
    messages = ds.meta["reports"][0]["messages"]
    assert messages["hidden_subtick_trades"] > 0
    assert messages["dropped_open"] > 0 and messages["dropped_close"] > 0
