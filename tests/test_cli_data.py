"""The data CLI as a user runs it: readable output, one-line errors with exit status 2."""

import os
import subprocess
import sys


def cmm(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "cmm", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "COLUMNS": "160"}, timeout=300)


def test_help_explains_every_command():
    r = cmm("data", "--help")
    assert r.returncode == 0
    for command in ("list", "fetch", "prepare", "inspect"):
        assert command in r.stdout
    r = cmm("data", "inspect", "--help")
    assert "--out" in r.stdout and "--cache-dir" in r.stdout


def test_list_shows_registry(data_dir):
    r = cmm("data", "list")
    assert r.returncode == 0, r.stderr
    assert "binance-usdm-btcusdt" in r.stdout and "5/5" in r.stdout


def test_bad_spec_is_one_line_exit_2(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: x\nformat: binance\nfiles: [a.gz]\ninstrument: {tick_size: 0.1}\n")
    r = cmm("data", "prepare", str(spec))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"{spec}:4" in lines[0] and "instrument.lot_size" in lines[0]


def test_unknown_dataset_exit_2():
    r = cmm("data", "prepare", "nope")
    assert r.returncode == 2 and "valid: " in r.stderr and "Traceback" not in r.stderr


def test_inspect_writes_summary_and_png(tmp_path, data_dir):
    r = cmm("data", "inspect", "lobster-aapl-sample", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    png = tmp_path / "lobster-aapl-sample.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    import json

    summary = json.loads((tmp_path / "lobster-aapl-sample.json").read_text())
    assert summary["split_counts"]["train"] > 0 and len(summary["sessions"]) == 1
    assert "windows train/validation/test" in r.stdout


def test_inspect_full_day_writes_intraday_pattern(tmp_path, data_dir):
    """A full NASDAQ day: the intraday figure, and the line that shows the open and close effects."""
    import json
    import re

    r = cmm("data", "inspect", "lobster-aapl-2012-06-21", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    png = tmp_path / "lobster-aapl-2012-06-21-intraday.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    line = next(x for x in r.stdout.splitlines() if x.startswith("intraday ("))
    assert re.fullmatch(r"intraday \(5-min bins, America/New_York\): spread widest \d\d:\d\d-\d\d:\d\d "
                        r"\(.+ ticks vs median .+\), volume highest \d\d:\d\d-\d\d:\d\d \(.+ vs median .+\)",
                        line.strip()), line
    # Exchange time, not UTC: the widest spreads right after the (cut) open, most volume near the close.
    assert "spread widest 09:35-09:40" in line and "volume highest 15:" in line
    intra = json.loads((tmp_path / "lobster-aapl-2012-06-21.json").read_text())["intraday"]
    assert intra["timezone"] == "America/New_York" and intra["bin_minutes"] == 5
    assert intra["bins"][0]["start"] == "09:35" and intra["bins"][-1]["end"] == "15:55"
    assert len(intra["bins"]) == 76 and intra["line"] == line.strip()


def test_inspect_short_capture_skips_intraday(tmp_path, data_dir):
    r = cmm("data", "inspect", "lobster-aapl-sample", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "intraday (America/New_York): skipped" in r.stdout
    assert not (tmp_path / "lobster-aapl-sample-intraday.png").exists()


def _steps(session, start_utc, spread, buy, sell, mid, valid=None):
    from datetime import datetime, timezone

    import polars as pl

    t0 = int(datetime.fromisoformat(start_utc).replace(tzinfo=timezone.utc).timestamp()) * 10**9
    n = len(spread)
    return pl.DataFrame({
        "session": [session] * n, "step": list(range(n)),
        "ts_ns": [t0 + i * 60 * 10**9 for i in range(n)],
        "valid": valid or [True] * n, "mid": mid, "spread_ticks": spread,
        "buy_vol": buy, "sell_vol": sell,
    }, schema_overrides={"session": pl.Int32, "step": pl.Int32})


def test_intraday_profile_known_answer_across_time_zones():
    """A summer (EDT, UTC-4) and a winter (EST, UTC-5) session at 09:30-09:40 New York time land
    in the same two 5-minute bins; invalid steps leave the spread out but keep their volume; no
    return crosses a session boundary."""
    import math

    import numpy as np
    import polars as pl
    import pytest

    from cmm.data.inspect import intraday_profile, local_timezone

    r0 = [0, 1, -1, 1, -1, 2, -2, 2, -2, 2]  # bps, step t's return
    mid0 = (100 * np.exp(np.cumsum(r0) * 1e-4)).tolist()  # ends away from 100
    summer = _steps(0, "2012-06-21T13:30:00", [2.0] * 5 + [4, 4, 100, 4, 4], [1.0] * 10, [0.5] * 10,
                    mid0, valid=[True] * 7 + [False] + [True] * 2)
    winter = _steps(1, "2012-01-05T14:30:00", [2.0] * 5 + [6.0] * 5, [3.0] * 10, [0.0] * 10, [100.0] * 10)
    prof = intraday_profile(pl.concat([summer, winter]), local_timezone("lobster"), 5, 60_000)
    assert prof["start"].to_list() == ["09:30", "09:35"] and prof["end"].to_list() == ["09:35", "09:40"]
    assert prof["minute"].to_list() == [570, 575]
    assert prof["steps"].to_list() == [10, 10] and prof["sessions"].to_list() == [2, 2]
    assert prof["coverage"].to_list() == [1.0, 1.0]
    assert prof["spread_ticks"].to_list() == pytest.approx([2.0, (4 * 4 + 5 * 6) / 9])
    assert prof["volume"].to_list() == pytest.approx([(7.5 + 15) / 2] * 2)  # per session
    # Bin 1: summer steps 1-4, winter steps 1-4 (winter step 0 has no predecessor in its session).
    # Bin 2: summer steps 5, 6, 9 (step 7 is invalid, so are the returns into and out of it).
    want = [np.std([1, -1, 1, -1, 0, 0, 0, 0], ddof=1), np.std([2, -2, 2, 0, 0, 0, 0, 0], ddof=1)]
    assert prof["vol_bps"].to_list() == pytest.approx(want, rel=1e-6)
    assert not any(math.isnan(v) for v in prof["vol_bps"])
    # Read in UTC the same steps fall in four bins, two per session.
    utc = intraday_profile(pl.concat([summer, winter]), local_timezone("binance"), 5, 60_000)
    assert utc["start"].to_list() == ["13:30", "13:35", "14:30", "14:35"]


def test_intraday_bin_rule():
    from types import SimpleNamespace

    from cmm.data.inspect import intraday_bin_minutes

    def ds(*minutes):
        return SimpleNamespace(sessions=[SimpleNamespace(start_ns=0, end_ns=int(m * 6e10)) for m in minutes])

    assert intraday_bin_minutes(ds(380.0)) == 5 and intraday_bin_minutes(ds(8, 60)) == 5
    assert intraday_bin_minutes(ds(8.6, 5.7)) == 1 and intraday_bin_minutes(ds(59.9)) == 1
    assert intraday_bin_minutes(ds(0.8)) is None and intraday_bin_minutes(ds()) is None
