"""What the teacher reads from a dataset, and an in-memory dataset for tests and arrays.

The teacher needs only ``windows(split)`` (N, W, F) float32, ``targets(split)`` (N, 3),
``regimes(split)`` (N,), the ``samples`` frame, ``config.features`` (window, horizon),
``feature_names``, ``name`` and ``cache_key``: the contract of ``cmm.data.prepare``'s
``PreparedDataset``. ``ArrayDataset`` provides the same from arrays.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import numpy as np

from cmm.config import DataConfig, FeatureConfig
from cmm.data.windows import Windows
from cmm.errors import InputError
from cmm.io import stable_hash
from cmm.vocabulary import SPLITS


class TeacherDataset(Protocol):
    name: str
    cache_key: str
    feature_names: list[str]
    config: DataConfig

    def windows(self, split: str) -> Windows: ...
    def targets(self, split: str) -> np.ndarray: ...
    def regimes(self, split: str) -> np.ndarray: ...


class ArrayDataset:
    """A dataset held in memory: ``arrays[split] = (windows, targets, regimes)``."""

    def __init__(self, arrays: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
                 name: str = "arrays", horizon: int = 10) -> None:
        for split in SPLITS:
            if split not in arrays:
                raise InputError("split missing", field=split, expected=", ".join(SPLITS))
        self.arrays = {s: (np.asarray(w, np.float32), np.asarray(y, np.float32),
                           np.asarray(r, np.int8)) for s, (w, y, r) in arrays.items()}
        w = self.arrays["train"][0]
        self.name = name
        self.feature_names = [f"f{i}" for i in range(w.shape[2])]
        self.config = DataConfig(features=FeatureConfig(window=w.shape[1], horizon=horizon))
        self.cache_key = stable_hash({s: [float(a[0].sum()), a[0].shape, float(a[1].sum())]
                                      for s, a in self.arrays.items()})
        self._samples = None
        self._windows: dict[str, Windows] = {}

    @property
    def samples(self):
        """One row per window (one session, consecutive steps), as the data layer's frame."""
        import polars as pl

        if self._samples is None:
            rows, sample = [], 0
            for split in SPLITS:
                y = self.arrays[split][1]
                for i in range(len(y)):
                    rows.append((sample, 0, sample, split, *map(float, y[i])))
                    sample += 1
            self._samples = pl.DataFrame(rows, schema=["sample", "session", "step", "split",
                                                       "y_mid", "y_spread", "y_volume"],
                                         orient="row")
        return self._samples

    def windows(self, split: str) -> Windows:
        if split not in self._windows:
            self._windows[split] = Windows.from_stacked(self.arrays[split][0])
        return self._windows[split]

    def targets(self, split: str) -> np.ndarray:
        return self.arrays[split][1]

    def regimes(self, split: str) -> np.ndarray:
        return self.arrays[split][2]


def synthetic_dataset(n: tuple[int, int, int] = (256, 96, 96), window: int = 16,
                      n_features: int = 4, seed: int = 0) -> ArrayDataset:
    """Random windows whose targets are simple functions of them (tests and demos)."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, size in zip(SPLITS, n, strict=True):
        x = rng.standard_normal((size, window, n_features)).astype(np.float32)
        y = np.stack([
            x[:, -4:, 0].mean(axis=1) + 0.1 * rng.standard_normal(size),
            2.0 + np.abs(x[:, :, 1]).mean(axis=1),
            np.log1p(np.abs(x[:, :, 2]).sum(axis=1)),
        ], axis=1).astype(np.float32)
        r = (np.abs(x[:, :, 0]).mean(axis=1) > 0.75).astype(np.int8) + (
            np.abs(x[:, :, 0]).mean(axis=1) > 0.85).astype(np.int8)
        arrays[split] = (x, y, r)
    return ArrayDataset(arrays, name="synthetic")


def load_dataset(name_or_spec: str | Path) -> TeacherDataset:
    """The prepared dataset (cached by the data layer) for ``--dataset NAME|SPEC.yaml``."""
    from cmm.data.prepare import prepare_dataset

    return prepare_dataset(name_or_spec)
