"""The yardsticks as policies: ``ridge`` and ``lgbm`` predict the three targets from hand
features of the window and quote through the same trapezoidal ladder as every learned policy,
so the main table says whether CMM or its teacher quote better than a ridge or a tree would.

Fitted on the training split, tuned (penalty, number of trees) on validation; charged their
measured batch-1 decision time (features of one window + the model), rounded up to 100 us so
that reruns on one machine charge the same, unless ``latency_ns`` is set.
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import numpy as np

from cmm.config import YardstickConfig
from cmm.strategy.policy import DecisionPlan, Policy, Predictions, register_policy
from cmm.yardsticks.models import GradientBoosted, RidgeBaseline, summary_features

if TYPE_CHECKING:
    from cmm.data.prepare import PreparedDataset

__all__ = ["RidgePolicy", "LightGBMPolicy"]

LATENCY_ROUND_NS = 100_000
LATENCY_REPEATS = 200


class _YardstickPolicy(Policy):
    config_class = YardstickConfig

    def _new_model(self):
        raise NotImplementedError

    def fit(self, ds: PreparedDataset) -> _YardstickPolicy:
        spans = self.config.spans
        x_train = summary_features(ds.windows("train"), spans)
        x_val = summary_features(ds.windows("validation"), spans)
        self.model_ = self._new_model().fit(x_train, ds.targets("train"), x_val,
                                            ds.targets("validation"))
        self.decision_ns_ = self._time_one_decision(ds)
        self.latency_ns_ = math.ceil(self.decision_ns_ / LATENCY_ROUND_NS) * LATENCY_ROUND_NS
        return self

    def _time_one_decision(self, ds: PreparedDataset) -> int:
        """Median ns of one decision as it would run live: one window's features, one predict."""
        windows = ds.windows("validation")
        rows = np.linspace(0, len(windows) - 1, LATENCY_REPEATS).round().astype(int)
        times = []
        for i in rows:
            t0 = time.perf_counter_ns()
            self.model_.predict(summary_features(windows.take([i]), self.config.spans))
            times.append(time.perf_counter_ns() - t0)
        return int(np.median(times))

    def act(self, ds: PreparedDataset, split: str, plan: DecisionPlan) -> Predictions:
        if not hasattr(self, "model_"):
            from cmm.errors import InputError

            raise InputError(f"policy '{self.name}' is not fitted; call fit(ds) first")
        pred = self.model_.predict(summary_features(ds.windows(split), self.config.spans))
        return Predictions.from_array(pred)

    def describe(self) -> dict:
        out = super().describe()
        out["learned"].pop("model_", None)
        return out


@register_policy("ridge")
class RidgePolicy(_YardstickPolicy):
    """Ridge regression on the window's hand features."""

    def _new_model(self) -> RidgeBaseline:
        return RidgeBaseline(self.config.ridge_alphas)

    def fit(self, ds: PreparedDataset) -> RidgePolicy:
        super().fit(ds)
        self.alpha_ = list(self.model_.alpha_)
        return self


@register_policy("lgbm")
class LightGBMPolicy(_YardstickPolicy):
    """Gradient-boosted trees (LightGBM) on the window's hand features."""

    def _new_model(self) -> GradientBoosted:
        return GradientBoosted(self.config)

    def fit(self, ds: PreparedDataset) -> LightGBMPolicy:
        super().fit(ds)
        self.trees_ = list(self.model_.best_iterations_)
        return self
