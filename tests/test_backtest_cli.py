"""`cmm backtest` as a user runs it: one-line errors (exit 2), and on the real capture (slow) a
readable table plus the backtest's files (metrics JSON, per-episode CSV, records and fills) and
one PNG per episode."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


def cmm(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "cmm", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "COLUMNS": "160"}, timeout=600)


def test_help_lists_the_options():
    r = cmm("backtest", "--help")
    assert r.returncode == 0
    for opt in ("--dataset", "--policy", "--split", "--out", "--config", "--latency-ms"):
        assert opt in r.stdout


def test_unknown_policy_is_one_line_listing_valid_names():
    r = cmm("backtest", "--dataset", "binance-usdm-btcusdt", "--policy", "nope")
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in r.stderr
    assert "unknown policy 'nope'; valid:" in lines[0]
    assert all(name in lines[0] for name in ("as", "fixed", "oracle"))


def test_bad_config_points_at_the_line(tmp_path):
    cfg = tmp_path / "bt.yaml"
    cfg.write_text("ladder:\n  levels: 5\nbacktest:\n  episode_seconds: 30\n")
    r = cmm("backtest", "--dataset", "binance-usdm-btcusdt", "--config", str(cfg))
    assert r.returncode == 2
    assert f"{cfg}:4" in r.stderr and "backtest.episode_seconds" in r.stderr


@pytest.mark.slow
def test_backtest_writes_table_json_and_pictures(tmp_path, data_dir):
    out = tmp_path / "bt"
    r = cmm("backtest", "--dataset", "binance-usdm-btcusdt", "--policy", "oracle", "--out", str(out),
            "--episode-s", "60")  # the capture's test split is 4 minutes; the default is 5
    assert r.returncode == 0, r.stderr
    for label in ("EPnL", "MAP", "PnLMAP", "RPT", "Sharpe", "fills", "fees", "oracle"):
        assert label in r.stdout
    m = json.loads((out / "metrics.json").read_text())
    assert m["schema_version"] == 1 and m["dataset_key"]
    assert m["settings"]["backtest"]["episode_s"] == 60.0
    n = m["metrics"]["episodes"]
    assert n >= 3
    assert len(list(out.glob("episode_*.png"))) == n
    assert (out / "episodes.csv").read_text().count("\n") == n + 1
    # the files of `cmm run`'s backtests (cmm.backtest.artefacts), fills as parquet
    from cmm.backtest.artefacts import FILES

    assert all((out / f).is_file() for f in FILES) and not (out / "fills.csv").exists()
    assert m["policy"]["name"] == "oracle" and m["latency_ns"] == 0 and m["gate"] is None
