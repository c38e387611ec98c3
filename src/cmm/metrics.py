"""The formulas of the numbers the backtest, the report and the CLI give, one owner each.

Pure numpy functions of plain arrays; the modules that read runs (:mod:`cmm.backtest.metrics`,
:mod:`cmm.report.tables`, :mod:`cmm.teacher.evaluate`, :mod:`cmm.moe.pipeline`) call them.

Market making (method.md, "Backtest and metrics"), over the episodes of one run:

- :func:`pnl_map`: PnLMAP = EPnL / MAP (mean episode PnL over mean absolute position);
- :func:`rpt`: RPT = total PnL / total fills (return per trade);
- :func:`sharpe`: mean / standard deviation (ddof 1) of episode PnL, not annualised;
- :func:`max_drawdown`: the largest fall of an equity path from its running maximum.

One guard for the three ratios (:func:`ratio`): a ratio is defined only where its denominator
is a number > 0. Every denominator (MAP, fills, a standard deviation) is >= 0 by construction,
so 0, NaN (e.g. a standard deviation of one value, the mean of no episode) or a negative
value give NaN, never an infinity or a sign flip; a NaN numerator gives NaN.

Prediction (method.md, "Baselines"), per target of (N, 3) arrays in :data:`TASKS` order:
MSE in the target's units, R^2 against the split's own mean (as scikit-learn's ``r2_score``;
None where the truth is constant), the mid's direction accuracy and its up/flat/down
accuracy and macro-F1 beyond a flat threshold. Everything is computed in float64.
"""

from __future__ import annotations

import math

import numpy as np

from cmm.vocabulary import TASKS

# ----------------------------------------------------------------------------- market making


def ratio(num: float, den: float) -> float:
    """``num / den`` where ``den`` > 0, else NaN (the one guard of every ratio here)."""
    num, den = float(num), float(den)
    return num / den if den > 0 else math.nan  # NaN > 0 is False


def sample_std(values) -> float:
    """Standard deviation with ddof 1; NaN under two values."""
    a = np.asarray(values, np.float64)
    return float(np.std(a, ddof=1)) if len(a) > 1 else math.nan


def _mean(values) -> float:
    a = np.asarray(values, np.float64)
    return float(a.mean()) if len(a) else math.nan


def pnl_map(pnl, map_) -> float:
    """PnLMAP: mean of the episodes' PnL over the mean of their mean absolute positions
    (``map_``, base units); NaN without episodes or with a zero MAP (a policy that never
    held inventory)."""
    return ratio(_mean(pnl), _mean(map_))


def rpt(pnl, fills) -> float:
    """RPT: total PnL over total fills of the episodes; NaN without fills."""
    return ratio(np.asarray(pnl, np.float64).sum(), np.asarray(fills, np.float64).sum())


def sharpe(pnl) -> float:
    """Mean over standard deviation (ddof 1) of the episodes' PnL, not annualised; NaN under
    two episodes or where every episode made the same PnL."""
    return ratio(_mean(pnl), sample_std(pnl))


def max_drawdown(equity) -> float:
    """Largest peak-to-trough fall of a path that starts at 0 (NaNs skipped): 0 for a path
    that never falls, or for an empty one."""
    equity = np.asarray(equity, np.float64)
    path = np.concatenate([[0.0], equity[~np.isnan(equity)]])
    return float(np.max(np.maximum.accumulate(path) - path))


# -------------------------------------------------------------------------------- prediction


def mse(pred, y) -> float:
    """Mean squared error of one target, in its units (NaN where a prediction is NaN)."""
    err = np.asarray(pred, np.float64) - np.asarray(y, np.float64)
    return float((err ** 2).mean())


def r2(pred, y) -> float | None:
    """R^2 of one target against the truth's own mean: 1 - SSE / SST; None where the truth
    is constant (SST 0), NaN where a prediction is NaN."""
    pred, y = np.asarray(pred, np.float64), np.asarray(y, np.float64)
    sst = float(((y - y.mean()) ** 2).sum())
    return 1.0 - float(((pred - y) ** 2).sum()) / sst if sst > 0 else None


def direction_accuracy(pred, y) -> float | None:
    """Share of the windows whose truth moved (non-zero) where the prediction has its sign;
    None where nothing moved or where the prediction is 0 on every window that did."""
    pred, y = np.asarray(pred, np.float64), np.asarray(y, np.float64)
    moved = y != 0
    signs = np.sign(pred[moved])
    if not moved.any() or not np.any(signs != 0):
        return None
    return float((signs == np.sign(y[moved])).mean())


def direction_classes(pred, y, flat_bps: float) -> dict[str, float]:
    """Accuracy and macro-F1 (mean over down, flat, up of 2PR/(P+R); a class neither true nor
    predicted is left out of the mean) of the three-way direction beyond ``flat_bps``
    (|return| <= ``flat_bps`` is flat, for the truth and the prediction alike)."""
    def classes(v):
        return np.where(v > flat_bps, 2, np.where(v < -flat_bps, 0, 1))

    t, p = classes(np.asarray(y)), classes(np.asarray(pred))
    confusion = np.bincount(3 * t + p, minlength=9).reshape(3, 3)
    f1 = []
    for c in range(3):
        tp, support, called = confusion[c, c], confusion[c].sum(), confusion[:, c].sum()
        if support + called:
            f1.append(2 * tp / (support + called))
    return {"direction3_acc": float(np.trace(confusion) / max(len(t), 1)),
            "direction3_f1": float(np.mean(f1)) if f1 else 0.0, "flat_bps": float(flat_bps)}


def regression_metrics(pred, y, flat_bps: float | None = None, direction: bool = True
                       ) -> dict[str, dict[str, float | None]]:
    """Per task of ``pred``, ``y`` ((N, 3), :data:`TASKS` order): ``mse`` and ``r2``; with
    ``direction``, the mid's ``direction_acc`` and, with ``flat_bps`` too, its up/flat/down
    classification beyond that threshold (:func:`direction_classes`: ``direction3_acc``,
    ``direction3_f1``, ``flat_bps``), the measures of the limit-order-book literature."""
    pred, y = np.asarray(pred, np.float64), np.asarray(y, np.float64)
    out: dict[str, dict[str, float | None]] = {}
    for k, task in enumerate(TASKS):
        m: dict[str, float | None] = {"mse": mse(pred[:, k], y[:, k]),
                                      "r2": r2(pred[:, k], y[:, k])}
        if direction and task == "mid":
            m["direction_acc"] = direction_accuracy(pred[:, k], y[:, k])
            if flat_bps is not None:
                m.update(direction_classes(pred[:, k], y[:, k], flat_bps))
        out[task] = m
    return out


# ----------------------------------------------------------------------------- latency

LATENCY_UNITS = ("ns", "us", "ms", "s")


def latency_field(stats: dict, name: str, unit: str) -> float | None:
    """The latency figure ``name`` (``"p50"``, ``"p99"``, ``"mean"``...) of a stored summary
    ``stats``, in ``unit``: the one reading rule of every latency field. Every latency field's
    name carries its unit, ``<name>_<unit>`` (``p50_us`` for the Quoter and the RL agent,
    ``p50_ms`` for the teacher); summaries written before that convention hold the same figure,
    in the same unit, under the bare ``name`` (their ``"unit"`` field, where they have one,
    must say that unit). None when neither field is there."""
    if unit not in LATENCY_UNITS:
        raise ValueError(f"latency unit {unit!r}: not one of {LATENCY_UNITS}")
    key = f"{name}_{unit}"
    if key in stats:
        return float(stats[key])
    if name not in stats:
        return None
    stored = stats.get("unit", unit)
    if stored != unit:
        raise ValueError(f"latency {name!r} is stored in {stored}, asked for in {unit}")
    return float(stats[name])
