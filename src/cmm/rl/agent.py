"""Train, select, save and load the RL agents (stable-baselines3 PPO and DQN).

Training (:func:`train_agent`) runs on the training split's environment (random episode starts);
every ``eval_every`` steps, and at the end, the greedy policy plays the validation split's
backtest episodes in the environment and the network with the best mean episode PnL (the EPnL
the backtest reports) is kept. Nothing reads the test split.

The artefact (:func:`save_agent` / :func:`load_agent`) is a folder with

- ``policy.safetensors``: the sb3 policy network's ``state_dict`` (no pickle);
- ``agent.json``: schema version, algorithm, spaces and action map, every setting, the data's
  cache key, the training log (timesteps, wall time, validation checks) and the measured
  batch-1 decision latency;
- ``sim_gap.json`` (:func:`measure_sim_gap`): the saved agent's episode PnL on the validation
  episodes in the training simulator and in the hftbacktest replay, and their paired
  difference (``sim - hbt``), so that what the simulator's simplifications cost is measured.

Loading rebuilds the sb3 policy class from those settings and loads the weights, so inference
needs no sb3 ``.zip`` (whose ``data`` part is pickled).
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from cmm.config import RLConfig
from cmm.errors import CmmError, InputError
from cmm.rl.actions import ActionMap
from cmm.rl.env import MarketMakingEnv
from cmm.rl.market import Market, market_from_dataset, window_summary

if TYPE_CHECKING:
    from cmm.data.prepare import PreparedDataset

__all__ = ["SCHEMA_VERSION", "Agent", "greedy_actions", "TrainResult", "build_envs", "train_agent", "save_agent",
           "load_agent", "evaluate_in_env", "measure_latency", "default_artefact",
           "measure_sim_gap", "SIM_GAP_FILE"]

SCHEMA_VERSION = 1
SIM_GAP_FILE = "sim_gap.json"
_ACTIVATIONS = {"tanh": nn.Tanh, "relu": nn.ReLU}


def default_artefact(dataset: str, algo: str) -> Path:
    return Path("runs") / dataset / "rl" / algo


def action_kind(config: RLConfig) -> str:
    if config.algo == "dqn":
        return "flat"
    return "factored" if config.ppo.action_space == "discrete" else "continuous"


# ---------------------------------------------------------------- the saved agent


@dataclass
class Agent:
    """A trained policy network with everything needed to act: the action map, the observation
    clip and the settings. :meth:`predict` is the greedy (deterministic) action."""

    algo: str
    policy: Any  # sb3 ActorCriticPolicy or DQNPolicy, in eval mode
    actions: ActionMap
    config: RLConfig
    meta: dict = field(default_factory=dict)

    @property
    def obs_clip(self) -> float:
        return self.config.env.obs_clip

    def observe(self, summary: np.ndarray, inventory: np.ndarray,
                time_left: np.ndarray) -> np.ndarray:
        """(N, 2F) window summaries, (N,) ``q/Q`` and (N,) episode fractions left -> (N, 2F+2)
        observations, clipped as the environment clips them."""
        c = self.obs_clip
        extra = np.stack([np.asarray(inventory, np.float32), np.asarray(time_left, np.float32)], 1)
        return np.concatenate([np.clip(summary, -c, c), np.clip(extra, -c, c)],
                              axis=1).astype(np.float32)

    def predict(self, obs: np.ndarray) -> np.ndarray:
        """(N, D) observations -> (N, ...) greedy actions: what sb3's
        ``policy.predict(obs, deterministic=True)`` returns, without its per-call overhead."""
        return greedy_actions(self.policy, self.actions, obs)


def greedy_actions(policy, actions: ActionMap, obs: np.ndarray) -> np.ndarray:
    """Deterministic actions of an sb3 policy straight from its networks: DQN, the argmax of
    the Q-values; PPO, the argmax of each factor's logits (MultiDiscrete) or the mean clipped
    to the box (continuous), as sb3's distributions' ``mode()`` and ``predict`` give them."""
    x = torch.as_tensor(np.asarray(obs, np.float32))
    with torch.no_grad():
        if hasattr(policy, "q_net"):
            return policy.q_net(x).argmax(dim=1).numpy()
        features = policy.extract_features(x, policy.pi_features_extractor)
        out = policy.action_net(policy.mlp_extractor.forward_actor(features))
    if actions.kind == "continuous":
        return np.clip(out.numpy(), -1.0, 1.0)
    if actions.kind == "factored":
        parts = torch.split(out, list(actions.grid_shape), dim=1)
        return torch.stack([p.argmax(dim=1) for p in parts], dim=1).numpy()
    return out.argmax(dim=1).numpy()


def _policy_class(algo: str):
    if algo == "ppo":
        from stable_baselines3.common.policies import ActorCriticPolicy

        return ActorCriticPolicy
    from stable_baselines3.dqn.policies import DQNPolicy

    return DQNPolicy


def _policy_kwargs(config: RLConfig) -> dict:
    return {"net_arch": list(config.net_arch), "activation_fn": _ACTIVATIONS[config.activation]}


def _spaces(obs_dim: int, actions: ActionMap, clip: float):
    from gymnasium import spaces

    return spaces.Box(-clip, clip, shape=(obs_dim,), dtype=np.float32), actions.space()


def save_agent(folder: str | Path, algo: str, policy, actions: ActionMap, config: RLConfig,
               obs_dim: int, meta: dict) -> Path:
    """Write ``policy.safetensors`` and ``agent.json`` atomically into ``folder``."""
    from safetensors.torch import save_file

    from cmm.io import atomic_dir, write_json

    folder = Path(folder)
    state = {k: v.detach().cpu().contiguous() for k, v in policy.state_dict().items()}
    with atomic_dir(folder) as tmp:
        save_file(state, str(tmp / "policy.safetensors"))
        write_json(tmp / "agent.json", {
            "schema_version": SCHEMA_VERSION, "algo": algo, "obs_dim": obs_dim,
            "actions": actions.to_dict(), "config": config.model_dump(mode="json"), **meta})
    return folder


def load_agent(folder: str | Path) -> Agent:
    """Rebuild a saved agent (see the module docstring)."""
    from cmm.io import load_safetensors

    folder = Path(folder)
    path = folder / "agent.json"
    if not path.is_file():
        raise InputError("no trained agent here; run `cmm rl train` first", file=path)
    meta = json.loads(path.read_text())
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise InputError("agent saved with another schema version; train it again", file=path,
                         field="schema_version", expected=str(SCHEMA_VERSION),
                         got=meta.get("schema_version"))
    config = RLConfig.model_validate(meta["config"])
    actions = ActionMap.from_dict(meta["actions"])
    obs_space, act_space = _spaces(int(meta["obs_dim"]), actions, config.env.obs_clip)
    policy = _policy_class(meta["algo"])(obs_space, act_space, lambda _: 0.0,
                                         **_policy_kwargs(config))
    policy.load_state_dict(load_safetensors(folder / "policy.safetensors", "pt"))
    policy.set_training_mode(False)
    return Agent(meta["algo"], policy, actions, config, meta)


# ---------------------------------------------------------------- environments


def build_envs(ds: PreparedDataset, config: RLConfig) -> tuple[Market, Market, ActionMap]:
    """The training and validation markets and the action map (size reference from train)."""
    train = market_from_dataset(ds, "train", config.env.volume_quantile)
    val = market_from_dataset(ds, "validation", config.env.volume_quantile)
    actions = ActionMap.from_config(config.env, action_kind(config), ds.spec.instrument.tick_size,
                                    train.volume_log1p_ref)
    return train, val, actions


def evaluate_in_env(env: MarketMakingEnv, predict, episodes: int = 0) -> dict:
    """Play the episodes of a ``mode="plan"`` environment greedily (the first ``episodes``;
    0: all); ``predict`` maps a (1, D) observation to a (1, ...) action. Episode PnL as the
    backtest reports it."""
    pnls, rewards, fills, abs_pos = [], [], [], []
    n = len(env.episodes) if episodes <= 0 else min(episodes, len(env.episodes))
    for e in range(n):
        obs, _ = env.reset(options={"episode": e})
        done, total, pos = False, 0.0, []
        while not done:
            obs, r, done, _, info = env.step(predict(obs[None])[0])
            total += r
            pos.append(abs(info["position"]))
        pnls.append(info["pnl"])
        rewards.append(total)
        fills.append(info["fills"])
        abs_pos.append(float(np.mean(pos)))
    return {"EPnL": float(np.mean(pnls)), "EPnL_std": float(np.std(pnls)),
            "mean_reward": float(np.mean(rewards)), "fills": int(np.sum(fills)),
            "MAP": float(np.mean(abs_pos)), "episodes": len(pnls),
            "episode_pnl": [float(x) for x in pnls],
            "episode_fills": [int(x) for x in fills]}


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

    kw = {"policy_kwargs": _policy_kwargs(config), "seed": config.seed, "verbose": 0,
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


# ---------------------------------------------------------------- latency


def measure_latency(agent: Agent, windows: np.ndarray, repeats: int = 500,
                    warmup: int = 50) -> dict:
    """Wall time of one decision at batch 1 on one torch thread: window -> summary ->
    observation -> network -> action -> ladder signals. Microseconds (p50, p90, mean)."""
    if len(windows) == 0:
        raise InputError("no windows to time the decisions on", field="windows")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    times = []
    try:
        for i in range(warmup + repeats):
            w = windows[i % len(windows)][None]
            t0 = time.perf_counter_ns()
            obs = agent.observe(window_summary(w), np.zeros(1), np.ones(1))
            act = agent.predict(obs)
            agent.actions.signals(act, np.array([1.0]))
            dt = time.perf_counter_ns() - t0
            if i >= warmup:
                times.append(dt / 1e3)
    finally:
        torch.set_num_threads(threads)
    t = np.asarray(times)
    return {"p50_us": float(np.median(t)), "p90_us": float(np.quantile(t, 0.9)),
            "mean_us": float(t.mean()), "repeats": int(repeats), "threads": 1, "batch": 1}
