"""Preparation: cached by content, atomic, sessions joined, never half-written."""


import numpy as np
import pytest

from cmm.data import prepare as P
from cmm.errors import InputError


def test_sessions_join_continuing_files(prepared):
    ds = prepared("binance-usdm-btcusdt")
    names = [[f.rsplit("/", 1)[-1] for f in s.files] for s in ds.sessions]
    assert names == [["btcusdt_20230404.gz", "btcusdt_20230405.gz"],
                     ["btcusdt_20240718.gz", "btcusdt_20240719.gz"], ["btcusdt_20240808.gz"]]
    # A joined session is one continuous grid: about 8.5 minutes, no hole at midnight.
    s0 = ds.sessions[0]
    assert (s0.end_ns - s0.start_ns) / 6e10 > 8
    ts = ds.steps.filter(ds.steps["session"] == 0)["ts_ns"].to_numpy()
    assert (np.diff(ts) == ds.config.grid.dt_ms * 1_000_000).all()


def test_events_are_hftbacktest_ready(prepared):
    from hftbacktest.data.validation import validate_event_order

    ds = prepared("binance-usdm-btcusdt")
    ev = ds.events(0)
    validate_event_order(ev)  # raises on a wrong order
    assert ev.dtype.names[:3] == ("ev", "exch_ts", "local_ts")


def test_cache_hit_and_key_changes_with_settings(tmp_path, data_dir):
    from cmm.config import DataConfig, FeatureConfig

    a = P.prepare_dataset("lobster-aapl-sample", cache_dir=tmp_path, progress=False)
    stamp = (a.folder / "meta.json").stat().st_mtime_ns
    b = P.prepare_dataset("lobster-aapl-sample", cache_dir=tmp_path, progress=False)
    assert b.folder == a.folder and (b.folder / "meta.json").stat().st_mtime_ns == stamp
    cfg = DataConfig(features=FeatureConfig(window=32))
    c = P.prepare_dataset("lobster-aapl-sample", config=cfg, cache_dir=tmp_path, progress=False)
    assert c.folder != a.folder and c.windows("train").shape[1] == 32


def test_failure_leaves_no_partial_artefact(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("killed mid-build")

    monkeypatch.setattr(P, "build_session", boom)
    with pytest.raises(RuntimeError, match="killed mid-build"):
        P.prepare_dataset("lobster-aapl-sample", cache_dir=tmp_path, progress=False)
    assert list(tmp_path.iterdir()) == []  # neither the folder nor its temporary twin


def test_missing_file_is_named(tmp_path):
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\nformat: binance\nfiles: [nope.gz]\n"
                    "instrument: {tick_size: 0.1, lot_size: 0.001}\n")
    with pytest.raises(InputError, match=r"nope\.gz: data file not found"):
        P.prepare_dataset(spec, cache_dir=tmp_path, progress=False)


def test_too_short_dataset_is_explained(tmp_path, data_dir):
    from cmm.config import DataConfig, FeatureConfig

    cfg = DataConfig(features=FeatureConfig(window=4000))
    with pytest.raises(InputError, match="yields no windows"):
        P.prepare_dataset("lobster-aapl-sample", config=cfg, cache_dir=tmp_path, progress=False)
    assert not any(p.name.startswith("lobster") for p in tmp_path.iterdir())



def test_thin_book_steps_are_carried_counted_and_never_used():
    """A step whose book lacks a full set of levels on one side is invalid: it carries the last
    valid book, is counted, and no window or target touches it."""
    from cmm.config import DataConfig, FeatureConfig, GridConfig, Instrument
    from cmm.data.events import (BUY_EVENT, DEPTH_EVENT, DEPTH_SNAPSHOT_EVENT, EXCH_EVENT,
                                 LOCAL_EVENT, SELL_EVENT, TRADE_EVENT, event_dtype)

    step = 100_000_000
    rows = [(DEPTH_SNAPSHOT_EVENT | BUY_EVENT, 0, 100.0 - i, 1.0) for i in range(2)]
    rows += [(DEPTH_SNAPSHOT_EVENT | SELL_EVENT, 0, 101.0 + i, 1.0) for i in range(2)]
    for k in range(1, 60):
        rows.append((DEPTH_EVENT | BUY_EVENT, k * step - 10, 99.0, 1.0 + k))
        rows.append((TRADE_EVENT | (BUY_EVENT if k % 2 else SELL_EVENT), k * step - 5, 100.5, 0.1))
    rows.append((DEPTH_EVENT | SELL_EVENT, 30 * step - 3, 102.0, 0.0))  # ask side thin at step 29
    rows.append((DEPTH_EVENT | SELL_EVENT, 31 * step - 3, 102.0, 2.0))  # full again at step 30
    rows.sort(key=lambda r: r[1])
    ev = np.zeros(len(rows), event_dtype)
    for i, (kind, ts, px, qty) in enumerate(rows):
        ev[i] = (kind | EXCH_EVENT | LOCAL_EVENT, ts, ts, px, qty, 0, 0, 0.0)
    cfg = DataConfig(grid=GridConfig(dt_ms=100, levels=2),
                     features=FeatureConfig(window=4, horizon=2, vol_window=10, vol_min_periods=2,
                                            rv_window=3))
    arrays = P.build_session(ev, Instrument(tick_size=0.5, lot_size=1.0), cfg)
    bad = int(np.flatnonzero(~arrays.valid)[0])
    assert (~arrays.valid).sum() == 1 and arrays.repairs["invalid_steps_carried"] == 1
    np.testing.assert_array_equal(arrays.book["ask_px"][bad], arrays.book["ask_px"][bad - 1])
    touched = [(t - 3 <= bad <= t + 2) for t in arrays.sample_steps]
    assert not any(touched) and len(arrays.sample_steps) > 20
