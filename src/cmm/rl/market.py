"""What the RL environment replays: one split of a prepared dataset as plain arrays.

A :class:`Market` holds, per session, every grid step's top-``L`` book (price ticks and sizes)
and mid, and the session's trades (local time, price tick, quantity, aggressor side) indexed by
step; and, per decision row of the split (a row of ``ds.split_samples(split)``), its session,
step, time, mid and observation summary. Everything is known at or before the row's time, as
in the backtest: a step's book is the local view of events stamped up to that step.

:func:`market_from_dataset` builds it from a :class:`~cmm.data.prepare.PreparedDataset`; tests
build one by hand with :class:`Market` and :class:`SessionBook` directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from cmm.config import Instrument
from cmm.data.events import BUY_EVENT, EVENT_TYPE_MASK, LOCAL_EVENT, TRADE_EVENT
from cmm.errors import InputError

if TYPE_CHECKING:
    from cmm.data.prepare import PreparedDataset

__all__ = ["SessionBook", "Market", "market_from_dataset", "window_summary"]


@dataclass(frozen=True)
class SessionBook:
    """One session on the grid. Step ``u`` covers ``(ts_ns[u-1], ts_ns[u]]``; its trades are
    ``trade_*[trade_lo[u]:trade_hi[u]]`` in time order. ``trade_side`` +1: buyer-initiated
    (hits asks), -1: seller-initiated (hits bids). Empty book levels have tick 0 and size 0."""

    ts_ns: np.ndarray  # (n,) int64, regular grid
    bid_tick: np.ndarray  # (n, L) int64, best first
    bid_sz: np.ndarray  # (n, L) float64
    ask_tick: np.ndarray  # (n, L) int64
    ask_sz: np.ndarray  # (n, L) float64
    mid: np.ndarray  # (n,) float64
    trade_tick: np.ndarray  # (T,) int64
    trade_qty: np.ndarray  # (T,) float64
    trade_side: np.ndarray  # (T,) int64
    trade_lo: np.ndarray  # (n,) int64
    trade_hi: np.ndarray  # (n,) int64

    @property
    def n_steps(self) -> int:
        return len(self.ts_ns)

    @staticmethod
    def from_arrays(ts_ns, bid_px, bid_sz, ask_px, ask_sz, trade_ts, trade_px, trade_qty,
                    trade_side, tick: float) -> SessionBook:
        """From prices (NaN = empty level) and trades with local times; trades are assigned to
        the step whose interval ``(ts[u-1], ts[u]]`` holds them (those at or before ``ts[0]``
        belong to no step)."""
        ts_ns = np.asarray(ts_ns, np.int64)
        bid_px, ask_px = np.atleast_2d(bid_px), np.atleast_2d(ask_px)
        bid_tick = np.where(np.isnan(bid_px), 0, np.round(np.nan_to_num(bid_px) / tick)).astype(np.int64)
        ask_tick = np.where(np.isnan(ask_px), 0, np.round(np.nan_to_num(ask_px) / tick)).astype(np.int64)
        bid_sz = np.where(bid_tick > 0, np.nan_to_num(np.atleast_2d(bid_sz)), 0.0).astype(np.float64)
        ask_sz = np.where(ask_tick > 0, np.nan_to_num(np.atleast_2d(ask_sz)), 0.0).astype(np.float64)
        mid = 0.5 * (bid_tick[:, 0] + ask_tick[:, 0]) * tick
        trade_ts = np.asarray(trade_ts, np.int64)
        order = np.argsort(trade_ts, kind="stable")
        trade_ts = trade_ts[order]
        hi = np.searchsorted(trade_ts, ts_ns, side="right").astype(np.int64)
        lo = np.empty_like(hi)
        lo[0] = hi[0]
        lo[1:] = hi[:-1]
        c = np.ascontiguousarray  # one array layout: the kernels compile (and cache) once
        return SessionBook(ts_ns=c(ts_ns), bid_tick=c(bid_tick), bid_sz=c(bid_sz),
                           ask_tick=c(ask_tick), ask_sz=c(ask_sz), mid=c(mid),
                           trade_tick=c(np.round(np.asarray(trade_px, np.float64)[order]
                                                 / tick).astype(np.int64)),
                           trade_qty=c(np.asarray(trade_qty, np.float64)[order]),
                           trade_side=c(np.asarray(trade_side, np.int64)[order]),
                           trade_lo=c(lo), trade_hi=c(hi))


@dataclass(frozen=True)
class Market:
    """One split: the sessions' books and the decision rows (in ``split_samples`` order)."""

    split: str
    instrument: Instrument
    dt_ns: int
    sessions: dict[int, SessionBook]
    row_session: np.ndarray  # (N,) int64
    row_step: np.ndarray  # (N,) int64, index into the session's steps
    row_ts_ns: np.ndarray  # (N,) int64
    obs: np.ndarray  # (N, D) float32 observation summary (without inventory and time)
    volume_log1p_ref: float  # the training volume signal at size multiplier 1

    @property
    def n_rows(self) -> int:
        return len(self.row_ts_ns)

    def step_at(self, session: int, ts_ns: int) -> int:
        """Index of the session's step at time ``ts_ns`` (which must lie on its grid)."""
        book = self.sessions[session]
        u = int((ts_ns - int(book.ts_ns[0])) // self.dt_ns)
        if not 0 <= u < book.n_steps or int(book.ts_ns[u]) != ts_ns:
            raise InputError("time is not a step of the session", field="ts_ns",
                             expected=f"a multiple of {self.dt_ns} ns from {int(book.ts_ns[0])} "
                                      f"within {book.n_steps} steps", got=ts_ns)
        return u


def window_summary(windows: np.ndarray) -> np.ndarray:
    """(N, W, F) scaled windows -> (N, 2F) float32: the last step's features, then the mean of
    each feature over the window. The compact observation that keeps training fast."""
    if getattr(windows, "ndim", None) != 3:
        raise InputError("windows have the wrong shape", expected="(N, W, F)",
                         got=getattr(windows, "shape", None))
    out = np.empty((len(windows), 2 * windows.shape[2]), np.float32)
    for start in range(0, len(windows), 4096):  # in blocks: a view of a full day stays a view
        block = np.asarray(windows[start:start + 4096], np.float32)
        out[start:start + len(block)] = np.concatenate([block[:, -1, :], block.mean(axis=1)],
                                                       axis=1)
    return out


def _session_book(ds: PreparedDataset, sid: int, tick: float) -> SessionBook:
    import polars as pl

    L = ds.config.grid.levels
    st = ds.steps.filter(pl.col("session") == sid).sort("step")
    bid_px = st.select([f"bid_px_{i}" for i in range(L)]).to_numpy()
    bid_sz = st.select([f"bid_sz_{i}" for i in range(L)]).to_numpy()
    ask_px = st.select([f"ask_px_{i}" for i in range(L)]).to_numpy()
    ask_sz = st.select([f"ask_sz_{i}" for i in range(L)]).to_numpy()
    ev = ds.events(sid)
    m = ((ev["ev"] & LOCAL_EVENT) != 0) & ((ev["ev"] & EVENT_TYPE_MASK) == TRADE_EVENT)
    tr = ev[m]
    side = np.where((tr["ev"] & BUY_EVENT) != 0, 1, -1)  # the aggressor's side
    return SessionBook.from_arrays(st["ts_ns"].to_numpy(), bid_px, bid_sz, ask_px, ask_sz,
                                   tr["local_ts"], tr["px"], tr["qty"], side, tick)


def market_from_dataset(ds: PreparedDataset, split: str, volume_quantile: float = 0.5) -> Market:
    """The split's decision rows with their observation summaries, and the books and trades of
    the sessions they belong to. The size reference is a quantile of the *training* volume
    target (as the fixed baseline's)."""
    samples = ds.split_samples(split)
    if len(samples) == 0:
        raise InputError("the split has no samples", field="split", got=split)
    tick = ds.spec.instrument.tick_size
    sess = samples["session"].to_numpy().astype(np.int64)
    books = {int(s): _session_book(ds, int(s), tick) for s in np.unique(sess)}
    y_train = ds.split_samples("train")["y_volume"].to_numpy()
    return Market(split=split, instrument=ds.spec.instrument,
                  dt_ns=ds.config.grid.dt_ms * 1_000_000, sessions=books, row_session=sess,
                  row_step=samples["step"].to_numpy().astype(np.int64),
                  row_ts_ns=samples["ts_ns"].to_numpy().astype(np.int64),
                  obs=window_summary(ds.windows(split)),
                  volume_log1p_ref=float(np.quantile(y_train, volume_quantile)))
