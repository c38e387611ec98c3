"""The market-making environment (gymnasium) over one split of a prepared dataset.

One step = one decision point of the split (a sample row, every ``dt`` on the grid): the agent
sees the observation, picks an action (:mod:`cmm.rl.actions`), the trapezoidal ladder turns it
into quotes with the current book and inventory, and :mod:`cmm.rl.sim` fills them against the
trades and book changes up to the next decision.

- **Observation** (float32, ``2F + 2``): the scaled window's last step and window mean
  (:func:`~cmm.rl.market.window_summary`, clipped to ``+-obs_clip``), then the inventory as a
  fraction of the ladder's limit ``q/Q`` and the fraction of the episode left
  ``(end - t) / episode_s``.
- **Reward**: ``reward_scale * (E_{t+1} - E_t - inventory_penalty * (q_{t+1}/Q)^2)``, where ``E``
  is the equity marked at the mid (cash + position value - fees, as the replay's ``equity``),
  ``q_{t+1}`` the position at the end of the step, before any close. On the episode's last step
  ``E_{t+1}`` is the PnL after closing at the touch with the taker fee, so the rewards of an
  episode without penalty add up to its PnL, the backtest's episode PnL.
- **Episodes** (``episode_s`` of the backtest, each starting flat): ``mode="random"``, from a
  random decision of the split (training; ``reset(options={"start_row": r})`` picks one);
  ``mode="plan"``, the backtest's own episodes of the split
  (:func:`cmm.backtest.runner.make_plan`), in order or ``options={"episode": e}``, for
  validation and evaluation.
"""

from __future__ import annotations

from dataclasses import dataclass

import gymnasium as gym
import numpy as np

from cmm.config import BacktestConfig, LadderConfig, RLEnvConfig
from cmm.errors import InputError
from cmm.rl.actions import ActionMap
from cmm.rl.market import Market
from cmm.rl.sim import (
    ACCT_FILLS,
    ACCT_POSITION,
    ACCT_SIZE,
    ACCT_VOLUME,
    QUEUE_MODELS,
    close_pnl,
    equity,
    new_orders,
    step_kernel,
)
from cmm.strategy.ladder import LP_LIMIT, ladder_params, qty_per_notional, trapezoid_weights

__all__ = ["Episode", "MarketMakingEnv", "plan_episodes"]


@dataclass(frozen=True)
class Episode:
    """Decision rows (indices into the market's rows) of one session, and the step at which
    the episode ends and its position is closed."""

    session: int
    rows: np.ndarray
    end_ns: int
    end_step: int


def plan_episodes(market: Market, config: BacktestConfig) -> list[Episode]:
    """The backtest's episodes of the market's split (same cut as ``cmm backtest``)."""
    import polars as pl

    from cmm.backtest.runner import make_plan

    samples = pl.DataFrame({"ts_ns": market.row_ts_ns, "session": market.row_session})
    plan = make_plan(samples, market.split, market.dt_ns, config)
    out = []
    for e in range(plan.n_episodes):
        m = plan.episode == e
        sid = int(plan.episode_session[e])
        end = int(plan.episode_end_ns[e])
        out.append(Episode(sid, plan.rows[m].astype(np.int64), end, market.step_at(sid, end)))
    return out


class MarketMakingEnv(gym.Env):
    """Quote through the ladder on a replayed split; see the module docstring."""

    metadata = {"render_modes": []}

    def __init__(self, market: Market, actions: ActionMap, env: RLEnvConfig | None = None,
                 ladder: LadderConfig | None = None, backtest: BacktestConfig | None = None,
                 mode: str = "random") -> None:
        super().__init__()
        self.market = market
        self.actions = actions
        self.cfg = env or RLEnvConfig()
        self.ladder = ladder or LadderConfig()
        self.backtest = backtest or BacktestConfig()
        if mode not in ("random", "plan"):
            raise InputError("unknown episode mode", field="mode", expected="random or plan",
                             got=mode)
        self.mode = mode
        inst = market.instrument
        self._p = ladder_params(self.ladder, inst)
        self._w = trapezoid_weights(self.ladder.levels, self.ladder.ramp_up_levels,
                                    self.ladder.ramp_down_levels)
        self._queue = QUEUE_MODELS[self.backtest.queue_model]
        # the replay's fee tier (an unknown name: InputError listing the instrument's tiers)
        self._fees = inst.fees(self.backtest.fee_tier)
        self._fee_qty = self._fees.basis == "quantity"
        self._ep_len = int(round(self.backtest.episode_s * 1e9))
        self._obs = np.clip(market.obs, -self.cfg.obs_clip, self.cfg.obs_clip).astype(np.float32)
        self.observation_space = gym.spaces.Box(-self.cfg.obs_clip, self.cfg.obs_clip,
                                                shape=(self._obs.shape[1] + 2,), dtype=np.float32)
        self.action_space = actions.space()
        if mode == "plan":
            self.episodes = plan_episodes(market, self.backtest)
            self._starts = None
        else:
            self.episodes = []
            self._starts, self._ends = self._random_starts()
        self._next_plan = 0
        self._ep: Episode | None = None

    # ------------------------------------------------------------------ episodes

    def _random_starts(self) -> tuple[np.ndarray, np.ndarray]:
        """Rows from which a whole episode fits before the session's last row of the split;
        and, per such row, the end (exclusive) of its episode's rows."""
        m = self.market
        starts, ends = [], []
        for sid in np.unique(m.row_session):
            idx = np.flatnonzero(m.row_session == sid)
            ts = m.row_ts_ns[idx]
            ok = ts + self._ep_len <= ts[-1]
            end = np.searchsorted(ts, ts + self._ep_len, side="left")
            starts.append(idx[ok])
            ends.append(idx[0] + end[ok])
        starts, ends = np.concatenate(starts), np.concatenate(ends)
        if len(starts) == 0:
            from cmm.backtest.runner import split_too_short

            raise split_too_short(m.row_ts_ns, m.row_session, self.backtest.episode_s)
        return starts.astype(np.int64), ends.astype(np.int64)

    def _draw_episode(self, options: dict | None) -> Episode:
        m = self.market
        if self.mode == "plan":
            e = int(options["episode"]) if options and "episode" in options else self._next_plan
            if not 0 <= e < len(self.episodes):
                raise InputError("no such episode", field="episode",
                                 expected=f"0..{len(self.episodes) - 1}", got=e)
            self._next_plan = (e + 1) % len(self.episodes)
            return self.episodes[e]
        if options and "start_row" in options:
            i = int(np.searchsorted(self._starts, int(options["start_row"])))
            if i >= len(self._starts) or self._starts[i] != int(options["start_row"]):
                raise InputError("no whole episode starts at this row", field="start_row",
                                 expected="a row at least one episode before the session's "
                                          "last row of the split", got=options["start_row"])
        else:
            i = int(self.np_random.integers(len(self._starts)))
        r0, r1 = int(self._starts[i]), int(self._ends[i])
        sid = int(m.row_session[r0])
        end = int(m.row_ts_ns[r0]) + self._ep_len
        return Episode(sid, np.arange(r0, r1, dtype=np.int64), end, m.step_at(sid, end))

    # ------------------------------------------------------------------ gym API

    def _limit(self, mid: float) -> float:
        return float(self._p[LP_LIMIT] * qty_per_notional(self._p, mid))  # Q in base units

    def _observe(self, k: int) -> np.ndarray:
        ep = self._ep
        if k < len(ep.rows):
            row = int(ep.rows[k])
            book = self.market.sessions[ep.session]
            mid = float(book.mid[self.market.row_step[row]])
            left = (ep.end_ns - int(self.market.row_ts_ns[row])) / self._ep_len
        else:  # terminal: the last row, flat, no time left
            row, mid, left = int(ep.rows[-1]), 0.0, 0.0
        q = self._acct[ACCT_POSITION] / self._limit(mid) if mid > 0 else 0.0
        extra = np.clip(np.array([q, left], np.float32), -self.cfg.obs_clip, self.cfg.obs_clip)
        return np.concatenate([self._obs[row], extra])

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self._ep = self._draw_episode(options)
        self._k = 0
        self._acct = np.zeros(ACCT_SIZE)
        self._orders = new_orders(self.ladder.levels)
        self._equity = 0.0
        return self._observe(0), {"episode_rows": len(self._ep.rows), "session": self._ep.session}

    def step(self, action):
        if self._ep is None:
            raise InputError("call reset() before step()")
        ep, m, k = self._ep, self.market, self._k
        book = m.sessions[ep.session]
        s = int(m.row_step[ep.rows[k]])
        last = k + 1 >= len(ep.rows)
        s2 = ep.end_step if last else int(m.row_step[ep.rows[k + 1]])
        sig = self.actions.signal(action, float(book.mid[s]))
        inst = m.instrument
        step_kernel(self._p, self._w, sig[0], sig[1], sig[2], sig[3], self._fees.maker_fee,
                    self._fee_qty, self.backtest.size_tolerance, self._queue,
                    self.backtest.queue_power, self._orders, self._acct, s, s2, book.bid_tick,
                    book.bid_sz, book.ask_tick, book.ask_sz, book.trade_tick, book.trade_qty,
                    book.trade_side, book.trade_lo, book.trade_hi)
        mid = float(book.mid[s2])
        q = float(self._acct[ACCT_POSITION])
        penalty = self.cfg.inventory_penalty * (q / self._limit(mid)) ** 2
        close_fee = 0.0
        if last:
            tick = inst.tick_size
            new_equity, close_fee = close_pnl(self._p, self._acct, book.bid_tick[s2, 0] * tick,
                                              book.ask_tick[s2, 0] * tick,
                                              self._fees.taker_fee, self._fee_qty)
        else:
            new_equity = equity(self._p, self._acct, mid)
        pnl_change = new_equity - self._equity
        self._equity = new_equity
        reward = self.cfg.reward_scale * (pnl_change - penalty)
        self._k = k + 1
        if last:
            self._acct[ACCT_POSITION] = 0.0  # closed
        info = {"pnl": new_equity, "pnl_change": pnl_change, "penalty": penalty,
                "position": q, "fills": int(self._acct[ACCT_FILLS]),
                "volume": float(self._acct[ACCT_VOLUME]), "close_fee": close_fee}
        return self._observe(self._k), float(reward), last, False, info
