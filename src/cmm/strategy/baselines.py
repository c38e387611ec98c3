"""Rule-based baselines (method.md, "Baselines and ablations"): all quote through the same
trapezoidal ladder and differ only in what they feed it.

- ``fixed``: no view on the mid, a constant spread, a constant size signal (a quantile of the
  training volume target).
- ``as``: Avellaneda & Stoikov (2008), "High-frequency trading in a limit order book". With
  prices in ticks and the inventory as a fraction of the limit (``q/Q``):
  reservation ``r = s - (q/Q) * gamma * sigma^2 * tau`` and total spread
  ``gamma * sigma^2 * tau + (2 / gamma) * ln(1 + gamma / k)``, with ``tau`` the time left in the
  episode. ``sigma^2`` (ticks^2 per second) and the order-arrival intensity
  ``lambda(delta) = A * exp(-k * delta)`` are estimated on the training split only: ``lambda`` is
  the rate of trades printing at least ``delta`` ticks from the prevailing mid. ``gamma`` (per
  tick) is a setting; unset, it is calibrated so that the inventory skew at the limit, at the
  mean ``tau``, equals ``skew_ticks_at_limit``.
- ``oracle``: the perfect-forecast ladder: the true future targets through the same ladder. It
  checks that the ladder can use information; it is not an upper bound on PnL (another policy,
  e.g. one that skews less under a crash, can beat it) and never a competitor.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np

from cmm.config import AvellanedaStoikovConfig, FixedSpreadConfig, OracleConfig
from cmm.errors import InputError
from cmm.strategy.policy import DecisionPlan, Policy, Predictions, register_policy

if TYPE_CHECKING:
    from cmm.data.prepare import PreparedDataset

_TRADE_EVENT = 2
_LOCAL_EVENT = 1 << 30
_EVENT_TYPE_MASK = 0xFF


def _check_fitted(policy: Policy, attr: str) -> None:
    if not hasattr(policy, attr):
        raise InputError(f"policy '{policy.name}' is not fitted; call fit(ds) on the dataset first")


def training_steps(ds: PreparedDataset) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per session with training samples: (ts_ns, mid) of its steps up to the last step that a
    training window covers. Nothing later is returned."""
    import polars as pl

    train = ds.split_samples("train")
    last = dict(train.group_by("session").agg(pl.col("step").max()).iter_rows())
    out = {}
    for sid, last_step in last.items():
        st = ds.steps.filter((pl.col("session") == sid) & (pl.col("step") <= last_step)).sort("step")
        if "valid" in st.columns:
            st = st.filter(pl.col("valid"))
        out[int(sid)] = (st["ts_ns"].to_numpy(), st["mid"].to_numpy())
    return out


def volume_signal(ds: PreparedDataset, quantile: float) -> float:
    y = ds.split_samples("train")["y_volume"].to_numpy()
    return float(np.quantile(y, quantile))


@register_policy("fixed")
class FixedSpreadPolicy(Policy):
    config_class = FixedSpreadConfig

    def fit(self, ds: PreparedDataset) -> FixedSpreadPolicy:
        self.volume_log1p_ = volume_signal(ds, self.config.volume_quantile)
        return self

    def act(self, ds: PreparedDataset, split: str, plan: DecisionPlan) -> Predictions:
        _check_fitted(self, "volume_log1p_")
        n = plan.n_rows
        return Predictions(np.zeros(n), np.full(n, self.config.spread_ticks),
                           np.full(n, self.volume_log1p_))


def estimate_sigma2(ds: PreparedDataset) -> float:
    """Variance of mid changes, in ticks^2 per second, over consecutive training steps."""
    tick = ds.spec.instrument.tick_size
    diffs, dts = [], []
    for ts, mid in training_steps(ds).values():
        if len(ts) > 1:
            diffs.append(np.diff(mid) / tick)
            dts.append(np.diff(ts) / 1e9)
    if not diffs:
        raise InputError("cannot estimate sigma: the training split has no consecutive steps")
    d, dt = np.concatenate(diffs), np.concatenate(dts)
    return float(np.sum(d**2) / np.sum(dt))  # mid changes are ~zero-mean at this scale


def estimate_intensity(ds: PreparedDataset, levels: int) -> tuple[float, float, dict]:
    """Fit ``lambda(delta) = A exp(-k delta)`` (per second, delta in ticks from the mid) to the
    rate of training trades printing at least ``delta = 0.5, 1.5, ...`` ticks from the mid."""
    tick = ds.spec.instrument.tick_size
    distances, seconds = [], 0.0
    for sid, (ts, mid) in training_steps(ds).items():
        if len(ts) < 2:
            continue
        ev = ds.events(sid)
        kind = ev["ev"] & _EVENT_TYPE_MASK
        m = ((ev["ev"] & _LOCAL_EVENT) != 0) & (kind == _TRADE_EVENT)
        m &= (ev["local_ts"] > ts[0]) & (ev["local_ts"] <= ts[-1])
        t_ts, t_px = ev["local_ts"][m], ev["px"][m]
        idx = np.searchsorted(ts, t_ts, side="left") - 1  # the last step strictly before
        ok = idx >= 0
        distances.append(np.abs(t_px[ok] - mid[idx[ok]]) / tick)
        seconds += (ts[-1] - ts[0]) / 1e9
    delta = np.concatenate(distances) if distances else np.zeros(0)
    grid = 0.5 + np.arange(levels, dtype=np.float64)
    rate = np.array([(delta >= g - 1e-9).sum() for g in grid]) / max(seconds, 1e-9)
    use = rate > 0
    if use.sum() < 2:
        raise InputError("cannot estimate the order-arrival intensity: fewer than two distance "
                         "levels have training trades", expected=">= 2", got=int(use.sum()))
    slope, intercept = np.polyfit(grid[use], np.log(rate[use]), 1)
    k, A = float(-slope), float(math.exp(intercept))
    if not k > 0:
        raise InputError("order-arrival intensity does not decay with distance on the training "
                         "split", field="k", expected="> 0", got=k)
    return k, A, {"distance_ticks": grid.tolist(), "rate_per_s": rate.tolist(),
                  "trades": int(len(delta)), "seconds": seconds}


@register_policy("as")
class AvellanedaStoikovPolicy(Policy):
    config_class = AvellanedaStoikovConfig

    def fit(self, ds: PreparedDataset) -> AvellanedaStoikovPolicy:
        cfg = self.config
        self.sigma2_ticks_per_s_ = estimate_sigma2(ds)
        self.k_per_tick_, self.A_per_s_, self.intensity_fit_ = estimate_intensity(
            ds, cfg.intensity_levels)
        self.volume_log1p_ = volume_signal(ds, cfg.volume_quantile)
        return self

    def _tau(self, plan: DecisionPlan) -> np.ndarray:
        """Time left in the episode at each row (rows outside the plan: half an episode)."""
        cfg = self.config
        if cfg.horizon == "fixed":
            return np.full(plan.n_rows, cfg.horizon_s)
        lengths = (plan.episode_end_ns - plan.episode_start_ns) / 1e9
        half = float(lengths.mean()) / 2.0 if len(lengths) else cfg.horizon_s / 2.0
        tau = plan.time_left_s()
        return np.where(np.isnan(tau), half, np.maximum(tau, 0.0))

    def gamma(self, plan: DecisionPlan) -> float:
        """Risk aversion per tick (inventory as a fraction of the limit). Calibrated, when not
        set, at the mean time left of an episode of the configured length (half of it): a
        setting, never the test split's own decision times (sigma comes from train)."""
        _check_fitted(self, "sigma2_ticks_per_s_")
        if self.config.gamma is not None:
            return float(self.config.gamma)
        if self.config.horizon == "fixed":
            tau_mean = self.config.horizon_s
        else:
            lengths = (plan.episode_end_ns - plan.episode_start_ns) / 1e9
            tau_mean = float(lengths.mean()) / 2.0 if len(lengths) else self.config.horizon_s / 2
        return self.config.skew_ticks_at_limit / max(self.sigma2_ticks_per_s_ * tau_mean, 1e-12)

    def act(self, ds: PreparedDataset, split: str, plan: DecisionPlan) -> Predictions:
        _check_fitted(self, "sigma2_ticks_per_s_")
        g = self.gamma(plan)
        self.gamma_ = g
        tau = self._tau(plan)
        inventory_term = g * self.sigma2_ticks_per_s_ * tau  # ticks, at |q| = Q
        spread = inventory_term + (2.0 / g) * math.log1p(g / self.k_per_tick_)
        n = plan.n_rows
        return Predictions(np.zeros(n), spread, np.full(n, self.volume_log1p_),
                           skew_ticks=inventory_term)


@register_policy("oracle")
class OraclePolicy(Policy):
    """The perfect-forecast ladder: fed the true future targets; never a competitor."""

    config_class = OracleConfig

    def act(self, ds: PreparedDataset, split: str, plan: DecisionPlan) -> Predictions:
        return Predictions.from_array(ds.targets(split))
