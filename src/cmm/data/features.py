"""Per-step features, targets, volatility regimes and chronological splits (method.md, Data).

Everything here is a pure function of the step arrays; each value at step ``t`` depends only on
steps ``<= t`` (features, sigma) or ``<= t + H`` (targets), which the no-look-ahead test checks.
"""

from __future__ import annotations

import numpy as np

from cmm.config import FeatureConfig, SplitConfig


def feature_names(levels: int) -> list[str]:
    return (
        ["mid_ret_bps", "spread_ticks"]
        + [f"log_bid_sz_{i}" for i in range(levels)]
        + [f"log_ask_sz_{i}" for i in range(levels)]
        + ["depth_imbalance", "ofi", "signed_volume", "total_volume", "realised_vol",
           "trailing_volume_lots"]
    )


def _trailing_sum(x: np.ndarray, window: int) -> np.ndarray:
    """Sum over the last ``window`` values including the current one (fewer at the start);
    cumulative sums keep it O(n)."""
    c = np.concatenate([[0.0], np.cumsum(x)])
    idx = np.arange(1, len(x) + 1)
    return c[idx] - c[np.maximum(idx - window, 0)]


def _trailing_std(x: np.ndarray, window: int, min_periods: int) -> np.ndarray:
    """Std (ddof=0) over the last ``window`` values including the current one; NaN before
    ``min_periods`` values exist."""
    cnt = np.minimum(np.arange(1, len(x) + 1), window)
    mean = _trailing_sum(x, window) / cnt
    var = np.maximum(_trailing_sum(x * x, window) / cnt - mean * mean, 0.0)
    out = np.sqrt(var)
    out[cnt < min_periods] = np.nan
    return out


def mid_and_spread(steps: dict[str, np.ndarray], tick_size: float) -> tuple[np.ndarray, np.ndarray]:
    bid, ask = steps["bid_px"][:, 0], steps["ask_px"][:, 0]
    return (bid + ask) / 2.0, (ask - bid) / tick_size


def step_features(steps: dict[str, np.ndarray], tick_size: float, cfg: FeatureConfig,
                  lot_size: float = 1.0) -> np.ndarray:
    """(n_steps, 2L + 8) float64 features of one session's valid, contiguous steps.

    The last, ``trailing_volume_lots``, is the volume target's own value over the ``H`` steps
    up to and including ``t``: log1p of the volume traded in them, in lots (fewer steps at a
    session's start). A per-step log1p(volume) cannot express it linearly (a log of sums is not
    a sum of logs), and where most horizons see no trade (Bitstamp 2015 at 1 s: 78 %) it is the
    recent level a volume forecast starts from (a calibrated mean of it over the window: test
    R^2 0.045 there, where ridge on the other features got -0.001)."""
    mid, spread = mid_and_spread(steps, tick_size)
    log_mid = np.log(mid)
    ret = np.zeros_like(mid)
    ret[1:] = 1e4 * np.diff(log_mid)
    bid_sz, ask_sz = steps["bid_sz"], steps["ask_sz"]
    depth_b, depth_a = bid_sz.sum(axis=1), ask_sz.sum(axis=1)
    imbalance = (depth_b - depth_a) / np.maximum(depth_b + depth_a, 1e-12)
    # Order-flow imbalance at the touch (Cont, Kukanov & Stoikov 2014).
    bp, bq = steps["bid_px"][:, 0], bid_sz[:, 0]
    ap, aq = steps["ask_px"][:, 0], ask_sz[:, 0]
    ofi = np.zeros_like(mid)
    ofi[1:] = ((bp[1:] >= bp[:-1]) * bq[1:] - (bp[1:] <= bp[:-1]) * bq[:-1]
               - (ap[1:] <= ap[:-1]) * aq[1:] + (ap[1:] >= ap[:-1]) * aq[:-1])
    buy, sell = steps["buy_vol"], steps["sell_vol"]
    signed = buy - sell
    return np.column_stack([
        ret,
        spread,
        np.log1p(bid_sz),
        np.log1p(ask_sz),
        imbalance,
        np.sign(ofi) * np.log1p(np.abs(ofi)),
        np.sign(signed) * np.log1p(np.abs(signed)),
        np.log1p(buy + sell),
        np.nan_to_num(_trailing_std(ret, cfg.rv_window, 2)),
        # clipped at 0: a difference of cumulative sums can round to just below it
        np.log1p(np.maximum(_trailing_sum((buy + sell) / lot_size, cfg.horizon), 0.0)),
    ])


def sigma(mid: np.ndarray, cfg: FeatureConfig) -> np.ndarray:
    """Trailing realised volatility: std of 1-step mid log-returns over the last V steps."""
    r = np.zeros_like(mid)
    r[1:] = np.diff(np.log(mid))
    return _trailing_std(r, cfg.vol_window, cfg.vol_min_periods)


def targets(mid: np.ndarray, spread: np.ndarray, volume: np.ndarray, t: np.ndarray,
            horizon: int, lot_size: float) -> np.ndarray:
    """(len(t), 3): future mid return (bps), mean spread over (t, t+H] (ticks), log1p of the
    traded volume over (t, t+H] in lots (base volume / ``lot_size``). Requires ``t + H < len(mid)``.

    In lots, so that the target spreads over the same range whatever the unit: BTC volumes of
    0.001-10 would sit at log1p(v) = 0.001-2.4, squashed near 0, while share volumes do not."""
    c_spread = np.concatenate([[0.0], np.cumsum(spread)])
    c_vol = np.concatenate([[0.0], np.cumsum(volume / lot_size)])
    y_mid = 1e4 * (mid[t + horizon] - mid[t]) / mid[t]
    y_spread = (c_spread[t + horizon + 1] - c_spread[t + 1]) / horizon
    y_volume = np.log1p(c_vol[t + horizon + 1] - c_vol[t + 1])
    return np.column_stack([y_mid, y_spread, y_volume])


def regime_thresholds(sigma_train: np.ndarray) -> tuple[float, float]:
    """1/3 and 2/3 quantiles of sigma on the training split only."""
    s = sigma_train[np.isfinite(sigma_train)]
    if len(s) == 0:
        raise ValueError("no training samples with a defined volatility")
    lo, hi = np.quantile(s, [1 / 3, 2 / 3])
    return float(lo), float(hi)


def assign_regimes(sig: np.ndarray, thresholds: tuple[float, float]) -> np.ndarray:
    lo, hi = thresholds
    return ((sig > lo).astype(np.int8) + (sig > hi).astype(np.int8)).astype(np.int8)


def chronological_splits(global_step: np.ndarray, cfg: SplitConfig, purge: int) -> np.ndarray:
    """Split label per sample (0 train, 1 validation, 2 test, -1 purged) from the samples'
    position on the joined step timeline. Boundaries fall at the train and train+validation
    fractions of the samples; the first ``purge`` steps after each boundary are dropped."""
    n = len(global_step)
    order = np.argsort(global_step, kind="stable")
    g = global_step[order]
    total = cfg.train + cfg.validation + cfg.test
    b1 = int(np.floor(n * cfg.train / total))
    b2 = int(np.floor(n * (cfg.train + cfg.validation) / total))
    labels = np.full(n, -1, np.int8)
    cut1 = g[b1] if b1 < n else np.inf
    cut2 = g[b2] if b2 < n else np.inf
    lab = np.where(g < cut1, 0, np.where(g < cut2, 1, 2)).astype(np.int8)
    lab[(lab == 1) & (g < cut1 + purge)] = -1
    lab[(lab == 2) & (g < cut2 + purge)] = -1
    labels[order] = lab
    return labels
