"""The decision path: one window of book features in, predictions, mixture weights and the
ladder's orders out, one decision at a time.

    quoter = Quoter.load("runs/btc/distill/cmm")
    d = quoter.decide(window, best_bid=64000.0, best_ask=64000.1, position=0.002)
    d.predictions      # (3,) mid return (bps), mean spread (ticks), log1p volume over H
    d.weights          # (T, M) each task's mixture weights over its experts
    d.bid_px, d.bid_qty, d.ask_px, d.ask_qty   # the trapezoidal ladder, (K,) per side

The arithmetic is the fused numpy pass of :class:`~cmm.moe.fused.FusedMixture` (no torch), and
the orders come from the same numba kernel the backtest replays
(:func:`cmm.strategy.ladder.ladder_kernel`), with the ladder's settings and the instrument's
tick and lot. ``window`` is the (W, F) float32 window of *scaled* features, as the data layer
builds them (``PreparedDataset.windows``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import NamedTuple

import numpy as np

from cmm.config import Instrument, LadderConfig
from cmm.moe.artefact import load_fused
from cmm.moe.fused import FusedMixture
from cmm.vocabulary import TASKS


class Decision(NamedTuple):
    """One decision. ``valid``: the book had an uncrossed touch (else no orders)."""

    predictions: np.ndarray  # (3,) [mid bps, spread ticks, log1p volume]
    weights: np.ndarray  # (T, M)
    bid_ticks: np.ndarray  # (K,) int64
    bid_lots: np.ndarray  # (K,) float64, 0 = no order
    ask_ticks: np.ndarray
    ask_lots: np.ndarray
    tick: float
    lot: float
    valid: bool

    @property
    def bid_px(self) -> np.ndarray:
        return self.bid_ticks * self.tick

    @property
    def ask_px(self) -> np.ndarray:
        return self.ask_ticks * self.tick

    @property
    def bid_qty(self) -> np.ndarray:
        return self.bid_lots * self.lot

    @property
    def ask_qty(self) -> np.ndarray:
        return self.ask_lots * self.lot


class Quoter:
    """A CMM (or any saved mixture) quoting live, one decision at a time."""

    def __init__(self, mixture: FusedMixture, instrument: Instrument,
                 ladder: LadderConfig | None = None, gate: str = "hajek",
                 meta: dict | None = None) -> None:
        from cmm.strategy.ladder import ladder_kernel, ladder_params, trapezoid_weights

        if gate not in mixture.gates:
            from cmm.errors import InputError

            raise InputError("gate not in this mixture", field="gate",
                             expected=", ".join(mixture.gates), got=gate)
        self.mixture, self.instrument, self.gate = mixture, instrument, gate
        self.ladder = ladder or LadderConfig()
        self.meta = meta or {}
        self._kernel = ladder_kernel
        self._params = ladder_params(self.ladder, instrument)
        K = self.ladder.levels
        self._level_weights = trapezoid_weights(K, self.ladder.ramp_up_levels,
                                                self.ladder.ramp_down_levels)
        self._cols = np.array([TASKS.index(t) for t in mixture.tasks])
        self._full = len(self._cols) == len(TASKS)
        self._tick, self._lot = instrument.tick_size, instrument.lot_size
        # compile the ladder kernel now, not on the first live decision
        bt, bl, at, al = self._buffers()
        self._kernel(self._params, self._level_weights, 0.0, 1.0, 0.0, math.nan, 0.0, 100, 101,
                     bt, bl, at, al)

    def _buffers(self):
        K = self.ladder.levels  # the kernel writes every element
        return np.empty(K, np.int64), np.empty(K), np.empty(K, np.int64), np.empty(K)

    @classmethod
    def load(cls, folder: str | Path, ladder: LadderConfig | None = None, gate: str = "hajek",
             instrument: Instrument | None = None) -> Quoter:
        mixture, meta = load_fused(folder)
        if instrument is None:
            instrument = Instrument.model_validate(meta["data"]["instrument"])
        return cls(mixture, instrument, ladder, gate, meta)

    # -- predictions -----------------------------------------------------------------------------
    def predict(self, window: np.ndarray, regime: int = -1) -> tuple[np.ndarray, np.ndarray]:
        """(3,) predictions [mid bps, spread ticks, log1p volume] (NaN for a task the mixture
        lacks) and (T, M) weights."""
        y, w = self.mixture.predict_one(window, regime, self.gate)
        if self._full:
            return y.astype(np.float64), w
        out = np.full(len(TASKS), np.nan)
        out[self._cols] = y
        return out, w

    def predict_batch(self, windows: np.ndarray, regimes: np.ndarray | None = None
                      ) -> tuple[np.ndarray, np.ndarray]:
        """(N, 3) predictions and (N, T, M) weights, the same numbers as :meth:`predict`."""
        y, w = self.mixture.predict(windows, regimes, self.gate)
        out = np.full((len(y), len(TASKS)), np.nan)
        out[:, self._cols] = y
        return out, w

    # -- decisions -------------------------------------------------------------------------------
    def decide(self, window: np.ndarray, best_bid: float, best_ask: float,
               position: float = 0.0, regime: int = -1, skew_ticks: float = math.nan
               ) -> Decision:
        """Window in, orders out: predictions, weights and the ladder at the current touch and
        inventory (``position`` in base units or contracts)."""
        y, w = self.predict(window, regime)
        bt, bl, at, al = self._buffers()
        valid = self._kernel(self._params, self._level_weights, y[0], y[1], y[2], skew_ticks,
                             position, int(round(best_bid / self._tick)),
                             int(round(best_ask / self._tick)), bt, bl, at, al)
        return Decision(y, w, bt, bl, at, al, self._tick, self._lot, bool(valid))

    @property
    def latency(self) -> dict:
        """The decision latency measured when the mixture was saved (``{}`` if none)."""
        return self.meta.get("latency", {})
