"""Train an RL agent and check it against hftbacktest.

:func:`train_agent` trains ``config.algo`` (stable-baselines3 PPO or DQN) on the training split's
environment, selects the network on validation EPnL, saves it with :func:`cmm.rl.agent.save_agent`
and, by default, writes ``sim_gap.json`` (:func:`measure_sim_gap`): the saved agent replayed
through the ``rl`` policy in hftbacktest beside the simulator. It lives apart from
:mod:`cmm.rl.agent` because that check goes through :mod:`cmm.rl.policy`, which loads agents.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from cmm.config import RLConfig
from cmm.errors import CmmError, InputError
from cmm.rl import SIM_GAP_FILE
from cmm.rl.actions import ActionMap
from cmm.rl.agent import (SCHEMA_VERSION, Agent, build_envs, default_artefact, evaluate_in_env,
                          greedy_actions, load_agent, measure_latency, policy_kwargs, save_agent)
from cmm.rl.env import MarketMakingEnv
from cmm.rl.market import Market, market_from_dataset

if TYPE_CHECKING:
    from cmm.data.prepare import PreparedDataset

__all__ = ["TrainResult", "train_agent", "measure_sim_gap", "SIM_GAP_FILE"]


# ---------------------------------------------------------------- simulator vs hftbacktest


def measure_sim_gap(ds: PreparedDataset, folder: str | Path, split: str = "validation") -> dict:
    """The trained agent's episode PnL on the same episodes of ``split`` in the training
    simulator (:mod:`cmm.rl.sim`, the ``mode="plan"`` environment) and in the hftbacktest replay
    (the ``rl`` policy as ``cmm backtest`` runs it: closed loop, its measured latency, the
    venue's latencies, the ladder and backtest settings it was trained with).

    ``paired`` is :func:`~cmm.backtest.stats.paired_difference` of ``sim - hbt`` per episode
    (sessions as strata): a positive difference whose interval excludes 0 means the simulator
    is optimistic for this agent. Validation is the default split: it is a training diagnostic
    and nothing in training reads the test split (the agent was selected on these episodes in
    the simulator, so an agent that exploits the simulator's simplifications shows here)."""
    from cmm.backtest.runner import run_backtest
    from cmm.backtest.stats import paired_difference
    from cmm.config import RLPolicyConfig
    from cmm.rl.policy import RLPolicy

    folder = Path(folder)
    agent = load_agent(folder)
    cfg = agent.config
    t0 = time.perf_counter()
    market = market_from_dataset(ds, split, cfg.env.volume_quantile)
    env = MarketMakingEnv(market, agent.actions, cfg.env, cfg.ladder, cfg.backtest, mode="plan")
    sim = evaluate_in_env(env, agent.predict)
    sim_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    pol = RLPolicy(RLPolicyConfig(algo=agent.algo, artefact=str(folder))).fit(ds)
    res = run_backtest(ds, pol, split, ladder=cfg.ladder, config=cfg.backtest)
    hbt_s = time.perf_counter() - t1
    eps = res.episodes.sort("episode")
    sessions = [int(e.session) for e in env.episodes]
    ends = [int(e.end_ns) for e in env.episodes]
    if eps["session"].to_list() != sessions or eps["end_ns"].to_list() != ends:
        raise CmmError("internal: the simulator's and the backtest's episodes differ "
                       f"({len(sessions)} and {len(eps)} episodes of {split})")
    sim_pnl = np.asarray(sim["episode_pnl"], np.float64)
    hbt_pnl = eps["pnl"].to_numpy().astype(np.float64)
    out = {
        "schema_version": SCHEMA_VERSION, "split": split, "episodes": len(sim_pnl),
        "episode_s": cfg.backtest.episode_s,
        "currency": "base" if ds.spec.instrument.inverse else "quote",
        "sim_pnl_mean": float(sim_pnl.mean()), "hbt_pnl_mean": float(hbt_pnl.mean()),
        "sim_pnl_std": float(sim_pnl.std(ddof=1)) if len(sim_pnl) > 1 else None,
        "hbt_pnl_std": float(hbt_pnl.std(ddof=1)) if len(hbt_pnl) > 1 else None,
        "sim_fills_mean": float(np.mean(sim["episode_fills"])),
        "hbt_fills_mean": float(eps["fills"].mean()),
        "difference": "sim - hbt, per episode",
        "paired": None,
        "per_episode": {"session": sessions, "end_ns": ends, "sim_pnl": sim_pnl.tolist(),
                        "hbt_pnl": hbt_pnl.tolist(), "sim_fills": sim["episode_fills"],
                        "hbt_fills": [int(x) for x in eps["fills"].to_list()]},
        "hbt": {"latency_ns": int(pol.latency_ns),
                "venue_entry_latency_ns": int(cfg.backtest.venue_entry_latency_ns),
                "venue_response_latency_ns": int(cfg.backtest.venue_response_latency_ns),
                "closed_loop": pol.describe()["learned"]["closed_loop"].get(split)},
        "wall_s": {"sim": sim_s, "hbt": hbt_s},
    }
    try:
        out["paired"] = paired_difference(sim_pnl, hbt_pnl, np.asarray(sessions)).to_dict()
        out["reading"] = _gap_reading(out["paired"])
    except InputError as e:  # fewer than 2 episodes
        out["paired_error"] = str(e)
        out["reading"] = f"no comparison: {e}"
    return out


def _gap_reading(paired: dict) -> str:
    """The paired verdict of ``sim - hbt`` in the simulator's terms."""
    if paired["verdict"] == "better":
        return "the simulator is optimistic (its EPnL is higher, the interval excludes 0)"
    if paired["verdict"] == "worse":
        return "the simulator is pessimistic (its EPnL is lower, the interval excludes 0)"
    return f"simulator and hftbacktest are {paired['verdict']}"


# ---------------------------------------------------------------- training


@dataclass
class TrainResult:
    folder: Path
    meta: dict
    sim_gap: dict | None = None  # measure_sim_gap's answer, also in <folder>/sim_gap.json


def _make_model(config: RLConfig, train: Market, actions: ActionMap):
    from stable_baselines3 import DQN, PPO
    from stable_baselines3.common.env_util import make_vec_env

    def env_fn():
        return MarketMakingEnv(train, actions, config.env, config.ladder, config.backtest,
                               mode="random")

    kw = {"policy_kwargs": policy_kwargs(config), "seed": config.seed, "verbose": 0,
          "device": "cpu"}
    if config.algo == "ppo":
        c = config.ppo
        venv = make_vec_env(env_fn, n_envs=c.n_envs, seed=config.seed)
        return PPO("MlpPolicy", venv, n_steps=c.n_steps, batch_size=c.batch_size,
                   n_epochs=c.n_epochs, learning_rate=c.learning_rate, gamma=c.gamma,
                   gae_lambda=c.gae_lambda, clip_range=c.clip_range, ent_coef=c.ent_coef,
                   vf_coef=c.vf_coef, max_grad_norm=c.max_grad_norm, **kw)
    c = config.dqn
    venv = make_vec_env(env_fn, n_envs=1, seed=config.seed)
    return DQN("MlpPolicy", venv, learning_rate=c.learning_rate, buffer_size=c.buffer_size,
               learning_starts=c.learning_starts, batch_size=c.batch_size,
               train_freq=c.train_freq, gradient_steps=c.gradient_steps,
               target_update_interval=c.target_update_interval, gamma=c.gamma,
               exploration_fraction=c.exploration_fraction,
               exploration_initial_eps=c.exploration_initial_eps,
               exploration_final_eps=c.exploration_final_eps,
               max_grad_norm=c.max_grad_norm, **kw)


def _selection_callback(config: RLConfig, val_env: MarketMakingEnv, start: float, log):
    from stable_baselines3.common.callbacks import BaseCallback

    class Select(BaseCallback):
        """Validation checks every ``eval_every`` steps; keeps the best network; stops at the
        time limit."""

        def __init__(self):
            super().__init__()
            self.best_state = None
            self.best = -np.inf
            self.checks: list[dict] = []
            self.next_check = config.eval_every
            self.stopped_by_time = False

        def check(self) -> None:
            policy = self.model.policy
            policy.set_training_mode(False)
            res = evaluate_in_env(val_env, lambda o: greedy_actions(policy, val_env.actions, o),
                                  config.eval_episodes)
            entry = {"timesteps": int(self.num_timesteps), "wall_s": time.perf_counter() - start,
                     **{k: res[k] for k in ("EPnL", "EPnL_std", "mean_reward", "fills", "MAP")}}
            self.checks.append(entry)
            if res["EPnL"] > self.best:
                self.best = res["EPnL"]
                self.best_state = copy.deepcopy(policy.state_dict())
                entry["best"] = True
            log(entry)

        def _on_training_start(self) -> None:
            self.check()

        def _on_step(self) -> bool:
            if self.num_timesteps >= self.next_check:
                self.next_check += config.eval_every
                self.check()
            if config.max_train_seconds and time.perf_counter() - start > config.max_train_seconds:
                self.stopped_by_time = True
                return False
            return True

    return Select()


def train_agent(ds: PreparedDataset, config: RLConfig, out: str | Path | None = None,
                log=None, sim_gap: bool = True) -> TrainResult:
    """Train ``config.algo`` on ``ds``'s training split, select on validation, measure the
    decision latency, save to ``out`` (default ``runs/<dataset>/rl/<algo>``); then, with
    ``sim_gap``, replay the saved agent on the validation episodes in both the simulator and
    hftbacktest and write ``sim_gap.json`` beside it (:func:`measure_sim_gap`)."""
    log = log or (lambda entry: None)
    out = Path(out) if out else default_artefact(ds.name, config.algo)
    threads = torch.get_num_threads()
    torch.set_num_threads(config.threads)
    try:
        start = time.perf_counter()
        train, val, actions = build_envs(ds, config)
        val_env = MarketMakingEnv(val, actions, config.env, config.ladder, config.backtest,
                                  mode="plan")
        model = _make_model(config, train, actions)
        cb = _selection_callback(config, val_env, start, log)
        t_learn = time.perf_counter()
        model.learn(total_timesteps=config.timesteps, callback=cb, progress_bar=False)
        learn_s = time.perf_counter() - t_learn
        if not cb.checks or cb.checks[-1]["timesteps"] != model.num_timesteps:
            cb.check()
        if cb.best_state is None:
            raise CmmError("internal: no validation check ran")
        model.policy.load_state_dict(cb.best_state)
        model.policy.set_training_mode(False)
        train_s = time.perf_counter() - start
        best = max(cb.checks, key=lambda c: c["EPnL"])
        obs_dim = int(val_env.observation_space.shape[0])
        agent = Agent(config.algo, model.policy, actions, config)
        latency = measure_latency(agent, ds.windows("validation"), config.latency_repeats,
                                  config.latency_warmup)
    finally:
        torch.set_num_threads(threads)
    meta = {
        "dataset": ds.name, "data": {"cache_key": ds.cache_key},
        "training": {"timesteps": int(model.num_timesteps), "wall_s": train_s,
                     "learn_s": learn_s, "steps_per_s": model.num_timesteps / max(learn_s, 1e-9),
                     "stopped_by_time_limit": cb.stopped_by_time, "threads": config.threads,
                     "train_rows": train.n_rows, "validation_rows": val.n_rows},
        "selection": {"criterion": "validation EPnL in the environment", "best": best,
                      "checks": cb.checks},
        "latency": latency,
    }
    folder = save_agent(out, config.algo, model.policy, actions, config, obs_dim, meta)
    gap = None
    if sim_gap:
        from cmm.io import write_json

        torch.set_num_threads(config.threads)
        try:
            gap = measure_sim_gap(ds, folder, "validation")
        finally:
            torch.set_num_threads(threads)
        write_json(folder / SIM_GAP_FILE, gap)
    return TrainResult(folder, meta, gap)
