"""Metrics of the three targets, and the honest baselines the teacher must beat.

Every model is scored on the same windows by :func:`cmm.metrics.regression_metrics`: MSE and
R^2 per target (R^2 against the split's own mean, as scikit-learn's ``r2_score``), and for the
mid target the direction accuracy: the share of windows with a non-zero future return whose
predicted sign is right (undefined for a model that always predicts 0), and the up/flat/down
accuracy and macro-F1 beyond the flat threshold.

Baselines (fitted on train, chosen on validation, never on test):

- ``zero/last``: mid return 0; spread and volume equal to their last *realised* value, i.e. the
  target of the window that ended ``H`` steps earlier in the same session (known at decision
  time); the train mean where no such window exists.
- ``train-mean``: the training mean of each target (R^2 about 0 by construction).
- ``ridge``: ridge regression on hand features of the window (the last step and trailing means,
  :mod:`cmm.yardsticks`), one penalty per target picked on validation from
  ``TeacherConfig.ridge_alphas``;
- ``lightgbm``: gradient-boosted trees on the same features, early-stopped on validation.
"""

from __future__ import annotations

import numpy as np

from cmm.config import YardstickConfig
from cmm.metrics import regression_metrics  # cmm.pipeline.run imports it from here too
from cmm.vocabulary import EVALUATED_SPLITS, SPLITS, TASKS
from cmm.yardsticks import (
    GradientBoosted,
    RidgeBaseline,
    flat_threshold_bps,
    summary_features,
)


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


def baseline_predictions(dataset, ridge_alphas: tuple[float, ...],
                         yardsticks: YardstickConfig = YardstickConfig()) -> tuple[dict, dict]:
    """Predictions of every baseline on validation and test: ``{split: {name: (N, 3)}}``, and
    what was chosen on validation (ridge penalties, trees per target)."""
    feats = {s: summary_features(dataset.windows(s), yardsticks.spans)
             for s in SPLITS}
    y_train, y_val = dataset.targets("train"), dataset.targets("validation")
    train_mean = y_train.astype(np.float64).mean(axis=0)
    ridge = RidgeBaseline(ridge_alphas).fit(feats["train"], y_train, feats["validation"], y_val)
    trees = GradientBoosted(yardsticks).fit(feats["train"], y_train, feats["validation"], y_val)
    horizon = dataset.config.features.horizon
    out: dict[str, dict[str, np.ndarray]] = {}
    for split in EVALUATED_SPLITS:
        n = len(feats[split])
        out[split] = {
            "zero/last": persistence_baseline(dataset.samples, split, horizon, train_mean),
            "train-mean": np.broadcast_to(train_mean, (n, 3)).copy(),
            "ridge": ridge.predict(feats[split]),
            "lightgbm": trees.predict(feats[split]),
        }
    return out, {"ridge_alpha": dict(zip(TASKS, ridge.alpha_, strict=True)),
                 "lightgbm_trees": dict(zip(TASKS, trees.best_iterations_, strict=True)),
                 "features": f"last step + means over the last {list(yardsticks.spans)} steps"}


def evaluate_teacher(model, dataset, ridge_alphas: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0),
                     batch_size: int = 256, on_progress=None, baselines=None) -> dict:
    """Teacher and baselines on validation and test: ``{split: {model: metrics}}``."""
    from cmm.teacher.fit import _noop, predict_windows

    on_progress = on_progress or _noop
    if baselines is None:
        baselines = baseline_predictions(dataset, ridge_alphas)
    preds, info = baselines
    flat = flat_threshold_bps(dataset) if hasattr(dataset, "instrument") else None
    report: dict = {"models": {}, "baselines": info, "windows": {}}
    for split in EVALUATED_SPLITS:
        y = dataset.targets(split)
        report["windows"][split] = len(y)
        p_std, _ = predict_windows(model, dataset.windows(split), batch_size,
                                   on_progress=on_progress, stage=f"evaluate {split}")
        pred = model.to_units_np(p_std)
        report["models"].setdefault("teacher", {})[split] = regression_metrics(pred, y, flat)
        for name, p in preds[split].items():
            report["models"].setdefault(name, {})[split] = regression_metrics(p, y, flat)
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
