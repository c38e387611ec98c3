"""The ``teacher`` policy for ``cmm backtest``: the LLM quoting directly (method.md, Baselines),
through the trapezoidal ladder, with its own measured latency so that it quotes on stale data
as it would live.

Predictions for a split come from the cached features (``cmm teacher features``) when they are
there and fresh, else from a batched forward pass. Importing this module registers the policy;
``cmm.cli.teacher`` declares it lazily so ``cmm backtest --policy teacher`` finds it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from cmm.config import TeacherPolicyConfig
from cmm.errors import InputError
from cmm.strategy.policy import DecisionPlan, Policy, Predictions, register_policy
from cmm.teacher.store import LATENCY_FILE, StaleArtefactError, check_data, read_meta


@register_policy("teacher")
class TeacherPolicy(Policy):
    config_class = TeacherPolicyConfig

    def fit(self, ds) -> TeacherPolicy:
        folder = Path(self.config.teacher)
        meta = read_meta(folder)
        check_data(meta, ds, folder)
        if self.config.latency_ns is None:
            path = folder / LATENCY_FILE
            if not path.is_file():
                raise InputError("the teacher has no measured latency; run `cmm teacher fit` "
                                 "again or set latency_ns", file=path)
            latency = json.loads(path.read_text())[self.config.latency]
            self.latency_ns_ = int(round(latency["p50"] * 1e6))
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
