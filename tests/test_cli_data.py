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
