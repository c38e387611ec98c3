"""Features, targets, regimes and splits on real data: no look-ahead, train-only fitting."""

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmm.config import SplitConfig
from cmm.data import features as F
from cmm.data.prepare import build_session

DATASET = "binance-usdm-btcusdt"


@pytest.fixture(scope="module")
def session(prepared):
    ds = prepared(DATASET)
    sid = ds.sessions[-1].id
    events = ds.events(sid)
    return ds, events, build_session(events, ds.instrument, ds.config)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(frac=st.floats(0.1, 0.9), seed=st.integers(0, 2**31 - 1), drop=st.booleans())
def test_no_look_ahead(session, frac, seed, drop):
    """Altering every event after t + H (prices, sizes, or dropping them) leaves the features,
    sigma and regimes up to t, and the targets at t, unchanged."""
    ds, events, base = session
    H = ds.config.features.horizon
    t = int(frac * (base.n_steps - H - 1))
    cutoff = base.ts_ns[t + H]
    rng = np.random.default_rng(seed)
    later = events["local_ts"] > cutoff
    altered = events.copy()
    if drop:
        altered = altered[~later | (rng.random(len(events)) < 0.5)]
    else:
        altered["px"][later] *= rng.uniform(0.98, 1.02, later.sum())
        altered["qty"][later] *= rng.uniform(0.0, 3.0, later.sum())
    new = build_session(altered, ds.instrument, ds.config)
    np.testing.assert_array_equal(new.ts_ns[: t + 1], base.ts_ns[: t + 1])
    np.testing.assert_array_equal(new.features[: t + 1], base.features[: t + 1])
    np.testing.assert_array_equal(new.sigma[: t + 1], base.sigma[: t + 1])
    common = base.sample_steps[base.sample_steps <= t]
    assert np.isin(common, new.sample_steps).all()
    np.testing.assert_array_equal(new.targets[np.isin(new.sample_steps, common)],
                                  base.targets[np.isin(base.sample_steps, common)])


def test_targets_known_answer():
    mid = np.array([100.0, 101.0, 102.0, 99.0, 100.0])
    spread = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    vol = np.array([0.5, 1.0, 0.0, 2.0, 3.0])
    y = F.targets(mid, spread, vol, np.array([0, 1]), horizon=2, lot_size=1.0)
    np.testing.assert_allclose(y[0], [1e4 * 2 / 100, 2.5, np.log1p(1.0)])
    np.testing.assert_allclose(y[1], [1e4 * -2 / 101, 3.5, np.log1p(2.0)])
    # volume in lots: 1.0 base of a 0.001-lot instrument is 1,000 lots
    y_lots = F.targets(mid, spread, vol, np.array([0, 1]), horizon=2, lot_size=0.001)
    np.testing.assert_allclose(y_lots[:, 2], np.log1p([1000.0, 2000.0]))
    np.testing.assert_allclose(y_lots[:, :2], y[:, :2])


def test_trailing_std_matches_naive():
    x = np.random.default_rng(0).normal(size=300)
    got = F._trailing_std(x, 50, 5)
    for i in (4, 10, 49, 50, 299):
        assert got[i] == pytest.approx(np.std(x[max(0, i - 49): i + 1]), rel=1e-9)
    assert np.isnan(got[3])


def test_splits_chronological_with_purge():
    g = np.arange(1000)
    labels = F.chronological_splits(g, SplitConfig(), purge=74)
    tr, va, te = (g[labels == k] for k in range(3))
    assert tr.max() < va.min() and va.max() < te.min()
    assert va.min() - tr.max() > 74 and te.min() - va.max() > 74
    assert len(tr) == 600


def test_dataset_splits_regimes_and_windows(prepared):
    ds = prepared(DATASET)
    s = ds.samples
    H, W = ds.config.features.horizon, ds.config.features.window
    # Splits follow time, with at least the purge gap on the joined timeline.
    by = {k: s.filter(pl.col("split") == k)["global_step"] for k in ("train", "validation", "test")}
    assert by["train"].max() + H + W <= by["validation"].min()
    assert by["validation"].max() + H + W <= by["test"].min()
    # Thresholds are the training sigma's terciles.
    lo, hi = ds.regime_thresholds
    train_sigma = s.filter(pl.col("split") == "train")["sigma"].to_numpy()
    assert lo == pytest.approx(np.quantile(train_sigma, 1 / 3))
    assert np.bincount(ds.regimes("train"), minlength=3).min() > 0.3 * len(train_sigma) - 2
    # Windows end at their sample's step, never cross a session, and use train-only scaling.
    x = ds.windows("validation")
    assert x.shape == (by["validation"].len(), W, len(ds.feature_names)) and x.dtype == np.float32
    feats = ds.scaled_features()
    session_rows = (ds.steps["session"] == ds.split_samples("validation")["session"][17]).to_numpy()
    row = ds.split_samples("validation").row(17, named=True)
    np.testing.assert_array_equal(x[17], feats[session_rows][row["step"] - W + 1: row["step"] + 1])
    # the view holds an index, not a copy: the same windows, a fraction of the bytes
    np.testing.assert_array_equal(np.asarray(x)[[3, 17]], x[[3, 17]])
    assert x.nbytes * 100 < x.copy_nbytes
    assert (s["step"] >= W - 1).all()
    train_feats = ds.windows("train")[:, -1, :]
    assert abs(float(train_feats.mean())) < 0.2


def test_regime_thresholds_ignore_test_data(prepared, tmp_path):
    """Changing only the test part of the data moves neither the thresholds nor the scaler."""
    from cmm.data.prepare import prepare_dataset
    from cmm.data.spec import DatasetSpec

    ds = prepared(DATASET)
    test_start = int(ds.split_samples("test")["ts_ns"].min())
    files = []
    for s in ds.sessions:
        ev = ds.events(s.id).copy()  # finalized, as hftbacktest writes .npz files
        if s.id == ds.sessions[-1].id:
            late = ev["local_ts"] > test_start
            ev["qty"][late] *= 5.0
            ev["px"][late] *= 1.001
        path = tmp_path / f"s{s.id}.npz"
        np.savez(path, data=ev)
        files.append(path.name)
    spec = DatasetSpec(name="altered", format="hftbacktest-npz", files=files,
                       instrument=ds.instrument, grid=ds.config.grid, base_dir=str(tmp_path))
    alt = prepare_dataset(spec, config=ds.config, cache_dir=tmp_path / "cache", progress=False)
    assert alt.meta["split_counts"] == ds.meta["split_counts"]
    assert alt.regime_thresholds == pytest.approx(ds.regime_thresholds)
    np.testing.assert_allclose(alt.meta["scaler_mean"], ds.meta["scaler_mean"], rtol=1e-9)
    np.testing.assert_allclose(alt.meta["scaler_std"], ds.meta["scaler_std"], rtol=1e-9)
    # ...while the test targets did change.
    assert not np.allclose(alt.targets("test"), ds.targets("test"))
