"""Metrics of the three targets, and the honest baselines the teacher must beat.

Every model is scored on the same windows: MSE and R^2 per target (R^2 against the split's own
mean, as scikit-learn's ``r2_score``), and for the mid target the direction accuracy: the share
of windows with a non-zero future return whose predicted sign is right (undefined for a model
that always predicts 0).

Baselines (fitted on train, chosen on validation, never on test):

- ``zero/last``: mid return 0; spread and volume equal to their last *realised* value, i.e. the
  target of the window that ended ``H`` steps earlier in the same session (known at decision
  time); the train mean where no such window exists.
- ``train-mean``: the training mean of each target (R^2 about 0 by construction).
- ``ridge``: ridge regression on the flattened window (W * F inputs), one penalty per target
  picked on validation from ``TeacherConfig.ridge_alphas``.
"""

from __future__ import annotations

import numpy as np

from cmm.teacher.model import TASKS


def regression_metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, dict[str, float | None]]:
    """Per task: ``mse``, ``r2`` and, for ``mid``, ``direction_acc``. pred, y: (N, 3)."""
    pred, y = np.asarray(pred, np.float64), np.asarray(y, np.float64)
    out: dict[str, dict[str, float | None]] = {}
    for k, task in enumerate(TASKS):
        err = pred[:, k] - y[:, k]
        sst = float(((y[:, k] - y[:, k].mean()) ** 2).sum())
        mse = float((err**2).mean())
        m: dict[str, float | None] = {
            "mse": mse,
            "r2": 1.0 - float((err**2).sum()) / sst if sst > 0 else None,
        }
        if task == "mid":
            moved = y[:, k] != 0
            signs = np.sign(pred[moved, k])
            m["direction_acc"] = (
                float((signs == np.sign(y[moved, k])).mean())
                if moved.any() and np.any(signs != 0) else None
            )
        out[task] = m
    return out


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


def last_realised(samples, split: str, horizon: int, fallback: np.ndarray) -> np.ndarray:
    """(N, 3) for the windows of ``split``: each target's value for the window that ended
    ``horizon`` steps earlier in the same session (fully realised at decision time), else
    ``fallback``. ``samples``: the dataset's polars frame (session, step, split, y_*)."""
    import polars as pl

    cols = ["y_mid", "y_spread", "y_volume"]
    part = samples.filter(pl.col("split") == split).select("session", "step")
    lagged = samples.select(
        "session", (pl.col("step") + horizon).alias("step"), *[pl.col(c).alias(c + "_lag") for c in cols]
    )
    joined = part.with_row_index("_i").join(lagged, on=["session", "step"], how="left").sort("_i")
    out = joined.select([c + "_lag" for c in cols]).to_numpy().astype(np.float64)
    missing = np.isnan(out)
    out[missing] = np.broadcast_to(fallback, out.shape)[missing]
    return out


def persistence_baseline(samples, split: str, horizon: int, train_mean: np.ndarray) -> np.ndarray:
    """The ``zero/last`` baseline: mid 0, spread and volume as last realised."""
    pred = last_realised(samples, split, horizon, train_mean)
    pred[:, 0] = 0.0
    return pred


def baseline_predictions(dataset, ridge_alphas: tuple[float, ...]) -> tuple[dict, dict]:
    """Predictions of every baseline on validation and test: ``{split: {name: (N, 3)}}``, and
    the ridge penalties chosen on validation."""
    x_train, y_train = dataset.windows("train"), dataset.targets("train")
    x_val, y_val = dataset.windows("validation"), dataset.targets("validation")
    train_mean = y_train.astype(np.float64).mean(axis=0)
    ridge = RidgeBaseline(ridge_alphas).fit(x_train, y_train, x_val, y_val)
    horizon = dataset.config.features.horizon
    out: dict[str, dict[str, np.ndarray]] = {}
    for split in ("validation", "test"):
        x = dataset.windows(split)
        out[split] = {
            "zero/last": persistence_baseline(dataset.samples, split, horizon, train_mean),
            "train-mean": np.broadcast_to(train_mean, (len(x), 3)).copy(),
            "ridge": ridge.predict(x),
        }
    return out, {"ridge_alpha": dict(zip(TASKS, ridge.alpha_, strict=True))}


def evaluate_teacher(model, dataset, ridge_alphas: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0),
                     batch_size: int = 256, on_progress=None, baselines=None) -> dict:
    """Teacher and baselines on validation and test: ``{split: {model: metrics}}``."""
    from cmm.teacher.fit import _noop, predict_windows

    on_progress = on_progress or _noop
    if baselines is None:
        baselines = baseline_predictions(dataset, ridge_alphas)
    preds, info = baselines
    report: dict = {"models": {}, "baselines": info, "windows": {}}
    for split in ("validation", "test"):
        y = dataset.targets(split)
        report["windows"][split] = len(y)
        p_std, _ = predict_windows(model, dataset.windows(split), batch_size,
                                   on_progress=on_progress, stage=f"evaluate {split}")
        pred = model.to_units_np(p_std)
        report["models"].setdefault("teacher", {})[split] = regression_metrics(pred, y)
        for name, p in preds[split].items():
            report["models"].setdefault(name, {})[split] = regression_metrics(p, y)
    return report


def metrics_table(reports: dict[str, dict], split: str) -> str:
    """A markdown table, one row per model: MSE and R^2 per target, direction accuracy of mid.
    ``reports``: {row label: evaluate_teacher report} (the baselines come from the first)."""
    rows: dict[str, dict] = {}
    for label, report in reports.items():
        rows[label] = report["models"]["teacher"][split]
    first = next(iter(reports.values()))
    for name, per_split in first["models"].items():
        if name != "teacher":
            rows[name] = per_split[split]

    def fmt(v, digits=4):
        return "n/a" if v is None else f"{v:.{digits}g}" if abs(v) >= 1e-3 else f"{v:.2e}"

    head = ("| model | mid MSE | mid R2 | mid dir.acc | spread MSE | spread R2 | volume MSE "
            "| volume R2 |\n|---|---|---|---|---|---|---|---|\n")
    lines = []
    for name, m in rows.items():
        lines.append(
            f"| {name} | {fmt(m['mid']['mse'])} | {fmt(m['mid']['r2'], 3)} | "
            f"{fmt(m['mid'].get('direction_acc'), 3)} | {fmt(m['spread']['mse'])} | "
            f"{fmt(m['spread']['r2'], 3)} | {fmt(m['volume']['mse'])} | "
            f"{fmt(m['volume']['r2'], 3)} |")
    return head + "\n".join(lines) + "\n"
