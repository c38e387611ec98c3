"""The gap between the RL training simulator (cmm.rl.sim) and hftbacktest, measured on the same
validation episodes after training (``sim_gap.json`` beside the agent), and the simulator
charging the replay's fee tier (per-unit fees included)."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
from test_rl import BT, DATASET, hand_market, tiny_config

from cmm.config import BacktestConfig, FeeTier, LadderConfig, RLEnvConfig
from cmm.rl.actions import ActionMap
from cmm.rl.env import MarketMakingEnv


@pytest.fixture(scope="module")
def ds(prepared):
    return prepared(DATASET)


def test_training_writes_the_sim_gap_on_validation(ds, tmp_path):
    from cmm.rl.train import SIM_GAP_FILE, train_agent
    from cmm.rl.env import plan_episodes
    from cmm.rl.market import market_from_dataset

    cfg = tiny_config("dqn").model_copy(update={"eval_episodes": 0})  # select on every episode
    res = train_agent(ds, cfg, tmp_path / "dqn")
    path = res.folder / SIM_GAP_FILE
    assert path.is_file()
    gap = json.loads(path.read_text())
    assert gap == json.loads(json.dumps(res.sim_gap))  # the file is what train_agent returned
    n = len(plan_episodes(market_from_dataset(ds, "validation"), BT))
    assert gap["split"] == "validation" and gap["episodes"] == n > 0
    for k in ("sim_pnl_mean", "hbt_pnl_mean", "sim_fills_mean", "hbt_fills_mean"):
        assert math.isfinite(gap[k]), k
    per = gap["per_episode"]
    assert len(per["sim_pnl"]) == len(per["hbt_pnl"]) == len(per["session"]) == n
    assert gap["sim_pnl_mean"] == pytest.approx(np.mean(per["sim_pnl"]))
    assert gap["hbt_pnl_mean"] == pytest.approx(np.mean(per["hbt_pnl"]))
    p = gap["paired"]
    assert p["n"] == n and all(math.isfinite(p[k]) for k in ("mean", "low", "high", "se"))
    assert p["mean"] == pytest.approx(gap["sim_pnl_mean"] - gap["hbt_pnl_mean"])
    assert p["low"] <= p["mean"] <= p["high"]
    assert gap["hbt"]["closed_loop"]["passes"] >= 1 and gap["reading"]
    # the simulator side is the validation check that selected the agent
    best = res.meta["selection"]["best"]
    assert best["EPnL"] == pytest.approx(gap["sim_pnl_mean"])


def test_simulator_charges_the_replays_fee_tier_per_unit():
    """The close test of test_rl (long 1.0 bought at 99.9, closed at the 99.8 bid) with a
    per-share tier: a 0.002 rebate a unit on the maker fill, 0.003 a unit on the close."""
    base = hand_market()
    tier = FeeTier(basis="quantity", maker_fee=-0.002, taker_fee=0.003, source="test")
    inst = base.instrument.model_copy(update={"fee_tiers": {"mm": tier}})
    market = dataclasses.replace(base, instrument=inst)
    ladder = LadderConfig(levels=1, inventory_skew_ticks=0.0, min_side_notional=100.0,
                          max_side_notional=100.0, position_limit_notional=1000.0)
    cfg = RLEnvConfig(half_spreads_ticks=(1.0,), shifts_ticks=(0.0,), size_multipliers=(1.0,),
                      inventory_penalty=0.0)
    amap = ActionMap.from_config(cfg, "flat", 0.1, math.log1p(1.0))
    for fee_tier, maker, taker in (("mm", -0.002 * 1.0, 0.003 * 1.0),
                                   ("base", 0.0001 * 99.9, 0.0005 * 99.8)):
        env = MarketMakingEnv(market, amap, cfg, ladder,
                              BacktestConfig(episode_s=0.1, fee_tier=fee_tier))
        env.reset(seed=0, options={"start_row": 0})
        _, _, done, _, info = env.step(0)
        assert done and info["close_fee"] == pytest.approx(taker, abs=1e-12)
        assert info["pnl"] == pytest.approx(-99.9 + 99.8 - maker - taker, abs=1e-12)
