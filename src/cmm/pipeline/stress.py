"""Robustness scenarios on the test split: the most volatile episodes, and a synthetic flash crash
injected into every test episode.

The crash is made on the canonical event arrays, so the backtest's hftbacktest depth, the grid,
the features, the targets and the regimes all see the same market:

- from ``t0 = episode start + start_fraction * episode_s``, a price offset falls linearly to
  ``-drop_pct`` percent of the mid over ``fall_s``, holds for ``hold_s`` and comes back to zero
  over ``recover_s``; it changes every ``step_ms`` (default: the grid's step);
- at each change the book is cleared and re-posted *shifted as a whole*: the top
  ``depth_levels`` levels per side of the book the original events give at that moment, every
  price moved by the offset (rounded to the tick), the sizes kept. The original depth updates
  inside the crash are dropped (the book moves in steps of ``step_ms``); trades inside it keep
  their sizes and sides and are shifted by the offset in force. At the end the unshifted book
  is re-posted and the original updates continue;
- the first clear of the bid side reaches ``drop_pct + 1`` percent below the touch, so no
  resting bid of the real book is left where the shifted asks fall (the book stays uncrossed);
  deeper original levels stay where they are, far from the touch.

A resting buy order is filled when the falling asks reach it (hftbacktest's exchange model), as
in a real crash. Everything before ``t0`` of the first crash is unchanged, so training and
validation data, scalers and regime thresholds are the original ones; the crashed dataset is a
prepared-dataset folder (same layout as :mod:`cmm.data.prepare`, written by
:class:`cmm.data.derived.DerivedDataset`) whose ``meta.json`` records the crash settings and the
crash times.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from cmm.config import FlashCrashConfig
from cmm.data.events import (
    BUY_EVENT,
    DEPTH_CLEAR_EVENT,
    DEPTH_EVENT,
    DEPTH_SNAPSHOT_EVENT,
    EVENT_TYPE_MASK,
    EXCH_LOCAL_FLAGS,
    LOCAL_EVENT,
    SELL_EVENT,
    TRADE_EVENT,
    event_dtype,
    finalize_events,
)
from cmm.data.grid import build_snapshots
from cmm.errors import InputError
from cmm.io import stable_hash

__all__ = ["episode_volatility", "most_volatile", "crash_schedule", "inject_flash_crashes",
           "build_crash_dataset", "crash_starts"]

_MARGIN = 0.01  # extra fraction of the price cleared below the bids at the crash's start


# ------------------------------------------------------------------------ volatile episodes


def episode_volatility(ds, plan) -> np.ndarray:
    """(E,) realised volatility of each episode: std of the 1-step mid log-returns over the grid
    steps inside ``[start, end)`` of the episode (0 for an episode with fewer than 3 steps)."""
    out = np.zeros(plan.n_episodes)
    steps = ds.steps.select("session", "ts_ns", "mid")
    by_session = {int(s): (g["ts_ns"].to_numpy(), g["mid"].to_numpy())
                  for (s,), g in steps.group_by(["session"])}
    for e in range(plan.n_episodes):
        ts, mid = by_session[int(plan.episode_session[e])]
        m = (ts >= plan.episode_start_ns[e]) & (ts < plan.episode_end_ns[e])
        if m.sum() >= 3:
            out[e] = float(np.std(np.diff(np.log(mid[m])), ddof=1))
    return out


def most_volatile(volatility: np.ndarray, fraction: float) -> np.ndarray:
    """Indices of the ``ceil(fraction * E)`` most volatile episodes, in episode order."""
    if len(volatility) == 0:
        return np.zeros(0, np.int64)
    k = max(1, int(math.ceil(fraction * len(volatility) - 1e-9)))
    return np.sort(np.argsort(-volatility, kind="stable")[:k]).astype(np.int64)


# ------------------------------------------------------------------------------ flash crash


def crash_schedule(cfg: FlashCrashConfig, step_ns: int) -> tuple[np.ndarray, np.ndarray]:
    """Times (ns after the crash's start) at which the offset changes, and the offset there as a
    fraction of the price (<= 0); the last change returns it to 0."""
    fall, hold, rec = (int(round(s * 1e9)) for s in (cfg.fall_s, cfg.hold_s, cfg.recover_s))
    total = fall + hold + rec
    t = np.arange(0, total, step_ns, dtype=np.int64)
    t = np.append(t, total)
    drop = cfg.drop_pct / 100.0
    frac = np.where(t < fall, t / fall,
                    np.where(t < fall + hold, 1.0, np.clip((total - t) / rec, 0.0, 1.0)))
    frac[-1] = 0.0
    return t, -drop * frac


def check_crash_fits(episode_s: float, cfg: FlashCrashConfig) -> None:
    """Raise when the crash does not fit inside an episode."""
    length = cfg.fall_s + cfg.hold_s + cfg.recover_s
    if cfg.start_fraction * episode_s + length >= episode_s:
        raise InputError("the flash crash does not fit inside an episode",
                         field="robustness.flash_crash",
                         expected=f"start_fraction * episode_s + fall_s + hold_s + recover_s < "
                                  f"episode_s = {episode_s:g} s",
                         got=f"{cfg.start_fraction * episode_s + length:g} s")


def crash_starts(plan, episode_s: float, cfg: FlashCrashConfig) -> dict[int, list[int]]:
    """Per session, the crash start time of each of its episodes. Raises when the crash does not
    fit inside an episode."""
    check_crash_fits(episode_s, cfg)
    out: dict[int, list[int]] = {}
    for e in range(plan.n_episodes):
        t0 = int(plan.episode_start_ns[e] + round(cfg.start_fraction * episode_s * 1e9))
        out.setdefault(int(plan.episode_session[e]), []).append(t0)
    return out


def _raw(events: np.ndarray) -> np.ndarray:
    """The raw events of a finalized array: its local-side copies, flags removed."""
    raw = events[(events["ev"] & np.uint64(LOCAL_EVENT)) != 0].copy()
    raw["ev"] &= ~EXCH_LOCAL_FLAGS
    return raw


def _event(kind: int, side: int, exch_ts: int, local_ts: int, px: float, qty: float
           ) -> tuple:
    return (np.uint64(kind | side), exch_ts, local_ts, px, qty, 0, 0, 0.0)


def inject_flash_crashes(events: np.ndarray, starts_ns: list[int], tick: float,
                         cfg: FlashCrashConfig, step_ns: int, price_band: float = 0.2
                         ) -> tuple[np.ndarray, list[dict]]:
    """A finalized event array with a flash crash starting at each of ``starts_ns`` (local
    clock); returns the new finalized array and, per crash, its times and its touch before."""
    raw = _raw(events)
    local_ts = raw["local_ts"]
    kind = raw["ev"] & np.uint64(EVENT_TYPE_MASK)
    is_depth = (kind == DEPTH_EVENT) | (kind == DEPTH_SNAPSHOT_EVENT) | (kind == DEPTH_CLEAR_EVENT)
    is_trade = kind == TRADE_EVENT
    keep = np.ones(len(raw), bool)
    new_px = raw["px"].copy()
    offsets_t, offsets_f = crash_schedule(cfg, step_ns)
    n_levels = cfg.depth_levels
    inserted: list[tuple] = []
    crashes = []
    lat = raw["local_ts"] - raw["exch_ts"]
    for t0 in sorted(starts_ns):
        taus = t0 + offsets_t
        t_end = int(taus[-1])
        if t0 <= int(local_ts[0]) or t_end >= int(local_ts[-1]):
            raise InputError("a flash crash falls outside its session's events",
                             field="robustness.flash_crash", got=t0)
        before = (local_ts <= t0) & (local_ts > t0 - 5_000_000_000) & is_depth
        feed = int(np.median(lat[before])) if before.any() else 0
        ref = float(np.median(raw["px"][(local_ts <= t0) & (raw["px"] > 0)][-1000:]))
        # The book the original events give at each change (their local view).
        book = build_snapshots(events, int(taus[0]), int(step_ns), len(taus), n_levels, tick,
                               ref * (1 - price_band), ref * (1 + price_band))
        bid_px, bid_sz, ask_px, ask_sz = (book[k] for k in ("bid_px", "bid_sz", "ask_px",
                                                            "ask_sz"))
        if np.isnan(bid_px[0, 0]) or np.isnan(ask_px[0, 0]):
            raise InputError("no book at the start of a flash crash", field="robustness",
                             got=t0)
        inside = (local_ts > t0) & (local_ts <= t_end)
        keep &= ~(inside & is_depth)
        # trades: shifted by the offset in force when they print
        tr = np.flatnonzero(inside & is_trade)
        j = np.searchsorted(taus, local_ts[tr], side="left") - 1
        mid0 = 0.5 * (bid_px[0, 0] + ask_px[0, 0])
        shift_ticks = np.round(offsets_f * mid0 / tick).astype(np.int64)
        new_px[tr] = np.round(raw["px"][tr] / tick + shift_ticks[j]) * tick
        low_bid, high_ask = None, None
        for k, tau in enumerate(taus):
            tau = int(tau)
            ex = tau - feed
            if k == 0:
                floor = (bid_px[0, 0] * (1 - cfg.drop_pct / 100 - _MARGIN))
                clear_bid = math.floor(floor / tick) * tick
                top = ask_px[0][~np.isnan(ask_px[0])]
                clear_ask = float(top.max())
            else:
                clear_bid, clear_ask = low_bid, high_ask
            inserted.append(_event(DEPTH_CLEAR_EVENT, BUY_EVENT, ex, tau, clear_bid, 0.0))
            inserted.append(_event(DEPTH_CLEAR_EVENT, SELL_EVENT, ex, tau, clear_ask, 0.0))
            s = int(shift_ticks[k])
            bids = [(round(p / tick) + s, q) for p, q in zip(bid_px[k], bid_sz[k], strict=True)
                    if not np.isnan(p) and q > 0]
            asks = [(round(p / tick) + s, q) for p, q in zip(ask_px[k], ask_sz[k], strict=True)
                    if not np.isnan(p) and q > 0]
            for t, q in bids:
                inserted.append(_event(DEPTH_EVENT, BUY_EVENT, ex, tau, t * tick, float(q)))
            for t, q in asks:
                inserted.append(_event(DEPTH_EVENT, SELL_EVENT, ex, tau, t * tick, float(q)))
            if bids:
                low_bid = min(t for t, _ in bids) * tick
            if asks:
                high_ask = max(t for t, _ in asks) * tick
            if low_bid is None or high_ask is None:
                raise InputError("an empty book side during a flash crash", got=tau)
        crashes.append({"start_ns": int(t0), "end_ns": t_end, "mid_before": float(mid0),
                        "drop_ticks": int(-shift_ticks.min()), "changes": len(taus),
                        "feed_latency_ns": feed})
    raw = raw.copy()
    raw["px"] = new_px
    extra = np.array(inserted, dtype=event_dtype)
    merged = np.concatenate([raw[keep], extra])
    order = np.argsort(merged["local_ts"], kind="stable")
    return finalize_events(merged[order]), crashes


# -------------------------------------------------------------------------- crashed dataset


def build_crash_dataset(ds, plan, episode_s: float, cfg: FlashCrashConfig,
                        out_dir: str | Path):
    """Write a prepared-dataset folder whose test episodes each hold a flash crash; returns it
    opened as a :class:`~cmm.data.prepare.PreparedDataset`."""
    from cmm.data.derived import DerivedDataset

    dt_ns = ds.config.grid.dt_ms * 1_000_000
    step_ns = (cfg.step_ms * 1_000_000) if cfg.step_ms else dt_ns
    starts = crash_starts(plan, episode_s, cfg)
    crashed = DerivedDataset(ds)
    crashes: list[dict] = []
    for sid, t0s in starts.items():
        ev, info = inject_flash_crashes(ds.events(sid), t0s, ds.spec.instrument.tick_size, cfg,
                                        step_ns, ds.config.grid.book_band)
        for c in info:
            c["session"] = sid
        crashes += info
        if not crashed.replace_session(sid, ev):
            raise InputError("the crashed session's grid does not line up with the original",
                             field="robustness.flash_crash", got=sid)
    settings = {"flash_crash": cfg.model_dump(mode="json"), "episode_s": episode_s,
                "step_ns": step_ns}
    stress = {**settings, "crashes": crashes, "source": str(ds.folder),
              "source_key": ds.cache_key}
    return crashed.write(out_dir, key=f"{ds.cache_key}-crash-{stable_hash(settings, 8)}",
                         extra_meta={"stress": stress})
