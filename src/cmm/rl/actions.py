"""Agent actions -> the ladder's inputs.

An action is three numbers: a half-spread ``h`` (ticks), a shift ``c`` of the quote centre
(ticks, + = up) and a size multiplier ``m``. They reach the trapezoidal ladder as the
predictions every other policy gives it:

- ``mid_bps = 1e4 * c * tick / mid`` (the centre moves by ``c`` ticks),
- ``spread_ticks = 2 h`` (the ladder quotes ``max(s/2, min_half_spread)`` from the centre),
- ``volume_log1p = log1p(m * expm1(v_ref))`` with ``v_ref`` the training median volume signal,
  so each side's size is ``m`` times the fixed baseline's;
- ``skew_ticks`` NaN: the ladder's own inventory skew and size scaling stay on.

Discrete actions index the grid ``half_spreads x shifts x sizes`` (DQN: one flat index; PPO:
one index per factor). Continuous actions (PPO) are ``[-1, 1]^3``: ``h`` and ``m``
log-uniform over their ranges, ``c`` linear.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from gymnasium import spaces

from cmm.config import RLEnvConfig
from cmm.errors import InputError

__all__ = ["ActionMap"]


@dataclass(frozen=True)
class ActionMap:
    """Maps actions of one kind (``flat``: Discrete, ``factored``: MultiDiscrete,
    ``continuous``: Box) to ``(half_spread, shift, size)`` and to ladder signals."""

    kind: str
    half_spreads: tuple[float, ...]
    shifts: tuple[float, ...]
    sizes: tuple[float, ...]
    half_spread_range: tuple[float, float]
    shift_range: float
    size_range: tuple[float, float]
    tick: float
    volume_log1p_ref: float

    @classmethod
    def from_config(cls, config: RLEnvConfig, kind: str, tick: float,
                    volume_log1p_ref: float) -> ActionMap:
        if kind not in ("flat", "factored", "continuous"):
            raise InputError("unknown action kind", field="kind",
                             expected="flat, factored or continuous", got=kind)
        for name, grid in (("half_spreads_ticks", config.half_spreads_ticks),
                           ("shifts_ticks", config.shifts_ticks),
                           ("size_multipliers", config.size_multipliers)):
            if not grid:
                raise InputError("an action grid is empty", field=f"rl.env.{name}",
                                 expected="at least one value", got=grid)
        if min(config.half_spreads_ticks) <= 0 or min(config.size_multipliers) < 0:
            raise InputError("half-spreads must be > 0 and size multipliers >= 0",
                             field="rl.env", got=(config.half_spreads_ticks, config.size_multipliers))
        lo, hi = config.half_spread_range_ticks
        slo, shi = config.size_range
        if not 0 < lo <= hi or not 0 < slo <= shi:
            raise InputError("continuous ranges must be positive and ordered", field="rl.env",
                             expected="0 < low <= high",
                             got=(config.half_spread_range_ticks, config.size_range))
        return cls(kind, tuple(config.half_spreads_ticks), tuple(config.shifts_ticks),
                   tuple(config.size_multipliers), (lo, hi), float(config.shift_range_ticks),
                   (slo, shi), float(tick), float(volume_log1p_ref))

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        return len(self.half_spreads), len(self.shifts), len(self.sizes)

    def space(self) -> spaces.Space:
        if self.kind == "flat":
            return spaces.Discrete(int(np.prod(self.grid_shape)))
        if self.kind == "factored":
            return spaces.MultiDiscrete(list(self.grid_shape))
        return spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)

    def params(self, actions: np.ndarray) -> np.ndarray:
        """(N, ...) actions -> (N, 3) float64 [half_spread_ticks, shift_ticks, size_mult]."""
        a = np.asarray(actions)
        if self.kind == "flat":
            idx = np.unravel_index(a.reshape(-1).astype(np.int64), self.grid_shape)
        elif self.kind == "factored":
            idx = tuple(a.reshape(-1, 3).astype(np.int64).T)
        else:
            x = np.clip(a.reshape(-1, 3).astype(np.float64), -1.0, 1.0)
            u = (x + 1.0) / 2.0
            (lo, hi), (slo, shi) = self.half_spread_range, self.size_range
            return np.stack([np.exp(np.log(lo) + u[:, 0] * (np.log(hi) - np.log(lo))),
                             x[:, 1] * self.shift_range,
                             np.exp(np.log(slo) + u[:, 2] * (np.log(shi) - np.log(slo)))], axis=1)
        return np.stack([np.asarray(self.half_spreads)[idx[0]], np.asarray(self.shifts)[idx[1]],
                         np.asarray(self.sizes)[idx[2]]], axis=1)

    def signals(self, actions: np.ndarray, mid: np.ndarray) -> np.ndarray:
        """(N, 4) float64 ladder inputs [mid_bps, spread_ticks, volume_log1p, skew_ticks]
        for actions taken at book mids ``mid`` (N,)."""
        prm = self.params(actions)
        mid = np.asarray(mid, np.float64).reshape(-1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mid_bps = np.where(mid > 0, 1e4 * prm[:, 1] * self.tick / mid, 0.0)
        volume = np.log1p(prm[:, 2] * math.expm1(self.volume_log1p_ref))
        return np.stack([mid_bps, 2.0 * prm[:, 0], volume, np.full(len(prm), np.nan)], axis=1)

    def signal(self, action, mid: float) -> tuple[float, float, float, float]:
        """One action's ladder inputs (the environment's per-step path, same as
        :meth:`signals` without the array overhead)."""
        if self.kind == "continuous":
            a = np.asarray(action, np.float64).reshape(3)
            lo, hi = self.half_spread_range
            slo, shi = self.size_range
            x = [min(1.0, max(-1.0, float(v))) for v in a]
            h = math.exp(math.log(lo) + (x[0] + 1.0) / 2.0 * (math.log(hi) - math.log(lo)))
            c = x[1] * self.shift_range
            m = math.exp(math.log(slo) + (x[2] + 1.0) / 2.0 * (math.log(shi) - math.log(slo)))
        else:
            if self.kind == "flat":
                i, j, k = np.unravel_index(int(np.asarray(action).reshape(-1)[0]), self.grid_shape)
            else:
                i, j, k = (int(v) for v in np.asarray(action).reshape(3))
            h, c, m = self.half_spreads[i], self.shifts[j], self.sizes[k]
        mid_bps = 1e4 * c * self.tick / mid if mid > 0 else 0.0
        return mid_bps, 2.0 * h, math.log1p(m * math.expm1(self.volume_log1p_ref)), math.nan

    def to_dict(self) -> dict:
        return {"kind": self.kind, "half_spreads": list(self.half_spreads),
                "shifts": list(self.shifts), "sizes": list(self.sizes),
                "half_spread_range": list(self.half_spread_range),
                "shift_range": self.shift_range, "size_range": list(self.size_range),
                "tick": self.tick, "volume_log1p_ref": self.volume_log1p_ref}

    @classmethod
    def from_dict(cls, d: dict) -> ActionMap:
        return cls(d["kind"], tuple(d["half_spreads"]), tuple(d["shifts"]), tuple(d["sizes"]),
                   tuple(d["half_spread_range"]), float(d["shift_range"]),
                   tuple(d["size_range"]), float(d["tick"]), float(d["volume_log1p_ref"]))
