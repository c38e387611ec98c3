"""RL market-making baselines (method.md, "Baselines"): PPO and DQN from stable-baselines3,
trained on the training split, selected on validation, backtested like every other policy.

Stage: ``cmm rl train --algo ppo|dqn --dataset D`` reads the prepared dataset and writes
``runs/<D>/rl/<algo>/{agent.json, policy.safetensors}``; ``cmm backtest --policy ppo,dqn``
reads that. Modules, in the order data flows:

- :mod:`cmm.rl.market`: one split as arrays: per-step top-``L`` books and trades, and per
  decision the observation summary (the window's last step and its mean; ``2F`` values);
- :mod:`cmm.rl.actions`: (half-spread, centre shift, size multiplier) -> the ladder's inputs;
- :mod:`cmm.rl.sim`: the numba fill simulation (hftbacktest's queue and fill rules, per grid
  step; its simplifications are listed there);
- :mod:`cmm.rl.env`: the gymnasium environment; reward = change of the marked-to-market PnL
  minus ``inventory_penalty * (q/Q)^2``;
- :mod:`cmm.rl.agent`: the saved agent (safetensors artefact, load, batch-1 latency);
- :mod:`cmm.rl.policy`: the ``rl`` / ``ppo`` / ``dqn`` policies, solved closed-loop in the
  hftbacktest replay by fixed-point iteration over replays (the agent sees the inventory the
  replay produced, exactly, once the iteration converges);
- :mod:`cmm.rl.train`: training with validation selection, then the simulator-vs-hftbacktest
  check of the saved agent (through the policy).

Budget: defaults are 400k environment steps for PPO (4 envs) and 200k for DQN, with a hard stop
at 540 s of training (``max_train_seconds``), so one run stays under 10 minutes on this 2-core
machine even when it is shared with other jobs. On a quiet machine PPO learns at ~1,200 and DQN
at ~500 environment steps per second (one torch thread).
"""

# The files of a trained agent's folder and of its training run; writers and readers use these.
AGENT_FILE = "agent.json"
POLICY_FILE = "policy.safetensors"
SIM_GAP_FILE = "sim_gap.json"
