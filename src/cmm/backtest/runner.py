"""Backtest a policy on a prepared dataset: plan the decisions and episodes, ask the policy for its
outputs in one batch, replay each session's events through hftbacktest, collect the results.

Episodes (method.md, "Backtest and metrics"): per session, the split's decision points are cut
into consecutive episodes of ``episode_s`` seconds from the session's first decision; only whole
episodes are kept (default 5 minutes). Each starts flat, holds at most the ladder's position
limit, and ends with its position closed by walking the visible book, with the taker fee (see
:mod:`cmm.backtest.engine` for how the close is done). Fees are those of the instrument's tier
``config.fee_tier``; every episode row has ``gross_pnl`` (before fees) and ``pnl`` (net).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import polars as pl

from cmm.backtest import engine as E
from cmm.config import MAX_FEE, BacktestConfig, FeeTier, Instrument, LadderConfig
from cmm.errors import CmmError, InputError
from cmm.strategy.ladder import ladder_params, trapezoid_weights
from cmm.strategy.policy import DecisionPlan, Policy, Predictions, Quotes

if TYPE_CHECKING:
    from cmm.data.prepare import PreparedDataset

__all__ = ["make_plan", "split_too_short", "replay", "Replay", "run_backtest", "BacktestResult"]


def split_too_short(ts_ns: np.ndarray, session: np.ndarray, episode_s: float) -> InputError:
    """The error of a split that holds no whole episode, naming its longest session (sessions
    lie apart in time, so the split's overall span would say nothing); the backtest's plan and
    the RL environment both raise it."""
    span = max(float(np.ptp(ts_ns[session == s])) for s in np.unique(session)) / 1e9
    return InputError("the split is shorter than one episode", field="backtest.episode_s",
                      expected=f"<= {span:.1f} s (the longest session of the split; "
                               "per_dataset sets a dataset's own)", got=episode_s)


def make_plan(samples: pl.DataFrame, split: str, dt_ns: int, config: BacktestConfig) -> DecisionPlan:
    """Decisions and episodes for the rows of one split (``samples`` = ``ds.split_samples``)."""
    if len(samples) == 0:
        raise InputError("the split has no samples to backtest on", field="split", got=split)
    ts_all = samples["ts_ns"].to_numpy().astype(np.int64)
    sess_all = samples["session"].to_numpy().astype(np.int64)
    ep_len = int(round(config.episode_s * 1e9))
    rows, ep_ids, ep_sess, ep_start, ep_end = [], [], [], [], []
    for sid in dict.fromkeys(sess_all.tolist()):  # sessions in order of appearance
        idx = np.flatnonzero(sess_all == sid)
        idx = idx[np.argsort(ts_all[idx], kind="stable")][:: config.decision_every]
        ts = ts_all[idx]
        t_first = int(ts[0])
        n_ep = int((int(ts[-1]) + dt_ns - t_first) // ep_len)
        k = (ts - t_first) // ep_len
        for e in range(n_ep):
            m = k == e
            if not m.any():
                continue
            rows.append(idx[m])
            ep_ids.append(np.full(int(m.sum()), len(ep_start), np.int64))
            ep_sess.append(sid)
            ep_start.append(t_first + e * ep_len)
            ep_end.append(t_first + (e + 1) * ep_len)
    if not ep_start:
        raise split_too_short(ts_all, sess_all, config.episode_s)
    r = np.concatenate(rows)
    return DecisionPlan(split=split, n_rows=len(samples), rows=r, ts_ns=ts_all[r],
                        session=sess_all[r], episode=np.concatenate(ep_ids),
                        episode_session=np.asarray(ep_sess, np.int64),
                        episode_start_ns=np.asarray(ep_start, np.int64),
                        episode_end_ns=np.asarray(ep_end, np.int64))


def _take(output: Predictions | Quotes, rows: np.ndarray, n_rows: int):
    """The policy's arrays at the decision rows, in the kernel's layout."""
    if isinstance(output, Predictions):
        sig = np.ascontiguousarray(output.matrix(n_rows)[rows])
        empty = np.zeros((len(rows), 1))
        return 0, sig, empty, empty, empty, empty
    if isinstance(output, Quotes):
        bp, bq, ap, aq = (np.ascontiguousarray(a[rows]) for a in output.arrays(n_rows))
        return 1, np.zeros((len(rows), 4)), bp, bq, ap, aq
    raise InputError("a policy must return Predictions or Quotes", got=type(output).__name__)


_TIME_COLUMNS = {"ts_ns", "exch_ts_ns", "local_ts_ns", "start_ns", "end_ns", "close_ns",
                 "submit_ns", "exch_ns"}
_INT_COLUMNS = {"fills", "acted", "episode", "side", "order_id", "decisions", "complete",
                "first_status"}


def _frame(a: np.ndarray, columns: list[str], t0: int) -> pl.DataFrame:
    """A kernel output matrix as a table: times back to exact int64 ns (the kernel keeps them
    relative to ``t0``, exact in float64), counters and ids as int64 (-1 where unset)."""
    data = {}
    for i, c in enumerate(columns):
        col = a[:, i]
        if c in _TIME_COLUMNS:
            data[c] = np.where(np.isnan(col), -1, np.nan_to_num(col).astype(np.int64) + t0)
        elif c in _INT_COLUMNS:
            data[c] = np.nan_to_num(col, nan=-1).astype(np.int64)
        else:
            data[c] = col
    return pl.DataFrame(data, schema={c: (pl.Int64 if c in _TIME_COLUMNS | _INT_COLUMNS
                                          else pl.Float64) for c in columns})


def check_unit_fees(events: np.ndarray, instrument: Instrument, fees: FeeTier) -> None:
    """A per-unit fee (basis ``quantity``) within 1 % of one unit's value at the session's
    median price, as a value fee is within 1 % of the value: $5 a share on a $500 share is a
    typo for $0.005."""
    if fees.basis != "quantity" or len(events) == 0:
        return
    px = events["px"]
    px = px[np.isfinite(px) & (px > 0)]
    if len(px) == 0:
        return
    mid = float(np.median(px))
    cs = instrument.contract_size
    unit = cs / mid if instrument.inverse else cs * mid
    for k in ("maker_fee", "taker_fee"):
        fee = getattr(fees, k)
        if abs(fee) > MAX_FEE * unit:
            raise InputError("a per-unit fee above 1 % of one unit's value at the session's "
                             "median price", field=f"instrument.fee_tiers.{k}",
                             expected=f"|fee| <= {MAX_FEE * unit:.6g} (1 % of {unit:.6g})",
                             got=fee)


@dataclass
class Replay:
    """Outputs of one replayed session (column meanings: :mod:`cmm.backtest.engine`); times in
    ns on the local clock unless named ``exch``. ``episode`` numbers are this replay's own."""

    records: pl.DataFrame  # one row per decision
    fills: pl.DataFrame  # one row per observed fill
    episodes: pl.DataFrame  # one row per episode
    orders: pl.DataFrame  # one row per order sent (order_id = row + 1)
    status: int
    wall_s: float


def replay(events: np.ndarray, instrument: Instrument, ts_ns: np.ndarray, episode: np.ndarray,
           episode_end_ns: np.ndarray, output: Predictions | Quotes, *, latency_ns: int = 0,
           ladder: LadderConfig | None = None, config: BacktestConfig | None = None,
           rows: np.ndarray | None = None, n_rows: int | None = None) -> Replay:
    """Replay one session's ``events`` acting at ``ts_ns`` (increasing, local clock).

    ``episode`` (N,) numbers the decisions' episodes 0..E-1 (non-decreasing) and
    ``episode_end_ns`` (E,) their ends. ``output`` is the policy's answer for ``n_rows`` rows, of
    which ``rows`` (default: all, in order) are the decisions.
    """
    ladder = ladder or LadderConfig()
    config = config or BacktestConfig()
    ts_ns = np.ascontiguousarray(ts_ns, np.int64)
    episode = np.ascontiguousarray(episode, np.int64)
    episode_end_ns = np.ascontiguousarray(episode_end_ns, np.int64)
    n = len(ts_ns)
    if n == 0:
        raise InputError("nothing to replay: no decision points")
    if np.any(np.diff(ts_ns) <= 0) or np.any(np.diff(episode) < 0):
        raise InputError("decision times must increase and episodes must not go back",
                         field="ts_ns")
    if len(episode_end_ns) != int(episode.max()) + 1 or episode.min() < 0:
        raise InputError("episode ids must be 0..E-1 with one end time each", field="episode",
                         expected=f"{len(episode_end_ns)} episodes",
                         got=f"ids {episode.min()}..{episode.max()}")
    if latency_ns < 0:
        raise InputError("policy latency must be >= 0", field="latency_ns", got=latency_ns)
    rows = np.arange(n) if rows is None else np.asarray(rows)
    mode, sig, bp, bq, ap, aq = _take(output, rows, n if n_rows is None else n_rows)
    fees = instrument.fees(config.fee_tier)  # an unknown tier: InputError listing the tiers
    check_unit_fees(events, instrument, fees)

    p = ladder_params(ladder, instrument)
    weights = trapezoid_weights(ladder.levels, ladder.ramp_up_levels, ladder.ramp_down_levels)
    K = ladder.levels if mode == 0 else bp.shape[1]
    first_ts = int(events["local_ts"].min())
    t0 = min(first_ts, int(ts_ns[0]))
    n_ep = len(episode_end_ns)
    rec = np.full((n, E.REC_SIZE), np.nan)
    eps = np.zeros((n_ep, E.EP_SIZE))
    ords = np.full((n * 2 * K + 2, E.ORD_SIZE), np.nan)
    fills = np.zeros((max(4 * len(ords), 1024), E.FILL_SIZE))
    poll_ns = max(1_000_000, config.venue_entry_latency_ns + latency_ns
                  + config.venue_response_latency_ns)
    events = np.ascontiguousarray(events)
    E.ensure_compiled()
    hbt = E.build_backtest(events, instrument, config, latency_ns)
    start = time.perf_counter()
    try:
        nf, n_orders, status = E.replay_kernel(
            hbt, t0, ts_ns, episode, episode_end_ns, mode, sig, bp, bq, ap, aq, p, weights,
            np.int64(latency_ns), config.skip_while_busy, config.size_tolerance,
            np.int64(poll_ns), float(fees.maker_fee), float(fees.taker_fee),
            fees.basis == "quantity", np.int64(config.close_walk_ticks), rec, fills, eps, ords)
    finally:
        hbt.close()
    wall = time.perf_counter() - start
    if nf > len(fills):
        raise CmmError(f"internal: fill buffer too small ({nf} > {len(fills)})")
    if status == E.STATUS_ORDER_CAPACITY:
        raise CmmError("internal: order buffer too small")
    if status == 14 and config.exchange == "partial_fill":
        raise CmmError(
            "hftbacktest stopped with InvalidOrderStatus (14): its partial-fill exchange leaves an "
            "order whose last partial fill exactly used up its quantity in the book and fails on the "
            "next trade at that price (nkaz001/hftbacktest#312, in 2.4.4); use "
            "backtest.exchange: no_partial_fill")
    if status not in (E.STATUS_OK, E.STATUS_END_OF_DATA):
        raise CmmError(f"hftbacktest stopped with error code {status} at decision "
                       f"{int(np.isnan(rec[:, E.REC_TS]).argmax())} of {n}")
    return Replay(records=_frame(rec, E.REC_COLUMNS, t0),
                  fills=_frame(fills[:nf], E.FILL_COLUMNS, t0),
                  episodes=_frame(eps, E.EP_COLUMNS, t0),
                  orders=_frame(ords[1:n_orders], E.ORD_COLUMNS, t0).with_columns(
                      pl.Series("order_id", np.arange(1, n_orders, dtype=np.int64))),
                  status=int(status), wall_s=wall)


@dataclass
class BacktestResult:
    """Per-decision records, fills, orders and per-episode outcomes of one policy on one split.

    ``episodes`` has one row per episode: session, start/end/close times (ns), ``pnl`` (net:
    fees of the tier :attr:`fee_tier` and the closing trade included, in ``currency``),
    ``gross_pnl`` (the same before every fee: ``pnl = gross_pnl - maker_fee - close_fee``),
    ``close_px`` (the close's average price), ``close_qty``, ``close_value``, ``close_fee``,
    ``close_unfilled_qty`` (what the visible book could not absorb), ``close_levels``,
    ``maker_fee``, ``fills``, ``volume``, ``value``, ``decisions``. ``records`` has one row per
    decision (position and equity are the episode's own, equity marked at the mid, net of the
    maker fees so far).
    """

    dataset: str
    policy: str
    split: str
    instrument: Instrument
    episodes: pl.DataFrame
    records: pl.DataFrame
    fills: pl.DataFrame
    orders: pl.DataFrame
    settings: dict = field(default_factory=dict)
    wall_s: float = 0.0
    warnings: list[str] = field(default_factory=list)  # e.g. a policy that never quoted

    @property
    def currency(self) -> str:
        return "base" if self.instrument.inverse else "quote"

    @property
    def fee_tier(self) -> str:
        """The fee tier the replay charged (``settings["backtest"]["fee_tier"]``)."""
        return (self.settings.get("backtest") or {}).get("fee_tier", "base")


def run_backtest(ds: PreparedDataset, policy: Policy, split: str = "test", *,
                 ladder: LadderConfig | None = None, config: BacktestConfig | None = None,
                 plan: DecisionPlan | None = None) -> BacktestResult:
    """Backtest an already fitted ``policy`` on ``split`` of ``ds``."""
    ladder = ladder or LadderConfig()
    config = config or BacktestConfig()
    ds.spec.instrument.fees(config.fee_tier)  # an unknown tier fails before the policy runs
    samples = ds.split_samples(split)
    plan = plan or make_plan(samples, split, ds.config.grid.dt_ms * 1_000_000, config)
    output = policy.act(ds, split, plan)
    inst = ds.spec.instrument
    recs, fills, eps, ords = [], [], [], []
    wall = 0.0
    for sid in dict.fromkeys(plan.episode_session.tolist()):
        ep_ids = np.flatnonzero(plan.episode_session == sid)
        m = np.isin(plan.episode, ep_ids)
        local_ep = plan.episode[m] - ep_ids[0]
        r = replay(ds.events(sid), inst, plan.ts_ns[m], local_ep, plan.episode_end_ns[ep_ids],
                   output, latency_ns=policy.latency_ns, ladder=ladder, config=config,
                   rows=plan.rows[m], n_rows=plan.n_rows)
        wall += r.wall_s
        shift = pl.col("episode") + int(ep_ids[0])  # this replay's episodes -> the plan's
        recs.append(r.records.with_columns(shift, pl.lit(sid, dtype=pl.Int64).alias("session"),
                                           pl.Series("row", plan.rows[m])))
        fills.append(r.fills.with_columns(shift, pl.lit(sid, dtype=pl.Int64).alias("session")))
        eps.append(r.episodes.with_columns(pl.Series("episode", ep_ids),
                                           pl.lit(sid, dtype=pl.Int64).alias("session")))
        ords.append(r.orders.with_columns(shift, pl.lit(sid, dtype=pl.Int64).alias("session")))
    settings = {"ladder": ladder.model_dump(), "backtest": config.model_dump(),
                "policy": policy.describe(), "dataset_key": getattr(ds, "cache_key", None),
                "split": split}
    result = BacktestResult(dataset=ds.name, policy=policy.name, split=split, instrument=inst,
                            episodes=pl.concat(eps), records=pl.concat(recs),
                            fills=pl.concat(fills), orders=pl.concat(ords), settings=settings,
                            wall_s=wall)
    result.warnings = sizing_warnings(result, ladder, isinstance(output, Quotes))
    return result


def sizing_warnings(result: BacktestResult, ladder: LadderConfig, own_quotes: bool) -> list[str]:
    """A line for a policy that never quoted, or quoted and never filled, naming what sized it:
    on a market whose sizes do not fit the ladder's bounds (2,000 of quote currency is 3 GOOG
    shares) every rule-based policy is silent, and an all-zero row would look like a result."""
    what = f"{result.policy} on {result.dataset} ({result.split})"
    if own_quotes:
        sized_by = "the policy's own quote sizes"
    else:
        sz = ladder.sizing(result.instrument)
        own = [k for k in ("min_side_notional", "max_side_notional")
               if getattr(ladder, k) is not None]
        source = ("ladder: in the run configuration" if own
                  else "the instrument's sizing in the dataset spec")
        sized_by = (f"ladder.participation ({ladder.participation}) x predicted volume, clipped to "
                    f"ladder.min_side_notional..max_side_notional = {sz.min_side_notional:g}.."
                    f"{sz.max_side_notional:g} ({source}), in lots of "
                    f"{result.instrument.lot_size:g}")
    if len(result.orders) == 0:
        return [f"{what} never quoted: every side rounded to 0 lots; sizes come from {sized_by}"]
    if len(result.fills) == 0:
        return [f"{what} quoted {len(result.orders)} orders but never filled; sizes come from "
                f"{sized_by}, prices from ladder.min_half_spread_ticks and the predicted spread"]
    return []
