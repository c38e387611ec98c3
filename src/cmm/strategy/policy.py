"""Policies: what a market maker decides at each decision point, and how long it takes.

A decision point is a row of ``ds.samples`` (a window end): the policy may use everything up to
that row's ``ts_ns`` and nothing later. A policy answers, for every row of a split, either

- :class:`Predictions`: mid return (bps), spread (ticks) and ``log1p`` volume (lots) over the horizon,
  optionally an inventory skew; the replay turns them into quotes with the trapezoidal ladder
  using the book and the inventory at decision time; or
- :class:`Quotes`: its own (K,) bid and ask prices and quantities; the replay only puts them on the
  tick and lot grid, keeps them post-only and within the position limit.

Learned policies compute these arrays in batches before the replay (their model never runs
inside it). ``latency_ns`` is the policy's own inference time: the replay sends its orders to the
exchange after the venue latency plus this latency, and (by default) skips decision points while
the policy is still busy with the previous one.

Policies are registered by name (:func:`register_policy`) and built with :func:`get_policy`; an
unknown name's error lists the valid ones.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from cmm.errors import InputError, UnknownNameError

if TYPE_CHECKING:
    from pydantic import BaseModel

    from cmm.data.prepare import PreparedDataset

__all__ = ["DecisionPlan", "Predictions", "Quotes", "Policy", "PrecomputedPolicy",
           "register_policy", "get_policy", "available_policies", "POLICIES",
           "policy_label", "policy_seeded"]


@dataclass(frozen=True)
class DecisionPlan:
    """Which rows of a split the replay acts on, grouped into episodes (built by the backtest
    before the replay, so a policy may use the schedule, never the outcome).

    ``rows`` index ``ds.split_samples(split)``; per decision: ``ts_ns`` (local clock),
    ``session``, ``episode``; per episode: ``episode_session``, ``episode_start_ns``,
    ``episode_end_ns``.
    """

    split: str
    n_rows: int
    rows: np.ndarray  # (N,) int64
    ts_ns: np.ndarray  # (N,) int64
    session: np.ndarray  # (N,) int64
    episode: np.ndarray  # (N,) int64
    episode_session: np.ndarray  # (E,) int64
    episode_start_ns: np.ndarray  # (E,) int64
    episode_end_ns: np.ndarray  # (E,) int64

    @property
    def n_decisions(self) -> int:
        return len(self.rows)

    @property
    def n_episodes(self) -> int:
        return len(self.episode_start_ns)

    def time_left_s(self) -> np.ndarray:
        """(n_rows,) seconds from each row to the end of its episode; NaN for rows not decided on."""
        out = np.full(self.n_rows, np.nan)
        out[self.rows] = (self.episode_end_ns[self.episode] - self.ts_ns) / 1e9
        return out


def _column(name: str, a: Any, n: int) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if a.ndim == 0:
        a = np.full(n, float(a))
    if a.shape != (n,):
        raise InputError("policy output has the wrong shape", field=name,
                         expected=f"({n},) aligned with the split's samples", got=a.shape)
    return a


@dataclass(frozen=True)
class Predictions:
    """Per split row: predicted mid return (bps), mean spread (ticks) and ``log1p`` volume in lots
    over the horizon; ``skew_ticks`` (optional) overrides the ladder's inventory skew ``k_q``
    (ticks at the position limit). NaN: mid return 0, minimum spread, no size, default skew."""

    mid_bps: np.ndarray
    spread_ticks: np.ndarray
    volume_log1p: np.ndarray
    skew_ticks: np.ndarray | None = None

    kind: ClassVar[str] = "predictions"

    @classmethod
    def from_array(cls, y: np.ndarray) -> Predictions:
        """From an (N, 3) array ordered [mid, spread, volume], as ``ds.targets`` gives."""
        y = np.asarray(y, dtype=np.float64)
        if y.ndim != 2 or y.shape[1] != 3:
            raise InputError("predictions array has the wrong shape",
                             expected="(N, 3): mid bps, spread ticks, log1p volume", got=y.shape)
        return cls(y[:, 0].copy(), y[:, 1].copy(), y[:, 2].copy())

    def matrix(self, n: int) -> np.ndarray:
        """(n, 4) float64 [mid_bps, spread_ticks, volume_log1p, skew_ticks], validated."""
        skew = self.skew_ticks if self.skew_ticks is not None else np.nan
        return np.stack([_column("mid_bps", self.mid_bps, n),
                         _column("spread_ticks", self.spread_ticks, n),
                         _column("volume_log1p", self.volume_log1p, n),
                         _column("skew_ticks", skew, n)], axis=1)


@dataclass(frozen=True)
class Quotes:
    """Per split row, a policy's own quotes: (N, K) prices and base quantities per side
    (NaN price or quantity <= 0: no order at that level)."""

    bid_px: np.ndarray
    bid_qty: np.ndarray
    ask_px: np.ndarray
    ask_qty: np.ndarray

    kind: ClassVar[str] = "quotes"

    def arrays(self, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        out = []
        shape = None
        for name in ("bid_px", "bid_qty", "ask_px", "ask_qty"):
            a = np.asarray(getattr(self, name), dtype=np.float64)
            if a.ndim != 2 or a.shape[0] != n or (shape is not None and a.shape != shape):
                raise InputError("policy quotes have the wrong shape", field=name,
                                 expected=f"({n}, K), the same K for all four arrays", got=a.shape)
            shape = a.shape
            out.append(np.ascontiguousarray(a))
        return tuple(out)  # type: ignore[return-value]


class Policy(ABC):
    """A market-making policy (estimator contract: ``__init__`` stores settings, ``fit`` learns
    from the training split only and returns ``self``, learned state lives in ``*_``
    attributes, :meth:`act` answers for a split)."""

    name: ClassVar[str] = "policy"
    config_class: ClassVar[type[BaseModel] | None] = None

    def __init__(self, config: BaseModel | None = None) -> None:
        if config is None and self.config_class is not None:
            config = self.config_class()
        self.config = config

    @property
    def latency_ns(self) -> int:
        """Inference time per decision, added to the venue's order-entry latency: the config's
        ``latency_ns`` when set, else what ``fit`` measured (``latency_ns_``), else 0."""
        configured = getattr(self.config, "latency_ns", None)
        if configured is not None:
            return int(configured)
        return int(getattr(self, "latency_ns_", 0))

    def fit(self, ds: PreparedDataset) -> Policy:
        return self

    @abstractmethod
    def act(self, ds: PreparedDataset, split: str, plan: DecisionPlan) -> Predictions | Quotes:
        """Answer for every row of ``ds.split_samples(split)``, using only information up to
        each row's ``ts_ns``."""

    def describe(self) -> dict:
        """Settings and learned state, for the metrics JSON."""
        learned = {k: v for k, v in vars(self).items() if k.endswith("_") and not k.startswith("_")}
        config = self.config.model_dump() if self.config is not None else {}
        return {"name": self.name, "latency_ns": self.latency_ns, "config": config,
                "learned": {k: (v.tolist() if isinstance(v, np.ndarray) else v)
                            for k, v in learned.items()}}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(latency_ns={self.latency_ns})"


class PrecomputedPolicy(Policy):
    """Predictions or quotes computed elsewhere in a batch (a learned model), with the model's
    measured inference latency. ``outputs`` maps a split name to its arrays."""

    name = "precomputed"

    def __init__(self, outputs: dict[str, Predictions | Quotes], latency_ns: int,
                 name: str | None = None) -> None:
        super().__init__(None)
        if latency_ns < 0:
            raise InputError("latency must be >= 0", field="latency_ns", got=latency_ns)
        self.outputs = outputs
        self._latency_ns = int(latency_ns)
        if name:
            self.name = name

    @property
    def latency_ns(self) -> int:
        return self._latency_ns

    def act(self, ds: PreparedDataset, split: str, plan: DecisionPlan) -> Predictions | Quotes:
        if split not in self.outputs:
            raise InputError(f"policy '{self.name}' has no outputs for this split", field="split",
                             expected=" or ".join(sorted(self.outputs)), got=split)
        return self.outputs[split]


# ---------------------------------------------------------------- registry

_REGISTRY: dict[str, Callable[..., Policy]] = {}
# The one table of policy names. Per name: the module whose import registers its class
# (imported on first use, so that `cmm backtest` of a rule-based policy never imports torch), its
# name in the report, and ``seeded``: False for a policy whose fit and replay do not use the run's
# seed (a run backtests it once per dataset and pairs it with every seed's learned policies).
# A new policy adds its line here and nowhere else.
POLICIES: dict[str, dict] = {
    "fixed": {"module": "cmm.strategy.baselines", "label": "fixed spread", "seeded": False},
    "as": {"module": "cmm.strategy.baselines", "label": "Avellaneda-Stoikov", "seeded": False},
    "oracle": {"module": "cmm.strategy.baselines", "label": "perfect-forecast ladder",
               "seeded": False},
    "ridge": {"module": "cmm.yardsticks.policy", "label": "ridge (hand features)",
              "seeded": False},
    # LightGBM's own YardstickConfig.seed, not the run's
    "lgbm": {"module": "cmm.yardsticks.policy", "label": "LightGBM (hand features)",
             "seeded": False},
    "teacher": {"module": "cmm.teacher.policy", "label": "teacher LLM"},
    "cmm": {"module": "cmm.moe.policy", "label": "CMM (Hájek-MoE)"},
    "rl": {"module": "cmm.rl.policy"},
    "ppo": {"module": "cmm.rl.policy", "label": "PPO"},
    "dqn": {"module": "cmm.rl.policy", "label": "DQN"},
}


def policy_label(name: str) -> str:
    """A registered policy's name in the report (the name itself when it has none)."""
    return POLICIES.get(name, {}).get("label", name)


def policy_seeded(name: str) -> bool:
    """Whether a registered policy's fit or replay uses the run's seed."""
    return POLICIES.get(name, {}).get("seeded", True)


def register_policy(name: str, module: str | None = None):
    """Class decorator registering a policy under ``name``; with ``module`` and no class,
    declare that importing ``module`` registers ``name`` (lazy)."""
    if module is not None:
        POLICIES[name] = {**POLICIES.get(name, {}), "module": module}
        return None

    def wrap(cls):
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return wrap


def available_policies() -> list[str]:
    return sorted(set(_REGISTRY) | set(POLICIES))


def get_policy(name: str, config: BaseModel | dict | None = None) -> Policy:
    """Build the policy registered as ``name`` with its settings (a model or a dict of fields)."""
    if name not in _REGISTRY and name in POLICIES:
        importlib.import_module(POLICIES[name]["module"])
    if name not in _REGISTRY:
        raise UnknownNameError("policy", name, available_policies())
    cls = _REGISTRY[name]
    if isinstance(config, dict):
        from cmm.config import validate_model

        config = validate_model(cls.config_class, config, prefix=("policies", name))
    return cls(config)
