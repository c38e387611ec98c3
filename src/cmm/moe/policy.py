"""The ``cmm`` policy for ``cmm backtest``: a saved mixture's predictions, quoted through the
trapezoidal ladder, charged with the Quoter's measured decision latency.

The predictions for a split are computed in one batch by the same fused numpy pass the Quoter
runs live (so the replay quotes exactly what the Quoter would), and handed to the replay as
:class:`~cmm.strategy.policy.Predictions`. The latency charged is :func:`mixture_latency_ns`'s
(the one rule ``cmm run`` and ``cmm backtest`` both follow): the setting if given, else the
one-thread p50 of ``Quoter.decide`` with the policy's gate, stored in the artefact when it was
made (``remeasure``, or an artefact saved unmeasured: timed again here).
The hard-regime gate reads each sample's regime, known at decision time (trailing volatility).

Importing this module registers the policy; ``cmm.cli.distill`` declares it lazily so
``cmm backtest --policy cmm`` finds it without importing it up front.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cmm.config import CmmPolicyConfig
from cmm.errors import InputError
from cmm.metrics import latency_field
from cmm.strategy.policy import DecisionPlan, Policy, Predictions, register_policy

if TYPE_CHECKING:
    from cmm.data.prepare import PreparedDataset

log = logging.getLogger(__name__)


def stored_latency(meta: dict, gate: str) -> int | None:
    """The decision time (ns, one-thread p50) measured for ``gate`` when the mixture whose
    ``mixture.json`` is ``meta`` was made (``latency_by_gate``), else its one stored figure
    (``latency``: mixtures of older versions stored the main gate's alone); None when the
    mixture was saved unmeasured. The figure is ``p50_us`` (``p50`` in older mixtures,
    :func:`cmm.metrics.latency_field`)."""
    got = (meta.get("latency_by_gate") or {}).get(gate) or meta.get("latency") or {}
    p50_us = latency_field(got, "p50", "us")
    return None if p50_us is None else int(p50_us * 1e3)


def mixture_latency_ns(folder: str | Path, meta: dict, gate: str, ds: PreparedDataset,
                       latency_ns: int | None = None, remeasure: bool = False,
                       repeats: int = 2000, warmup: int = 200) -> int:
    """The decision latency (ns) charged to the mixture saved in ``folder`` (``meta``: its
    ``mixture.json``) quoting with ``gate``; ``cmm run`` and ``cmm backtest`` both take it
    from here.

    ``latency_ns`` when given (a setting: reproducible tests, the price of latency's
    teacher latency), else the one-thread, batch-1 median of ``Quoter.decide`` with that gate,
    stored when the mixture was made (:func:`stored_latency`), truncated to whole ns. One
    thread because that is the setting the Quoter's small fused numpy pass is built and timed
    for (:mod:`cmm.moe.latency` pins BLAS to one thread); the teacher is charged its
    all-threads median instead (:func:`cmm.teacher.policy.teacher_latency_ns`). With ``remeasure``, or for
    a mixture saved unmeasured, it is timed again now, in a fresh one-thread interpreter, on
    ``repeats`` decisions of the validation windows of ``ds`` after ``warmup``."""
    if latency_ns is not None:
        return int(latency_ns)
    stored = stored_latency(meta, gate)
    if stored is not None and not remeasure:
        return stored
    from cmm.moe.latency import measure_in_subprocess

    if stored is None:
        log.warning("%s: no stored latency for gate %s; measuring it", folder, gate)
    measured = measure_in_subprocess(folder, ds.windows("validation"), repeats, warmup, gate)
    return int(latency_field(measured, "p50", "us") * 1e3)


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
        self.quoter_ = quoter
        self.latency_ns_ = mixture_latency_ns(folder, quoter.meta, self.config.gate, ds,
                                              self.config.latency_ns, self.config.remeasure)
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
