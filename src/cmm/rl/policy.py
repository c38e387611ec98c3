"""The ``rl`` policy for ``cmm backtest`` (and its aliases ``ppo`` and ``dqn``): a trained agent
quoting through the ladder in the hftbacktest replay, charged with its own measured latency.

The backtest asks a policy for all its outputs before the replay, but the agent's observation
holds its inventory, which only the replay knows. :meth:`RLPolicy.act` therefore solves for the
closed-loop outputs by fixed-point iteration over replays: start with a flat inventory at every
decision, replay, read the inventory the replay saw at each decision, let the agent decide again
with it, and repeat until no decision that the replay acted on changes. Each replay is
deterministic and a decision only depends on the inventory *before* it, so the first changed
decision moves strictly later at every pass: the iteration ends, and at its end the replay is
exactly the agent acting on its real inventory. ``max_passes`` caps it; if the cap is reached
the last replayed outputs are used and the share of decisions the agent would have changed is
reported (``describe()['closed_loop']``).

The replays inside use the ladder and backtest settings the agent was trained with (stored in
its artefact); run ``cmm backtest`` with the same settings (the defaults match) so that the
final replay is the one the iteration solved.

Importing this module registers the policies; ``cmm.cli.rl`` declares them lazily.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from cmm.config import RLPolicyConfig
from cmm.errors import InputError
from cmm.rl import AGENT_FILE
from cmm.rl.agent import Agent, default_artefact, load_agent
from cmm.rl.market import window_summary
from cmm.strategy.policy import (
    DecisionPlan,
    Policy,
    PrecomputedPolicy,
    Predictions,
    register_policy,
)

if TYPE_CHECKING:
    from cmm.data.prepare import PreparedDataset

__all__ = ["RLPolicy", "PPOPolicy", "DQNPolicy", "inventory_limit"]


def inventory_limit(agent: Agent, instrument, mid: np.ndarray) -> np.ndarray:
    """The ladder's position limit ``Q`` in base units (contracts if inverse) at ``mid``."""
    limit = agent.config.ladder.sizing(instrument).position_limit_notional
    mid = np.asarray(mid, np.float64)
    if instrument.inverse:
        return np.full(mid.shape, limit / instrument.contract_size)
    with np.errstate(divide="ignore"):
        return limit / (instrument.contract_size * mid)


@register_policy("rl")
class RLPolicy(Policy):
    config_class = RLPolicyConfig
    fixed_algo: str | None = None

    def __init__(self, config: RLPolicyConfig | None = None) -> None:
        super().__init__(config)
        if self.fixed_algo is not None:
            self.config = self.config.model_copy(update={"algo": self.fixed_algo})

    def fit(self, ds: PreparedDataset) -> RLPolicy:
        """Load the trained agent (training is ``cmm rl train``; nothing is fitted here)."""
        cfg = self.config
        folder = Path(cfg.artefact) if cfg.artefact else default_artefact(ds.name, cfg.algo)
        agent = load_agent(folder)
        key = agent.meta.get("data", {}).get("cache_key")
        if key != ds.cache_key:
            raise InputError(f"agent trained on data {key}, not on this preparation of "
                             f"{ds.name} ({ds.cache_key}); run `cmm rl train` again",
                             file=folder / AGENT_FILE, field="data.cache_key",
                             expected=ds.cache_key, got=key)
        self.agent_ = agent
        self.artefact_ = str(folder)
        self.algo_ = agent.algo
        self.latency_ns_ = (int(cfg.latency_ns) if cfg.latency_ns is not None
                            else int(round(agent.meta["latency"]["p50_us"] * 1e3)))
        self.closed_loop_: dict[str, dict] = {}
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "agent_"):
            raise InputError(f"policy '{self.name}' is not fitted; call fit(ds) on the dataset first")

    def act(self, ds: PreparedDataset, split: str, plan: DecisionPlan) -> Predictions:
        self._check_fitted()
        agent = self.agent_
        samples = ds.split_samples(split)
        if len(samples) != plan.n_rows:
            raise InputError("samples and decision rows differ", field="split",
                             expected=f"{plan.n_rows} rows", got=len(samples))
        summary = window_summary(ds.windows(split))[plan.rows]
        mid_all = samples["mid"].to_numpy()
        mid = mid_all[plan.rows]
        limit = inventory_limit(agent, ds.spec.instrument, mid)
        episode_s = float(plan.episode_end_ns[0] - plan.episode_start_ns[0]) / 1e9
        left = (plan.episode_end_ns[plan.episode] - plan.ts_ns) / 1e9 / episode_s

        def decide(q: np.ndarray) -> np.ndarray:  # q at the decision rows, base units
            with np.errstate(invalid="ignore", divide="ignore"):
                frac = np.where(limit > 0, q / limit, 0.0)
            return agent.predict(agent.observe(summary, frac, left))

        def outputs(actions: np.ndarray) -> Predictions:
            sig = np.full((plan.n_rows, 4), np.nan)
            sig[plan.rows] = agent.actions.signals(actions, mid)
            return Predictions(sig[:, 0], sig[:, 1], sig[:, 2], sig[:, 3])

        q = np.zeros(plan.n_decisions)
        actions = decide(q)
        stats = {"enabled": self.config.closed_loop, "passes": 0, "converged": False,
                 "changed_share": None}
        if self.config.closed_loop:
            actions, stats = self._fixed_point(ds, split, plan, actions, decide, outputs)
        self.closed_loop_[split] = stats
        return outputs(actions)

    def _fixed_point(self, ds, split, plan, actions, decide, outputs):
        from cmm.backtest.runner import run_backtest

        cfg = self.agent_.config
        pos_of_row = np.full(plan.n_rows, -1, np.int64)
        pos_of_row[plan.rows] = np.arange(plan.n_decisions)
        stats = {"enabled": True, "passes": 0, "converged": False, "changed_share": None}
        for k in range(self.config.max_passes):
            inner = PrecomputedPolicy({split: outputs(actions)}, self.latency_ns, name=self.name)
            res = run_backtest(ds, inner, split, ladder=cfg.ladder, config=cfg.backtest, plan=plan)
            rec = res.records
            at = pos_of_row[rec["row"].to_numpy()]
            q = np.zeros(plan.n_decisions)
            q[at] = rec["position"].to_numpy()
            acted = np.zeros(plan.n_decisions, bool)
            acted[at] = rec["acted"].to_numpy() == 1
            new = decide(q)
            same = np.all(new.reshape(len(new), -1) == actions.reshape(len(actions), -1), axis=1)
            changed = int((acted & ~same).sum())
            stats = {"enabled": True, "passes": k + 1, "converged": changed == 0,
                     "changed_share": changed / max(int(acted.sum()), 1)}
            if changed == 0 or k + 1 == self.config.max_passes:
                break  # converged, or out of passes: keep the outputs last replayed
            actions = new
        return actions, stats

    def describe(self) -> dict:
        out = super().describe()
        out["learned"] = {"artefact": getattr(self, "artefact_", None),
                          "algo": getattr(self, "algo_", None),
                          "closed_loop": getattr(self, "closed_loop_", {})}
        if hasattr(self, "agent_"):
            m = self.agent_.meta
            out["learned"]["latency"] = m.get("latency")
            out["learned"]["training"] = m.get("training")
            out["learned"]["selection_best"] = m.get("selection", {}).get("best")
        return out


@register_policy("ppo")
class PPOPolicy(RLPolicy):
    """``rl`` with ``algo: ppo`` (default artefact ``runs/<dataset>/rl/ppo``)."""

    fixed_algo = "ppo"


@register_policy("dqn")
class DQNPolicy(RLPolicy):
    """``rl`` with ``algo: dqn`` (default artefact ``runs/<dataset>/rl/dqn``)."""

    fixed_algo = "dqn"
