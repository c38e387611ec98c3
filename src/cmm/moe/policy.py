"""The ``cmm`` policy for ``cmm backtest``: a saved mixture's predictions, quoted through the
trapezoidal ladder, charged with the Quoter's measured decision latency.

The predictions for a split are computed in one batch by the same fused numpy pass the Quoter
runs live (so the replay quotes exactly what the Quoter would), and handed to the replay as
:class:`~cmm.strategy.policy.Predictions`. ``latency_ns``: the setting if given, else the
one-thread p50 of ``Quoter.decide`` with the policy's gate, stored in the artefact when it was
made (``remeasure``, or an artefact saved unmeasured: timed again here).
The hard-regime gate reads each sample's regime, known at decision time (trailing volatility).

Importing this module registers the policy; ``cmm.cli.distill`` declares it lazily so
``cmm backtest --policy cmm`` finds it without importing it up front.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cmm.config import CmmPolicyConfig
from cmm.errors import InputError
from cmm.strategy.policy import DecisionPlan, Policy, Predictions, register_policy

if TYPE_CHECKING:
    from cmm.data.prepare import PreparedDataset


def stored_latency(meta: dict, gate: str) -> int | None:
    """The decision time (ns, one-thread p50) measured for ``gate`` when the mixture whose
    ``mixture.json`` is ``meta`` was made (``latency_by_gate``), else its one stored figure
    (``latency``: mixtures of older versions stored the main gate's alone); None when the
    mixture was saved unmeasured."""
    got = (meta.get("latency_by_gate") or {}).get(gate) or meta.get("latency") or {}
    return int(got["p50"] * 1e3) if "p50" in got else None


@register_policy("cmm")
class CmmPolicy(Policy):
    config_class = CmmPolicyConfig

    def fit(self, ds: PreparedDataset) -> CmmPolicy:
        from cmm.moe.quoter import Quoter

        folder = Path(self.config.artefact)
        quoter = Quoter.load(folder, gate=self.config.gate, instrument=ds.spec.instrument)
        key = quoter.meta.get("data", {}).get("cache_key")
        if key != ds.cache_key:
            from cmm.teacher.store import StaleArtefactError

            raise StaleArtefactError(f"{folder}: mixture distilled on data {key}, not "
                                     f"{ds.cache_key}; run `cmm distill` and `cmm moe` again")
        stored = stored_latency(quoter.meta, self.config.gate)
        if self.config.latency_ns is not None:
            latency = int(self.config.latency_ns)
        elif self.config.remeasure or stored is None:
            from cmm.moe.latency import measure_in_subprocess

            measured = measure_in_subprocess(folder, ds.windows("validation"),
                                             gate=self.config.gate)
            latency = int(measured["p50"] * 1e3)
        else:
            latency = stored
        self.quoter_ = quoter
        self.latency_ns_ = latency
        self.artefact_ = str(folder)
        return self

    def act(self, ds: PreparedDataset, split: str, plan: DecisionPlan) -> Predictions:
        if not hasattr(self, "quoter_"):
            raise InputError("policy 'cmm' is not fitted; call fit(ds) on the dataset first")
        windows = ds.windows(split)
        if len(windows) != plan.n_rows:
            raise InputError("windows and decision rows differ", field="split",
                             expected=f"{plan.n_rows} rows", got=len(windows))
        regimes = np.asarray(ds.regimes(split)) if self.config.gate == "regime" else None
        pred, weights = self.quoter_.predict_batch(windows, regimes)
        self.mean_weights_ = weights.mean(axis=0).round(4).tolist()
        return Predictions.from_array(pred)

    def describe(self) -> dict:
        out = super().describe()
        out.pop("learned", None)
        out["learned"] = {"artefact": getattr(self, "artefact_", None),
                          "mean_weights": getattr(self, "mean_weights_", None)}
        return out
