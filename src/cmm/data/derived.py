"""A prepared dataset with some sessions' events replaced (a stress scenario's market), written
as a prepared-dataset folder of the same layout (:mod:`cmm.data.prepare`).

A replaced session is gridded again (:func:`~cmm.data.prepare.build_session`) and must keep
the original's grid steps: its rows of ``steps`` and ``features`` are replaced, its samples keep
their rows with new sigma, targets, mid and regime. Splits, scaler and regime thresholds stay
the original's; the other sessions' event files are copied as they are.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl

from cmm.data import FEATURES_FILE, META_FILE
from cmm.data import features as F
from cmm.data.prepare import (
    PreparedDataset,
    build_session,
    events_file,
    step_columns,
    write_tables,
)
from cmm.io import atomic_dir, read_parquet

__all__ = ["DerivedDataset"]


class DerivedDataset:
    """The tables of the prepared dataset ``source``, with sessions' events replaced one at a
    time (:meth:`replace_session`), then written to a folder (:meth:`write`)."""

    def __init__(self, source: PreparedDataset) -> None:
        self.source = source
        self.steps = source.steps
        self.samples = source.samples
        self.features = read_parquet(source.artefact(FEATURES_FILE))
        self.events: dict[int, np.ndarray] = {}  # session id -> its new finalized events

    def replace_session(self, session_id: int, events: np.ndarray) -> bool:
        """Replace a session's finalized events and every row computed from them. False, and
        nothing changed, when their grid does not have the session's steps."""
        ds, sid = self.source, session_id
        arrays = build_session(events, ds.spec.instrument, ds.config)
        steps, samples, feats = self.steps, self.samples, self.features
        m = (steps["session"] == sid).to_numpy()
        old_ts = steps.filter(pl.col("session") == sid)["ts_ns"].to_numpy()
        if arrays is None or arrays.n_steps != len(old_ts) or not np.array_equal(
                arrays.ts_ns, old_ts):
            return False
        self.events[sid] = events
        cols = {**step_columns(arrays, ds.config.grid.levels), "valid": arrays.valid}
        idx = np.flatnonzero(m)
        updates = {k: _replace(steps[k].to_numpy(), idx, v) for k, v in cols.items()}
        self.steps = steps.with_columns([pl.Series(k, v, dtype=steps.schema[k])
                                         for k, v in updates.items()])
        fx = feats.to_numpy().copy()
        fx[idx] = arrays.features.astype(fx.dtype)
        self.features = pl.DataFrame(fx, schema=feats.schema)
        # samples of this session: same rows, new sigma, targets, mid, regime
        sm = (samples["session"] == sid).to_numpy()
        t = samples["step"].to_numpy()[sm].astype(np.int64)
        y = F.targets(arrays.mid, arrays.spread,
                      arrays.book["buy_vol"] + arrays.book["sell_vol"], t,
                      ds.config.features.horizon, ds.instrument.lot_size)
        sig = arrays.sigma[t]
        reg = F.assign_regimes(sig, ds.regime_thresholds)
        si = np.flatnonzero(sm)
        self.samples = samples.with_columns([
            pl.Series("sigma", _replace(samples["sigma"].to_numpy(), si, sig)),
            pl.Series("y_mid", _replace(samples["y_mid"].to_numpy(), si, y[:, 0])),
            pl.Series("y_spread", _replace(samples["y_spread"].to_numpy(), si, y[:, 1])),
            pl.Series("y_volume", _replace(samples["y_volume"].to_numpy(), si, y[:, 2])),
            pl.Series("mid", _replace(samples["mid"].to_numpy(), si, arrays.mid[t])),
            pl.Series("regime", _replace(samples["regime"].to_numpy(), si, reg),
                      dtype=samples.schema["regime"]),
        ])
        return True

    def write(self, out_dir: str | Path, key: str, extra_meta: dict) -> PreparedDataset:
        """Write the dataset to ``out_dir`` atomically (the source's ``meta.json`` with
        ``key`` and ``extra_meta``'s entries) and open it."""
        ds = self.source
        out_dir = Path(out_dir)
        meta = json.loads((ds.folder / META_FILE).read_text())
        meta["key"] = key
        meta.update(extra_meta)
        with atomic_dir(out_dir) as tmp:
            for s in ds.sessions:
                name = events_file(s.id)
                if s.id in self.events:
                    np.savez(tmp / name, data=self.events[s.id])
                else:
                    shutil.copyfile(ds.artefact(name), tmp / name)
            write_tables(tmp, self.steps, self.features, self.samples, meta)
        return PreparedDataset(out_dir)


def _replace(column: np.ndarray, idx: np.ndarray, values: np.ndarray) -> np.ndarray:
    out = column.copy()
    out[idx] = np.asarray(values).astype(out.dtype)
    return out
