"""Implausible values and misleading data errors (issue 13), each on a real capture with one fault
injected: `cmm data prepare` stops with one located line and exit 2, quickly, leaving nothing in
the cache; trades repeated in a capture are counted once; the replay refuses prices its order book
cannot hold instead of spinning."""

from __future__ import annotations

import gzip
import json
import lzma
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from cmm.config import Instrument
from cmm.data.events import DEPTH_EVENT, EVENT_TYPE_MASK, TRADE_EVENT, finalize_events
from cmm.errors import InputError

BINANCE = "binance/usdm/btcusdt_20240808.gz"
HEAD = 2000  # lines: a truncated capture (about 9 s) is read like a whole one
SPEC = """name: robust
format: binance
files: [{file}]
instrument: {{tick_size: 0.1, lot_size: 0.001, maker_fee: {maker_fee}, taker_fee: 0.0005}}
grid: {{dt_ms: 100, levels: 10}}
"""


@pytest.fixture(scope="module")
def head(data_dir) -> list[bytes]:
    with gzip.open(data_dir / BINANCE, "rb") as f:
        return f.read().split(b"\n")[:HEAD]


def write_gz(path: Path, lines: list[bytes]) -> Path:
    with gzip.open(path, "wb") as f:
        f.write(b"\n".join(lines) + b"\n")
    return path


def spec_for(tmp_path: Path, file: Path, maker_fee: float = 0.0002) -> Path:
    spec = tmp_path / "spec.yaml"
    spec.write_text(SPEC.format(file=file, maker_fee=maker_fee))
    return spec


def prepare_fails(tmp_path: Path, spec: Path) -> str:
    """`cmm data prepare spec` -> its one-line error (exit 2, no traceback, < 10 s, empty cache)."""
    cache = tmp_path / "cache"
    env = {**os.environ, "CMM_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    t = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "cmm", "data", "prepare", str(spec)],
                       capture_output=True, text=True, env=env, timeout=120)
    elapsed = time.perf_counter() - t
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert elapsed < 10, f"{elapsed:.1f} s"
    left = [p for p in cache.rglob("*") if p.is_file() and not p.name.endswith(".lock")]
    assert left == [], left  # no partial artefact
    print(lines[0])
    return lines[0]


def first(lines: list[bytes], what: bytes, after: int = 200) -> int:
    return next(i for i, line in enumerate(lines) if i > after and what in line[:80])


@pytest.mark.parametrize("value", ["1e19", "1e308"])
def test_huge_depth_price_is_located(tmp_path, head, value):
    lines = list(head)
    k = first(lines, b"@depth")
    lines[k], n = re.subn(rb'"b":\[\["[0-9.]+"', b'"b":[["' + value.encode() + b'"', lines[k],
                          count=1)
    assert n == 1
    raw = write_gz(tmp_path / "px.gz", lines)
    msg = prepare_fails(tmp_path, spec_for(tmp_path, raw))
    assert msg.startswith(f"error: {raw}:{k + 1}, field 'b[0][0]': invalid value")
    assert "expected a price < 214748364.8 (2**31 ticks of 0.1" in msg
    assert f"got {float(value)!r}" in msg


def test_huge_trade_quantity_is_located(tmp_path, head):
    lines = list(head)
    k = first(lines, b"@trade")
    lines[k], n = re.subn(rb'"q":"[0-9.]+"', b'"q":"1e308"', lines[k], count=1)
    assert n == 1
    raw = write_gz(tmp_path / "q.gz", lines)
    msg = prepare_fails(tmp_path, spec_for(tmp_path, raw))
    assert msg.startswith(f"error: {raw}:{k + 1}, field 'q': invalid value")
    assert "expected a size < " in msg and "2**53 lots of 0.001" in msg and "got 1e+308" in msg


def test_fee_of_500_percent_names_the_yaml_line(tmp_path, data_dir):
    spec = spec_for(tmp_path, data_dir / BINANCE, maker_fee=5)
    msg = prepare_fails(tmp_path, spec)
    assert msg.startswith(f"error: {spec}:4, field 'instrument.maker_fee': a fee is a fraction")
    assert "-0.01 <= fee <= 0.01" in msg and msg.endswith("got 5")
    for ok in (0.01, -0.0001):
        assert Instrument(tick_size=0.1, lot_size=1, taker_fee=ok).taker_fee == ok


def test_trades_only_capture_is_named(tmp_path, head):
    raw = write_gz(tmp_path / "trades.gz", [line for line in head if b"@trade" in line[:80]])
    msg = prepare_fails(tmp_path, spec_for(tmp_path, raw))
    assert msg.startswith(f"error: {raw}: no depth events: the capture holds only trades")


def test_too_many_levels_says_what_the_book_shows(tmp_path, data_dir):
    spec = tmp_path / "aapl.yaml"
    spec.write_text(
        "name: aapl\nformat: lobster\n"
        f"files: [{data_dir / 'lobster/AAPL_2012-06-21_34200000_57600000_message_10.csv'}]\n"
        "instrument: {tick_size: 0.01, lot_size: 1.0}\ngrid: {dt_ms: 100, levels: 10000}\n")
    msg = prepare_fails(tmp_path, spec)
    m = re.search(r"no step has 10000 visible levels on both sides; the book shows at most "
                  r"(\d+) .*: lower grid.levels; expected <= \d+, got 10000$", msg)
    assert m and "field 'grid.levels'" in msg, msg
    assert 10 <= int(m.group(1)) < 10000
    assert "shorter than window" not in msg


def _trades(events: np.ndarray) -> np.ndarray:
    return events[(events["ev"] & EVENT_TYPE_MASK) == TRADE_EVENT]


def test_binance_trades_repeated_are_counted_once(tmp_path, head):
    from cmm.data.readers.binance import read_binance

    inst = Instrument(tick_size=0.1, lot_size=0.001)
    lines = list(head)
    # a run of consecutive trade lines, received again right after (local times kept monotone)
    k = next(i for i in range(200, len(lines) - 3)
             if all(b"@trade" in line[:80] for line in lines[i:i + 3]))
    block = lines[k:k + 3]
    ts = lines[k + 2].split(b" ", 1)[0]
    again = [ts + b" " + line.split(b" ", 1)[1] for line in block]
    # the last copy in another layout, so that the per-line code reads it
    again[-1] = ts + b" " + json.dumps(json.loads(block[-1].split(b" ", 1)[1])).encode()
    clean, _ = read_binance(write_gz(tmp_path / "clean.gz", lines), inst)
    events, report = read_binance(write_gz(tmp_path / "dup.gz", lines[:k + 3] + again
                                           + lines[k + 3:]), inst)
    assert report.repairs.get("duplicate_trade") == 3
    assert report.events == len(events) == len(clean)
    np.testing.assert_array_equal(_trades(events), _trades(clean))
    # prepared: the same volume as the clean capture
    from cmm.data.prepare import prepare_dataset

    a = prepare_dataset(spec_for(tmp_path, tmp_path / "clean.gz"), cache_dir=tmp_path / "c",
                        progress=False)
    spec = spec_for(tmp_path, tmp_path / "dup.gz")
    b = prepare_dataset(spec, cache_dir=tmp_path / "c", progress=False)
    assert b.meta["reports"][0]["repairs"]["duplicate_trade"] == 3
    for col in ("buy_vol", "sell_vol", "trade_count"):
        np.testing.assert_array_equal(a.steps[col].to_numpy(), b.steps[col].to_numpy())


def test_bitstamp_trades_repeated_are_counted_once(tmp_path, data_dir):
    from cmm.data.readers.bitstamp import read_bitstamp_log

    inst = Instrument(tick_size=0.01, lot_size=1e-8)
    with lzma.open(data_dir / "bitstamp/btcusd_20150501.log.xz") as f:
        lines = f.read().split(b"\n")[:3000]
    k = next(i for i, line in enumerate(lines) if i > 500 and b" trade " in line)
    (tmp_path / "clean.log").write_bytes(b"\n".join(lines) + b"\n")
    (tmp_path / "dup.log").write_bytes(b"\n".join(lines[:k + 1] + [lines[k]] + lines[k + 1:])
                                       + b"\n")
    clean, _ = read_bitstamp_log(tmp_path / "clean.log", inst)
    events, report = read_bitstamp_log(tmp_path / "dup.log", inst)
    assert report.repairs.get("duplicate_trade") == 1
    np.testing.assert_array_equal(_trades(events), _trades(clean))


def test_replay_refuses_a_price_past_its_ticks(tmp_path, head):
    """The replay's order book (hftbacktest) walks ticks one by one: a price of 1e19 on a 0.1
    tick used to spin `cmm backtest` forever; now it is refused before the replay starts."""
    from cmm.backtest import engine as E
    from cmm.config import BacktestConfig
    from cmm.data.readers.binance import read_binance

    inst = Instrument(tick_size=0.1, lot_size=0.001)
    raw, _ = read_binance(write_gz(tmp_path / "clean.gz", list(head)), inst)
    events = finalize_events(raw)
    E.check_replayable(events, inst)  # the real capture is fine
    kind = events["ev"] & EVENT_TYPE_MASK
    for field, value, want in (("px", 1e19, DEPTH_EVENT), ("px", np.inf, DEPTH_EVENT),
                               ("qty", 1e308, TRADE_EVENT)):
        i = int(np.flatnonzero(kind == want)[100])
        bad = events.copy()
        bad[field][i] = value
        t = time.perf_counter()
        with pytest.raises(InputError, match=rf"record {i}, field '{field}': the replay's "
                                             "order book cannot hold this value"):
            E.build_backtest(bad, inst, BacktestConfig(), 0)
        assert time.perf_counter() - t < 1


def test_a_folder_given_as_a_data_file_is_named_as_a_folder(tmp_path):
    folder = tmp_path / "capture.gz"
    folder.mkdir()
    line = prepare_fails(tmp_path, spec_for(tmp_path, folder))
    assert str(folder) in line and "a folder where a data file is expected" in line


def test_editing_the_lobster_order_book_sibling_prepares_afresh(tmp_path, data_dir):
    """The order-book file beside a LOBSTER message file is read too, so it is in the key: an
    edited book gives a new key and new artefacts, never the old ones."""
    import shutil

    from cmm.data.prepare import dataset_key, prepare_dataset
    from cmm.data.spec import load_dataset_spec

    stem = "AAPL_2012-06-21_34200000_57600000_{}_10.csv"
    for kind in ("message", "orderbook"):
        shutil.copy(data_dir / "lobster" / stem.format(kind), tmp_path / stem.format(kind))
    spec_path = tmp_path / "aapl.yaml"
    spec_path.write_text(f"name: aapl\nformat: lobster\nfiles: [{stem.format('message')}]\n"
                         "instrument: {tick_size: 0.01, lot_size: 1.0}\n"
                         "grid: {dt_ms: 100, levels: 10}\n")
    cache = tmp_path / "cache"
    spec = load_dataset_spec(spec_path)
    before = prepare_dataset(spec, cache_dir=cache, progress=False)
    book = tmp_path / stem.format("orderbook")
    rows = book.read_text().splitlines()
    # every bid size of the first level x 10 (column 4: bid size 1)
    edited = []
    for r in rows:
        cells = r.split(",")
        cells[3] = str(int(cells[3]) * 10)
        edited.append(",".join(cells))
    book.write_text("\n".join(edited) + "\n")
    key_after, _ = dataset_key(spec, before.config)
    assert key_after != before.cache_key
    after = prepare_dataset(spec, cache_dir=cache, progress=False)
    assert after.cache_key == key_after
    assert after.steps["bid_sz_0"].mean() > 5 * before.steps["bid_sz_0"].mean()
