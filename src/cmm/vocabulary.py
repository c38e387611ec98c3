"""The one place the project's shared names live: prediction tasks, data splits, volatility
regimes and the two sides of the order book (issue 12). Every other module imports them from
here, so that no two modules can disagree.

Order matters, and must not change: ``TASKS`` is the order of the model heads, of the target
columns and of every stored prediction array; ``SPLITS`` the order of the split ids in the
prepared samples (0 train, 1 validation, 2 test); ``REGIMES`` is indexed by the regime label
(0 low, 1 mid, 2 high volatility); ``BID``, ``ASK`` index per-side arrays, among them
:data:`cmm.data.events.SIDE_FLAG` (which lives there because it needs hftbacktest's flags).

Plain Python only: :mod:`cmm.config` imports this module, so it must stay free of heavy imports.
"""

from __future__ import annotations

__all__ = ["TASKS", "SPLITS", "EVALUATED_SPLITS", "REGIMES", "BID", "ASK"]

TASKS = ("mid", "spread", "volume")
SPLITS = ("train", "validation", "test")
# the held-out splits fitted models are scored on (train is what they are fitted on)
EVALUATED_SPLITS = SPLITS[1:]
REGIMES = ("low", "mid", "high")
BID, ASK = 0, 1
