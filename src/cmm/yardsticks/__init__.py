"""Yardsticks: what a model must beat before its LLM features mean anything.

Ridge regression and gradient-boosted trees (LightGBM) on hand features of the window (the last
step's features and their trailing means), fitted on train, tuned on validation, scored like the
teacher and quoting through the same ladder as every other policy (policies ``ridge`` and
``lgbm``). See :mod:`cmm.yardsticks.models`.
"""

from cmm.yardsticks.models import (
    GradientBoosted,
    RidgeBaseline,
    flat_threshold_bps,
    summary_feature_names,
    summary_features,
)

__all__ = ["GradientBoosted", "RidgeBaseline", "flat_threshold_bps", "summary_feature_names",
           "summary_features"]
