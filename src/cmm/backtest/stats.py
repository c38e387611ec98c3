"""Paired comparisons of two policies replayed on the same episodes.

Every policy of a run replays the same test episodes, so what tells two policies apart is the
per-episode *difference* ``d_e = a_e - b_e``, not the spread of each one's PnL: market moves
shared by both cancel in ``d``. For a comparison the report makes (CMM against its teacher,
against a baseline, an ablation against CMM) :func:`paired_difference` gives

- the mean difference ``mean(d)`` and its 95 % confidence interval from a **stratified moving
  block bootstrap**: within each stratum (a seed: its own fits, its own episodes), episodes stay
  in time order and are resampled in blocks of ``block`` consecutive episodes, so dependence
  between neighbouring episodes of a day is kept inside a block; each replicate's mean pools the
  strata with their episode counts as weights;
- the **Wilcoxon signed-rank** p-value of ``d`` (``scipy.stats.wilcoxon``, two-sided), a test
  that does not assume normal PnL;
- the **minimum detectable difference**: ``(z_{1-alpha/2} + z_{power}) * se`` with ``se`` the
  bootstrap standard error, the smallest true mean difference the comparison would find with
  probability ``power`` (80 %) at level ``alpha`` (5 %): what "not distinguishable" means in
  numbers;
- a verdict, "better" / "worse" only where the interval excludes 0 *and* the Wilcoxon test
  rejects "no difference" at ``alpha``, else "not distinguishable with N episodes". Both,
  because with a handful of episodes the percentile bootstrap is too narrow (it ignores that
  the spread itself is estimated from N values): with 6 episodes an interval can exclude 0 while
  the exact Wilcoxon p is 0.3.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
from scipy import stats

from cmm.errors import InputError

__all__ = ["PairedDifference", "paired_difference"]

N_BOOT = 10_000
ALPHA = 0.05
POWER = 0.8


@dataclass(frozen=True)
class PairedDifference:
    """``a - b`` over paired episodes; see the module docstring."""

    mean: float
    low: float  # 95 % bootstrap interval of the mean difference
    high: float
    p_value: float | None  # Wilcoxon signed-rank, two-sided (None: every difference is 0)
    n: int  # episodes
    se: float  # bootstrap standard error of the mean difference
    min_detectable: float
    block: int
    alpha: float = ALPHA

    @property
    def verdict(self) -> str:
        tested = self.p_value is not None and self.p_value < self.alpha
        if tested and self.low > 0:
            return "better"
        if tested and self.high < 0:
            return "worse"
        return f"not distinguishable with {self.n} episodes"

    def to_dict(self) -> dict:
        return {**asdict(self), "verdict": self.verdict}


def _block_means(d: np.ndarray, strata: np.ndarray, block: int, n_boot: int,
                 rng: np.random.Generator) -> np.ndarray:
    """(n_boot,) means of stratified moving-block resamples of ``d`` (time order within each
    stratum as given)."""
    total = np.zeros(n_boot)
    for s in np.unique(strata):
        x = d[strata == s]
        n = len(x)
        b = min(block, n)
        k = math.ceil(n / b)
        starts = rng.integers(0, n - b + 1, size=(n_boot, k))
        idx = (starts[:, :, None] + np.arange(b)).reshape(n_boot, k * b)[:, :n]
        total += x[idx].sum(axis=1)
    return total / len(d)


def paired_difference(a, b, strata=None, *, block: int = 1, n_boot: int = N_BOOT,
                      seed: int = 0, alpha: float = ALPHA, power: float = POWER
                      ) -> PairedDifference:
    """Mean of ``a - b`` over paired episodes, with its bootstrap interval and a Wilcoxon test.

    ``a``, ``b``: (N,) per-episode values of the two policies on the same episodes, in time order
    within each stratum; ``strata``: (N,) stratum of each episode (e.g. the seed), None for one.
    Deterministic for a given ``seed``.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise InputError("paired series must have the same length", field="b",
                         expected=f"{a.shape}", got=f"{b.shape}")
    if len(a) < 2:
        raise InputError("a paired comparison needs at least 2 episodes", got=len(a))
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        raise InputError("paired series hold non-finite values")
    strata = np.zeros(len(a), np.int64) if strata is None else np.asarray(strata)
    if strata.shape != a.shape:
        raise InputError("one stratum per episode", field="strata", expected=f"{a.shape}",
                         got=f"{strata.shape}")
    if block < 1:
        raise InputError("block length must be >= 1", field="block", got=block)
    d = a - b
    means = _block_means(d, strata, block, n_boot, np.random.default_rng(seed))
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    se = float(means.std(ddof=1))
    nonzero = d[d != 0]
    p = float(stats.wilcoxon(nonzero).pvalue) if len(nonzero) else None
    mde = (stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(power)) * se
    return PairedDifference(mean=float(d.mean()), low=float(low), high=float(high), p_value=p,
                            n=len(d), se=se, min_detectable=float(mde), block=int(block),
                            alpha=float(alpha))
