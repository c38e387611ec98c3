"""RL market makers: the environment (gymnasium's checker, a hand-worked reward), the action map,
seeded training, the safetensors artefact, and the closed-loop ``rl`` policy in the replay.

Training runs use tiny budgets (a few hundred steps); the real budgets are measured by
``cmm rl train`` (see the cmm.rl docs)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from cmm.config import (
    BacktestConfig,
    DQNConfig,
    Instrument,
    LadderConfig,
    PPOConfig,
    RLConfig,
    RLEnvConfig,
)
from cmm.errors import InputError
from cmm.rl.actions import ActionMap
from cmm.rl.env import MarketMakingEnv
from cmm.rl.market import Market, SessionBook, market_from_dataset, window_summary

DATASET = "binance-usdm-btcusdt"
MS = 1_000_000
# The capture's splits are 1-8 minutes a session: 60 s episodes (the default is 5 minutes).
BT = BacktestConfig(episode_s=60.0)


def tiny_config(algo: str, seed: int = 0, **kw) -> RLConfig:
    return RLConfig(algo=algo, total_timesteps=256, eval_every=10**9, eval_episodes=1, seed=seed,
                    max_train_seconds=0, latency_repeats=5, latency_warmup=1,
                    net_arch=(16, 16), backtest=BT,
                    ppo=PPOConfig(n_envs=2, n_steps=64, batch_size=64, n_epochs=1, **kw),
                    dqn=DQNConfig(learning_starts=64, buffer_size=1_000, batch_size=32,
                                  target_update_interval=64))


@pytest.fixture(scope="module")
def ds(prepared):
    return prepared(DATASET)


@pytest.fixture(scope="module")
def train_market(ds):
    return market_from_dataset(ds, "train")


# ---------------------------------------------------------------- environment


@pytest.mark.parametrize("kind", ["flat", "factored", "continuous"])
def test_check_env_passes(train_market, kind):
    actions = ActionMap.from_config(RLEnvConfig(), kind, 0.1, train_market.volume_log1p_ref)
    env = MarketMakingEnv(train_market, actions, mode="random")
    check_env(env, skip_render_check=True)
    obs, _ = env.reset(seed=3)
    n_features = 2 * 10 + 8  # the dataset's 10 levels a side: 2L + 8 step features
    assert train_market.obs.shape[1] == 2 * n_features
    assert obs.shape == (2 * n_features + 2,) and obs[-2] == 0.0 and 0.0 < obs[-1] <= 1.0


def test_plan_mode_plays_the_backtests_episodes(ds):
    from cmm.backtest.runner import make_plan

    market = market_from_dataset(ds, "validation")
    actions = ActionMap.from_config(RLEnvConfig(), "flat", 0.1, market.volume_log1p_ref)
    env = MarketMakingEnv(market, actions, backtest=BT, mode="plan")
    plan = make_plan(ds.split_samples("validation"), "validation", 100 * MS, BT)
    assert len(env.episodes) == plan.n_episodes
    for e, ep in enumerate(env.episodes):
        np.testing.assert_array_equal(ep.rows, plan.rows[plan.episode == e])
        assert ep.end_ns == plan.episode_end_ns[e]


def hand_market(taker_fee: float = 0.0005) -> Market:
    """Three steps, 100 ms apart, two book levels a side, tick 0.1, lot 0.1.

    step 0: 99.9 / 100.1 (2.0 each)      step 1: 99.8 / 100.0      step 2: 99.9 / 100.1
    trades in step 1: a seller at 99.8 (0.5), through our 99.9 bid;
    trades in step 2: a buyer at 100.0 (3.0), through the 2.0 queued ahead of our 100.0 ask."""
    ts = np.array([0, 100, 200]) * MS
    bid_px = np.array([[99.9, 99.8], [99.8, 99.7], [99.9, 99.8]])
    ask_px = np.array([[100.1, 100.2], [100.0, 100.1], [100.1, 100.2]])
    sz = np.full((3, 2), 2.0)
    book = SessionBook.from_arrays(ts, bid_px, sz, ask_px, sz,
                                   trade_ts=[50 * MS, 150 * MS], trade_px=[99.8, 100.0],
                                   trade_qty=[0.5, 3.0], trade_side=[-1, 1], tick=0.1)
    inst = Instrument(tick_size=0.1, lot_size=0.1, maker_fee=0.0001, taker_fee=taker_fee)
    return Market(split="train", instrument=inst, dt_ns=100 * MS, sessions={0: book},
                  row_session=np.zeros(3, np.int64), row_step=np.arange(3),
                  row_ts_ns=ts.astype(np.int64), obs=np.zeros((3, 4), np.float32),
                  volume_log1p_ref=math.log1p(1.0))


def test_reward_is_the_pnl_change_minus_the_inventory_penalty():
    """Worked by hand. Ladder: one level a side, no skew, side size 100 quote (1.0 at mid 100),
    limit Q = 1000 quote. Action: half-spread 1 tick, no shift, size x1.

    Decision 0 (mid 100.0): bid 99.9 x 1.0, ask 100.1 x 1.0. The 99.8 sell fills the bid:
    q = 1, cash = -99.9, fee = 0.0001 * 99.9. Step 1 mid 99.9: equity = -fee = -0.00999;
    penalty = 1.0 * (q / Q)^2 with Q = 1000 / 99.9.
    Decision 1 (mid 99.9, q = 1): bid 99.8 x 0.9 (scaled by 1 - q/Q), ask 100.0 x 1.0 behind
    2.0; the 3.0 buy at 100.0 fills the ask: q = 0, cash = 0.1, fee += 0.01. The episode ends
    at step 2, flat: PnL = 0.1 - 0.01999 = 0.08001."""
    ladder = LadderConfig(levels=1, inventory_skew_ticks=0.0, min_side_notional=100.0,
                          max_side_notional=100.0, position_limit_notional=1000.0)
    cfg = RLEnvConfig(half_spreads_ticks=(1.0,), shifts_ticks=(0.0,), size_multipliers=(1.0,),
                      inventory_penalty=1.0, reward_scale=2.0)
    market = hand_market()
    actions = ActionMap.from_config(cfg, "flat", 0.1, market.volume_log1p_ref)
    env = MarketMakingEnv(market, actions, cfg, ladder, BacktestConfig(episode_s=0.2))
    obs, info = env.reset(seed=0)  # the only whole episode starts at row 0
    assert info["episode_rows"] == 2 and obs[-1] == pytest.approx(1.0)

    obs, r0, done, trunc, i0 = env.step(0)
    fee0 = 0.0001 * 99.9
    pen0 = (1.0 * 99.9 / 1000.0) ** 2
    assert not done and not trunc
    assert i0["position"] == pytest.approx(1.0) and i0["fills"] == 1
    assert i0["pnl_change"] == pytest.approx(-fee0, abs=1e-12)
    assert i0["penalty"] == pytest.approx(pen0, abs=1e-12)
    assert r0 == pytest.approx(2.0 * (-fee0 - pen0), abs=1e-12)
    assert obs[-2] == pytest.approx(99.9 / 1000.0) and obs[-1] == pytest.approx(0.5)

    obs, r1, done, _, i1 = env.step(0)
    final = 0.1 - fee0 - 0.0001 * 100.0
    assert done and i1["position"] == pytest.approx(0.0, abs=1e-12) and i1["fills"] == 2
    assert i1["pnl"] == pytest.approx(final, abs=1e-12)
    assert i1["pnl_change"] == pytest.approx(final + fee0, abs=1e-12)
    assert i1["penalty"] == 0.0
    assert r1 == pytest.approx(2.0 * (final + fee0), abs=1e-12)
    # without the penalty the rewards add up to the episode's PnL
    assert (r0 + r1) / 2.0 + pen0 == pytest.approx(final, abs=1e-12)


def test_open_position_is_closed_at_the_touch_with_the_taker_fee():
    """Same market, but the episode ends at step 1 while long 1.0: closed at the 99.8 bid."""
    ladder = LadderConfig(levels=1, inventory_skew_ticks=0.0, min_side_notional=100.0,
                          max_side_notional=100.0, position_limit_notional=1000.0)
    cfg = RLEnvConfig(half_spreads_ticks=(1.0,), shifts_ticks=(0.0,), size_multipliers=(1.0,),
                      inventory_penalty=0.0)
    market = hand_market()
    env = MarketMakingEnv(market, ActionMap.from_config(cfg, "flat", 0.1, math.log1p(1.0)), cfg,
                          ladder, BacktestConfig(episode_s=0.1))
    env.reset(seed=0, options={"start_row": 0})
    _, r, done, _, info = env.step(0)
    expected = -99.9 + 99.8 - 0.0001 * 99.9 - 0.0005 * 99.8
    assert done and info["close_fee"] == pytest.approx(0.0005 * 99.8)
    assert info["pnl"] == pytest.approx(expected, abs=1e-12) and r == pytest.approx(expected)


def test_episode_longer_than_the_split_is_explained():
    cfg = RLEnvConfig()
    amap = ActionMap.from_config(cfg, "flat", 0.1, 1.0)
    with pytest.raises(InputError, match="shorter than one episode"):
        MarketMakingEnv(hand_market(), amap, cfg, LadderConfig(), BacktestConfig(episode_s=60.0))
    env = MarketMakingEnv(hand_market(), amap, cfg, LadderConfig(), BacktestConfig(episode_s=0.2))
    with pytest.raises(InputError, match="no whole episode starts at this row"):
        env.reset(options={"start_row": 1})


# ---------------------------------------------------------------- actions


def test_action_map_grid_and_ranges():
    cfg = RLEnvConfig(half_spreads_ticks=(1.0, 3.0), shifts_ticks=(-1.0, 0.0, 2.0),
                      size_multipliers=(0.5, 2.0))
    flat = ActionMap.from_config(cfg, "flat", 0.5, math.log1p(10.0))
    assert flat.space().n == 12
    i = np.ravel_multi_index((1, 2, 0), flat.grid_shape)
    sig = flat.signals(np.array([i]), np.array([100.0]))[0]
    assert sig[0] == pytest.approx(1e4 * 2.0 * 0.5 / 100.0)  # shift 2 ticks of 0.5 at mid 100
    assert sig[1] == 6.0 and sig[2] == pytest.approx(math.log1p(5.0)) and math.isnan(sig[3])
    assert flat.signal(i, 100.0)[:3] == pytest.approx(tuple(sig[:3]))
    fac = ActionMap.from_config(cfg, "factored", 0.5, math.log1p(10.0))
    np.testing.assert_allclose(fac.signals(np.array([[1, 2, 0]]), np.array([100.0]))[:, :3],
                               sig[None, :3])
    box = ActionMap.from_config(RLEnvConfig(), "continuous", 0.1, 0.0)
    np.testing.assert_allclose(box.params(np.array([[-1, -1, -1], [1, 1, 1], [5, 0, -5]])),
                               [[1.0, -3.0, 0.25], [8.0, 3.0, 4.0], [8.0, 0.0, 0.25]])
    with pytest.raises(InputError, match="unknown action kind"):
        ActionMap.from_config(cfg, "multi", 0.1, 0.0)


def test_window_summary_is_last_step_and_mean():
    w = np.arange(2 * 3 * 2, dtype=np.float32).reshape(2, 3, 2)
    np.testing.assert_allclose(window_summary(w), [[4, 5, 2, 3], [10, 11, 8, 9]])
    with pytest.raises(InputError, match=r"expected \(N, W, F\)"):
        window_summary(w[0])


# ---------------------------------------------------------------- training and artefact


@pytest.fixture(scope="module")
def tiny_agents(ds, tmp_path_factory):
    from cmm.rl.agent import load_agent
    from cmm.rl.train import train_agent

    out = {}
    for algo in ("ppo", "dqn"):
        folder = tmp_path_factory.mktemp(f"rl-{algo}")
        res = train_agent(ds, tiny_config(algo), folder / "a")
        out[algo] = (res, load_agent(res.folder))
    return out


def _probe_obs(ds, agent, n=64):
    s = window_summary(ds.windows("validation")[:n])
    return agent.observe(s, np.linspace(-1, 1, n), np.linspace(0, 1, n))


@pytest.mark.parametrize("algo", ["ppo", "dqn"])
def test_same_seed_same_policy_other_seed_differs(ds, tiny_agents, tmp_path, algo):
    from cmm.rl.agent import load_agent
    from cmm.rl.train import train_agent

    _, first = tiny_agents[algo]
    again = load_agent(train_agent(ds, tiny_config(algo), tmp_path / "again").folder)
    other = load_agent(train_agent(ds, tiny_config(algo, seed=1), tmp_path / "other").folder)
    obs = _probe_obs(ds, first)
    np.testing.assert_array_equal(first.predict(obs), again.predict(obs))
    for k, v in first.policy.state_dict().items():
        assert np.array_equal(v.numpy(), again.policy.state_dict()[k].numpy()), k
    assert any(not np.array_equal(v.numpy(), other.policy.state_dict()[k].numpy())
               for k, v in first.policy.state_dict().items())


@pytest.mark.parametrize("algo", ["ppo", "dqn"])
def test_artefact_is_safetensors_and_json_and_acts_like_sb3(ds, tiny_agents, algo):
    import json

    res, agent = tiny_agents[algo]
    files = sorted(p.name for p in res.folder.iterdir())
    assert files == ["agent.json", "policy.safetensors", "sim_gap.json"]
    meta = json.loads((res.folder / "agent.json").read_text())
    assert meta["schema_version"] == 1 and meta["algo"] == algo
    assert meta["data"]["cache_key"] == ds.cache_key
    assert meta["training"]["timesteps"] >= 256 and meta["latency"]["p50_us"] > 0
    assert [c["timesteps"] for c in meta["selection"]["checks"]][0] == 0
    obs = _probe_obs(ds, agent)
    sb3, _ = agent.policy.predict(obs, deterministic=True)
    np.testing.assert_array_equal(agent.predict(obs), sb3)


def test_continuous_ppo_acts_like_sb3(ds, tmp_path):
    from cmm.rl.agent import load_agent
    from cmm.rl.train import train_agent

    cfg = tiny_config("ppo", action_space="continuous")
    agent = load_agent(train_agent(ds, cfg, tmp_path / "c").folder)
    obs = _probe_obs(ds, agent)
    sb3, _ = agent.policy.predict(obs, deterministic=True)
    np.testing.assert_allclose(agent.predict(obs), sb3, rtol=0, atol=1e-6)
    assert agent.predict(obs).shape == (len(obs), 3)


def test_missing_or_stale_artefact_is_explained(ds, tiny_agents, tmp_path):
    import json
    import shutil

    from cmm.rl.agent import load_agent
    from cmm.rl.policy import RLPolicy

    with pytest.raises(InputError, match="run `cmm rl train` first"):
        load_agent(tmp_path / "nothing")
    res, _ = tiny_agents["ppo"]
    stale = tmp_path / "stale"
    shutil.copytree(res.folder, stale)
    meta = json.loads((stale / "agent.json").read_text())
    meta["data"]["cache_key"] = "0000"
    (stale / "agent.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="agent trained on data 0000"):
        RLPolicy(RLPolicy.config_class(artefact=str(stale))).fit(ds)
    meta["schema_version"] = 99
    (stale / "agent.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="another schema version"):
        load_agent(stale)


# ---------------------------------------------------------------- the rl policy in the replay


def test_closed_loop_policy_acts_on_the_inventory_the_replay_saw(ds, tiny_agents):
    """At the fixed point, every decision the replay acted on is the agent's answer to the
    inventory the replay had at that moment (one test episode, to keep it quick)."""
    from cmm.backtest.runner import make_plan, run_backtest
    from cmm.rl.policy import inventory_limit
    from cmm.strategy.policy import DecisionPlan, PrecomputedPolicy, get_policy

    res, agent = tiny_agents["dqn"]
    pol = get_policy("dqn", {"artefact": str(res.folder)}).fit(ds)
    assert pol.name == "dqn" and pol.latency_ns == round(agent.meta["latency"]["p50_us"] * 1e3)
    samples = ds.split_samples("test")
    full = make_plan(samples, "test", 100 * MS, BT)
    m = full.episode == 0
    plan = DecisionPlan("test", full.n_rows, full.rows[m], full.ts_ns[m], full.session[m],
                        full.episode[m], full.episode_session[:1], full.episode_start_ns[:1],
                        full.episode_end_ns[:1])
    out = pol.act(ds, "test", plan)
    stats = pol.describe()["learned"]["closed_loop"]["test"]
    assert stats["converged"] and stats["passes"] >= 1 and stats["changed_share"] == 0.0

    replayed = PrecomputedPolicy({"test": out}, pol.latency_ns)
    rec = run_backtest(ds, replayed, "test", ladder=agent.config.ladder,
                       config=agent.config.backtest, plan=plan).records
    rows = rec["row"].to_numpy()
    np.testing.assert_array_equal(rows, plan.rows)
    acted = rec["acted"].to_numpy() == 1
    assert acted.sum() > 100
    mid = samples["mid"].to_numpy()[rows]
    frac = rec["position"].to_numpy() / inventory_limit(agent, ds.spec.instrument, mid)
    assert np.abs(frac).max() > 0  # the inventory did move
    left = (plan.episode_end_ns[0] - plan.ts_ns) / 60e9
    obs = agent.observe(window_summary(ds.windows("test"))[rows], frac, left)
    want = agent.actions.signals(agent.predict(obs), mid)
    used = out.matrix(plan.n_rows)[rows]
    np.testing.assert_allclose(used[acted, :3], want[acted, :3])


def test_open_loop_policy_sees_a_flat_inventory(ds, tiny_agents):
    import cmm.rl.policy  # noqa: F401  registers rl, ppo, dqn (the CLI declares them lazily)
    from cmm.backtest.runner import make_plan
    from cmm.strategy.policy import get_policy

    res, _ = tiny_agents["ppo"]
    pol = get_policy("ppo", {"artefact": str(res.folder), "closed_loop": False,
                             "latency_ns": 123}).fit(ds)
    plan = make_plan(ds.split_samples("validation"), "validation", 100 * MS, BT)
    out = pol.act(ds, "validation", plan)
    assert pol.latency_ns == 123
    assert np.isfinite(out.spread_ticks[plan.rows]).all()
    assert pol.describe()["learned"]["closed_loop"]["validation"]["passes"] == 0


def test_unfitted_policy_is_explained(ds):
    import cmm.rl.policy  # noqa: F401
    from cmm.backtest.runner import make_plan
    from cmm.strategy.policy import get_policy

    plan = make_plan(ds.split_samples("test"), "test", 100 * MS, BT)
    with pytest.raises(InputError, match="not fitted"):
        get_policy("rl").act(ds, "test", plan)


# ---------------------------------------------------------------- CLI


def test_cli_registers_the_rl_policies_and_rejects_unknown_algorithms():
    from typer.testing import CliRunner

    from cmm.cli import app
    from cmm.strategy.policy import available_policies

    assert {"rl", "ppo", "dqn"} <= set(available_policies())
    r = CliRunner().invoke(app, ["rl", "train", "--algo", "a2c"])
    assert r.exit_code != 0 and "expected ppo or dqn" in str(r.exception)


# ---------------------------------------------------------------- slow: against the replay


@pytest.mark.slow
def test_environment_fills_track_the_replay(ds):
    """The fixed baseline's quotes played in the environment and in hftbacktest on the test
    split: the fill model's simplifications keep fills and EPnL close."""
    from cmm.backtest.metrics import summarize
    from cmm.backtest.runner import run_backtest
    from cmm.rl.agent import evaluate_in_env
    from cmm.strategy.policy import get_policy

    market = market_from_dataset(ds, "test")
    actions = ActionMap.from_config(RLEnvConfig(), "flat", 0.1, market.volume_log1p_ref)
    env = MarketMakingEnv(market, actions, backtest=BT, mode="plan")
    fixed_action = np.ravel_multi_index((0, 2, 1), actions.grid_shape)  # h=1, c=0, m=1
    sim = evaluate_in_env(env, lambda o: np.array([fixed_action]))
    real = summarize(run_backtest(ds, get_policy("fixed").fit(ds), "test", config=BT))
    assert abs(sim["fills"] - real["fills"]) <= 0.25 * real["fills"]
    assert abs(sim["EPnL"] - real["EPnL"]) <= 0.3 * abs(real["EPnL"])
