"""Train, select, save and load the RL agents (stable-baselines3 PPO and DQN).

Training (:func:`cmm.rl.train.train_agent`) runs on the training split's environment (random episode starts);
every ``eval_every`` steps, and at the end, the greedy policy plays the validation split's
backtest episodes in the environment and the network with the best mean episode PnL (the EPnL
the backtest reports) is kept. Nothing reads the test split.

The artefact (:func:`save_agent` / :func:`load_agent`) is a folder with

- ``policy.safetensors``: the sb3 policy network's ``state_dict`` (no pickle);
- ``agent.json``: schema version, algorithm, spaces and action map, every setting, the data's
  cache key, the training log (timesteps, wall time, validation checks) and the measured
  batch-1 decision latency;
- ``sim_gap.json`` (:func:`cmm.rl.train.measure_sim_gap`): the saved agent's episode PnL on
  the validation episodes in the training simulator and in the hftbacktest replay, and their paired
  difference (``sim - hbt``), so that what the simulator's simplifications cost is measured.

Loading rebuilds the sb3 policy class from those settings and loads the weights, so inference
needs no sb3 ``.zip`` (whose ``data`` part is pickled).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from cmm.config import RLConfig
from cmm.errors import InputError
from cmm.rl import AGENT_FILE, POLICY_FILE
from cmm.rl.actions import ActionMap
from cmm.rl.env import MarketMakingEnv
from cmm.rl.market import Market, market_from_dataset, window_summary

if TYPE_CHECKING:
    from cmm.data.prepare import PreparedDataset

__all__ = ["SCHEMA_VERSION", "Agent", "greedy_actions", "build_envs", "save_agent", "load_agent",
           "evaluate_in_env", "measure_latency", "default_artefact"]

SCHEMA_VERSION = 1
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


def policy_kwargs(config: RLConfig) -> dict:
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
        save_file(state, str(tmp / POLICY_FILE))
        write_json(tmp / AGENT_FILE, {
            "schema_version": SCHEMA_VERSION, "algo": algo, "obs_dim": obs_dim,
            "actions": actions.to_dict(), "config": config.model_dump(mode="json"), **meta})
    return folder


def load_agent(folder: str | Path) -> Agent:
    """Rebuild a saved agent (see the module docstring)."""
    from cmm.io import load_safetensors

    folder = Path(folder)
    path = folder / AGENT_FILE
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
                                         **policy_kwargs(config))
    policy.load_state_dict(load_safetensors(folder / POLICY_FILE, "pt"))
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
