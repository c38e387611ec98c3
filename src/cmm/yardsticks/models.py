"""Yardstick models on hand features of the window.

Features (:func:`summary_features`): for each window, the last step's (scaled) features and
their means over the last ``k`` steps for each ``k`` of ``spans`` (clipped to the window), so a
64-step window of 27 features becomes 4 x 27 = 108 inputs. They are computed from the shared
feature array with cumulative sums (O(N F), no window is stacked): on the GOOG day a ridge on
them reaches test R^2 0.27 on spread and 0.13 on volume where a ridge on the 1,728 flattened
window values reaches 0.01 and -0.18 (the recent *level* is what matters, and the flat window
hides it among 64 noisy copies).

- :class:`RidgeBaseline`: ridge regression (closed form, inputs centred, one penalty per target
  chosen on validation), on any 2-D inputs or flattened windows;
- :class:`GradientBoosted`: one LightGBM regressor per target, early-stopped on validation,
  deterministic (row-wise histograms, fixed seed and threads).
"""

from __future__ import annotations

import numpy as np

from cmm.config import YardstickConfig
from cmm.data.windows import Windows

__all__ = ["RidgeBaseline", "GradientBoosted", "summary_features", "summary_feature_names",
           "flat_threshold_bps"]


def summary_features(windows: Windows, spans: tuple[int, ...] = YardstickConfig().spans
                     ) -> np.ndarray:
    """(N, (1 + len(spans)) F) float32: the last step's features, then their mean over the last
    ``k`` steps for each ``k`` in ``spans`` (``min(k, W)``)."""
    feats, W = windows.features, windows.window
    if len(windows) * W < len(feats):
        # few windows (one live decision): cut them out instead of summing the whole array
        x = np.asarray(windows[:], np.float64)
        parts = [x[:, -1, :]] + [x[:, W - min(int(k), W):, :].mean(axis=1) for k in spans]
        return np.concatenate(parts, axis=1).astype(np.float32)
    end = windows.starts + W  # one past each window's last row
    csum = np.zeros((len(feats) + 1, feats.shape[1]), np.float64)
    np.cumsum(feats, axis=0, dtype=np.float64, out=csum[1:])
    parts = [feats[end - 1].astype(np.float64)]
    for k in spans:
        k = min(int(k), W)
        parts.append((csum[end] - csum[end - k]) / k)
    return np.concatenate(parts, axis=1).astype(np.float32)


def summary_feature_names(names: list[str], spans: tuple[int, ...] = YardstickConfig().spans
                          ) -> list[str]:
    return [f"{n}@last" for n in names] + [f"{n}@mean{k}" for k in spans for n in names]


def flat_threshold_bps(ds) -> float:
    """A quarter of a tick, in bps of the training split's median mid: a mid that moved moved
    by at least half a tick, so "flat" (|return| below this) is "did not move" for the truth,
    and a prediction must call at least a quarter tick to count as up or down."""
    mid = float(np.median(ds.split_samples("train")["mid"].to_numpy()))
    return 0.25 * ds.instrument.tick_size / mid * 1e4


class RidgeBaseline:
    """Ridge regression on flattened windows, one penalty per target chosen on validation."""

    def __init__(self, alphas: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0, 1000.0)) -> None:
        self.alphas = tuple(alphas)

    block = 8192  # windows flattened at a time: a full day's split never exists flat at once

    def _flat_blocks(self, x):
        for start in range(0, len(x), self.block):
            yield np.asarray(x[start:start + self.block], np.float64).reshape(
                min(self.block, len(x) - start), -1)

    def fit(self, x_train, y_train: np.ndarray, x_val, y_val: np.ndarray) -> RidgeBaseline:
        """``x_*``: (N, W, F) arrays or :class:`cmm.data.windows.Windows` views."""
        y_train = np.asarray(y_train, np.float64)
        self.x_mean_ = sum(b.sum(axis=0) for b in self._flat_blocks(x_train)) / len(x_train)
        self.y_mean_ = y_train.mean(axis=0)
        Yc = y_train - self.y_mean_
        d = len(self.x_mean_)
        gram, xty = np.zeros((d, d)), np.zeros((d, y_train.shape[1]))
        for i, b in enumerate(self._flat_blocks(x_train)):
            bc = b - self.x_mean_
            gram += bc.T @ bc
            xty += bc.T @ Yc[i * self.block:i * self.block + len(b)]
        eye = np.eye(d)
        yv = np.asarray(y_val, np.float64)
        scale = np.trace(gram) / d  # penalties are relative to the mean eigenvalue
        solutions = {a: np.linalg.solve(gram + a * scale * eye, xty) for a in self.alphas}
        sq_err = {a: np.zeros(y_train.shape[1]) for a in self.alphas}
        for i, b in enumerate(self._flat_blocks(x_val)):
            bc = b - self.x_mean_
            yb = yv[i * self.block:i * self.block + len(b)]
            for a, w in solutions.items():
                sq_err[a] += ((bc @ w + self.y_mean_ - yb) ** 2).sum(axis=0)
        self.coef_ = np.zeros((d, y_train.shape[1]))
        self.alpha_ = []
        self.val_mse_ = []
        for k in range(y_train.shape[1]):
            mse, a = min((float(sq_err[a][k] / len(yv)), a) for a in self.alphas)
            self.val_mse_.append(mse)
            self.alpha_.append(a)
            self.coef_[:, k] = solutions[a][:, k]
        return self

    def predict(self, x) -> np.ndarray:
        if not hasattr(self, "coef_"):
            raise RuntimeError("RidgeBaseline is not fitted; call fit() first")
        parts = [(b - self.x_mean_) @ self.coef_ + self.y_mean_ for b in self._flat_blocks(x)]
        return np.concatenate(parts) if parts else np.zeros((0, self.coef_.shape[1]))


class GradientBoosted:
    """One LightGBM regressor per target on 2-D inputs, early-stopped on validation."""

    def __init__(self, config: YardstickConfig = YardstickConfig()) -> None:
        self.config = config

    def _params(self) -> dict:
        c = self.config
        return {"objective": "regression", "learning_rate": c.lgbm_learning_rate,
                "num_leaves": c.lgbm_leaves, "min_data_in_leaf": c.lgbm_min_child_samples,
                "seed": c.seed, "num_threads": c.threads, "deterministic": True,
                "force_row_wise": True, "verbosity": -1}

    def fit(self, x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray,
            y_val: np.ndarray) -> GradientBoosted:
        import lightgbm as lgb

        c = self.config
        if c.lgbm_max_train and len(x_train) > c.lgbm_max_train:
            pick = np.linspace(0, len(x_train) - 1, c.lgbm_max_train).round().astype(int)
            x_train, y_train = x_train[pick], y_train[pick]
        self.models_, self.best_iterations_ = [], []
        for k in range(y_train.shape[1]):
            train = lgb.Dataset(x_train, np.ascontiguousarray(y_train[:, k]))
            val = lgb.Dataset(x_val, np.ascontiguousarray(y_val[:, k]), reference=train)
            booster = lgb.train(self._params(), train, num_boost_round=c.lgbm_estimators,
                                valid_sets=[val],
                                callbacks=[lgb.early_stopping(c.lgbm_early_stopping,
                                                              verbose=False)])
            self.models_.append(booster)
            self.best_iterations_.append(int(booster.best_iteration or c.lgbm_estimators))
        return self

    def predict(self, x: np.ndarray) -> np.ndarray:
        if not hasattr(self, "models_"):
            raise RuntimeError("GradientBoosted is not fitted; call fit() first")
        return np.column_stack([m.predict(x, num_iteration=it)
                                for m, it in zip(self.models_, self.best_iterations_,
                                                 strict=True)])
