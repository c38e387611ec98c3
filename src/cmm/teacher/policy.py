"""The ``teacher`` policy for ``cmm backtest``: the LLM quoting directly (method.md, Baselines),
through the trapezoidal ladder, with its own measured latency so that it quotes on stale data
as it would live.

The latency charged is :func:`teacher_latency_ns`'s, the one rule ``cmm run`` and
``cmm backtest`` both follow.

Predictions for a split come from the cached features (``cmm teacher features``) when they are
there and fresh, else from a batched forward pass. Importing this module registers the policy;
``cmm.cli.teacher`` declares it lazily so ``cmm backtest --policy teacher`` finds it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import numpy as np

from cmm.config import TeacherPolicyConfig
from cmm.errors import InputError
from cmm.io import reading
from cmm.metrics import latency_field
from cmm.strategy.policy import DecisionPlan, Policy, Predictions, register_policy
from cmm.teacher.latency import charged_ns
from cmm.teacher import LATENCY_FILE
from cmm.teacher.store import StaleArtefactError, check_data, read_meta


def teacher_latency_ns(folder: str | Path, latency_ns: int | None = None,
                       threads: Literal["one_thread", "all_threads"] | None = None) -> int:
    """The decision latency (ns) charged to the teacher fitted in ``folder``; ``cmm run`` and
    ``cmm backtest`` both take it from here.

    ``latency_ns`` when given (a setting: reproducible tests, the price of latency's zero),
    else the ``charged_ns`` of ``latency.json`` (batch-1 decision times measured when the
    teacher was fitted, :func:`cmm.teacher.latency.measure_latency`): the median with all torch
    threads, truncated to whole ns. All threads because that is the setting the teacher would
    be deployed in (an LLM quoting live is given the machine's cores); the mixtures are charged
    their one-thread median instead (:func:`cmm.moe.policy.mixture_latency_ns`), the setting
    the Quoter runs in (the paper run's latency tables say so). ``threads`` charges another
    median (``one_thread``: like for like with the Quoter), rounded to whole ns."""
    if latency_ns is not None:
        return int(latency_ns)
    path = Path(folder) / LATENCY_FILE
    if not path.is_file():
        raise InputError("the teacher has no measured latency; run `cmm teacher fit` again "
                         "or set latency_ns", file=path)
    with reading(path):
        measured = json.loads(path.read_text())
    if threads is not None:
        p50_ms = latency_field(measured.get(threads) or {}, "p50", "ms")
        if p50_ms is None:
            raise InputError(f"the teacher's latency has no {threads} median; run "
                             "`cmm teacher fit` again or set latency_ns", file=path)
        return int(round(p50_ms * 1e6))
    if "charged_ns" in measured:  # what cmm.teacher.latency.measure_latency stored
        return int(measured["charged_ns"])
    return charged_ns(measured)  # a file written before charged_ns was stored


@register_policy("teacher")
class TeacherPolicy(Policy):
    config_class = TeacherPolicyConfig

    def fit(self, ds) -> TeacherPolicy:
        folder = Path(self.config.teacher)
        meta = read_meta(folder)
        check_data(meta, ds, folder)
        self.latency_ns_ = teacher_latency_ns(folder, self.config.latency_ns,
                                              self.config.latency)
        self.teacher_ = str(folder)
        self.backbone_ = meta["backbone"]
        return self

    def _predict(self, ds, split: str) -> np.ndarray:
        from cmm.teacher.features import load_features

        try:
            return load_features(self.teacher_, split, ds).pred
        except (InputError, StaleArtefactError):
            pass
        from cmm.teacher.fit import predict_windows
        from cmm.teacher.store import load_teacher

        model = load_teacher(self.teacher_, ds, device=self.config.device)
        pred_std, _ = predict_windows(model, ds.windows(split), self.config.batch_size)
        return model.to_units_np(pred_std)

    def act(self, ds, split: str, plan: DecisionPlan) -> Predictions:
        if not hasattr(self, "teacher_"):
            raise InputError("policy 'teacher' is not fitted; call fit(ds) on the dataset first")
        pred = self._predict(ds, split)
        if len(pred) != plan.n_rows:
            raise InputError("teacher predictions and decision rows differ", field="split",
                             expected=f"{plan.n_rows} rows", got=len(pred))
        return Predictions.from_array(pred)
