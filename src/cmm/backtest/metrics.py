"""The paper's market-making metrics (method.md, "Backtest and metrics").

Per episode ``e``:

- ``pnl``: episode PnL, fees (of the replay's tier) and the closing trade included, in the
  settlement currency (quote for linear instruments, base coin for inverse ones);
- ``gross_pnl``: the same before every fee (``pnl = gross_pnl - fees``);
- ``map``: mean absolute position over the episode's decision points (evenly spaced in time), in
  base units (``|q| * contract_size`` linear, ``|q| * contract_size / mid`` inverse);
- ``fills``: maker fills (each hftbacktest execution, partial ones included; the computed close
  is not a fill);
- ``volume``: traded quantity (instrument units: base or contracts), the close included;
- ``fees``: maker fees (negative for rebates) + the closing taker fee;
- ``close_unfilled_qty``: the part of the close the visible book could not absorb;
- ``max_drawdown``: the largest fall of the episode's equity (marked at the mid at each decision,
  then the closed PnL at the end) from its running maximum, starting from 0.

Across episodes: ``EPnL`` = mean ``pnl``; ``EPnL_gross`` = mean ``gross_pnl``; ``MAP`` = mean
``map``; ``PnLMAP`` = EPnL / MAP; ``RPT`` = total PnL / total fills; ``Sharpe`` = mean / std
(ddof 1) of episode PnL, not annualised; and mean and standard deviation (ddof 1) of every
per-episode column. Every net figure is at the replay's fee tier (``fee_tier``). The formulas
(the ratios, their guard, the drawdown) are :mod:`cmm.metrics`'s, which the report uses too.

Another tier without another replay: fills do not depend on fees (no policy reads them), so
:func:`net_pnl_at` gives each episode's net PnL at another tier of the instrument from the
episodes and fills tables, and :func:`reprice` the whole result at that tier (then
:func:`summarize` it), both equal to a replay charged that tier up to rounding.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from cmm.backtest.runner import BacktestResult
from cmm.config import FeeTier
from cmm.metrics import max_drawdown, pnl_map, rpt, sample_std, sharpe

PER_EPISODE = ["pnl", "gross_pnl", "map", "fills", "volume", "fees", "max_drawdown"]


def _fill_fees(result: BacktestResult, fees: FeeTier) -> np.ndarray:
    """The maker fee of each row of ``result.fills`` at ``fees``, as the replay books it."""
    f = result.fills
    if len(f) == 0:
        return np.zeros(0)
    qty = f["qty"].to_numpy().astype(np.float64)
    if fees.basis == "quantity":
        return fees.maker_fee * qty
    inst = result.instrument
    px = f["price"].to_numpy().astype(np.float64)
    cs = inst.contract_size
    amount = cs * qty / px if inst.inverse else cs * px * qty
    return fees.maker_fee * amount


def net_pnl_at(result: BacktestResult, tier: str) -> np.ndarray:
    """Each episode's net PnL had the replay charged the instrument's fee tier ``tier``, in the
    order of ``result.episodes.sort("episode")`` (the rows of :func:`episode_metrics`):
    ``gross_pnl`` - the tier's maker fee on every fill of the episode - its taker fee on the
    close (on ``close_value``, or per unit on ``|close_qty|``). Unknown tiers raise InputError."""
    fees = result.instrument.fees(tier)
    eps = result.episodes.sort("episode")
    maker, close = _episode_fees(result, eps, fees)
    return eps["gross_pnl"].to_numpy().astype(np.float64) - maker - close


def _episode_fees(result: BacktestResult, eps: pl.DataFrame,
                  fees: FeeTier) -> tuple[np.ndarray, np.ndarray]:
    ids = eps["episode"].to_numpy()
    maker = np.zeros(len(ids))
    if len(result.fills) and len(ids):
        ep = result.fills["episode"].to_numpy()
        at = np.clip(np.searchsorted(ids, ep), 0, len(ids) - 1)  # ids ascending
        known = ids[at] == ep
        np.add.at(maker, at[known], _fill_fees(result, fees)[known])
    basis = (np.abs(eps["close_qty"].to_numpy()) if fees.basis == "quantity"
             else eps["close_value"].to_numpy())
    return maker, fees.taker_fee * basis.astype(np.float64)


def reprice(result: BacktestResult, tier: str) -> BacktestResult:
    """``result`` as if replayed at the fee tier ``tier``: each episode's ``maker_fee``,
    ``close_fee`` and ``pnl``, each decision's ``fee`` and ``equity`` recomputed from the fills
    (their gross figures are the replay's own); ``settings["backtest"]["fee_tier"]`` says so."""
    import dataclasses

    fees = result.instrument.fees(tier)
    eps = result.episodes.sort("episode")
    maker, close = _episode_fees(result, eps, fees)
    gross = eps["gross_pnl"].to_numpy().astype(np.float64)
    eps = eps.with_columns(pl.Series("maker_fee", maker), pl.Series("close_fee", close),
                           pl.Series("pnl", gross - maker - close))
    rec = result.records
    if len(rec):
        # a decision's fee: the maker fees of its episode's fills collected by then
        new_fee = np.zeros(len(rec))
        r_ep, r_ts = rec["episode"].to_numpy(), rec["ts_ns"].to_numpy()
        if len(result.fills):
            f_ep, f_ts = result.fills["episode"].to_numpy(), result.fills["local_ts_ns"].to_numpy()
            f_fee = _fill_fees(result, fees)
            for e in np.unique(r_ep):
                fm = np.flatnonzero(f_ep == e)
                if len(fm) == 0:
                    continue
                order = fm[np.argsort(f_ts[fm], kind="stable")]
                cum = np.concatenate([[0.0], np.cumsum(f_fee[order])])
                rm = np.flatnonzero(r_ep == e)
                new_fee[rm] = cum[np.searchsorted(f_ts[order], r_ts[rm], side="right")]
        old_fee = rec["fee"].to_numpy().astype(np.float64)
        rec = rec.with_columns(pl.Series("fee", new_fee),
                               pl.Series("equity", rec["equity"].to_numpy() + old_fee - new_fee))
    settings = {**result.settings,
                "backtest": {**(result.settings.get("backtest") or {}), "fee_tier": tier}}
    return dataclasses.replace(result, episodes=eps, records=rec, settings=settings)


def episode_metrics(result: BacktestResult) -> pl.DataFrame:
    """One row per episode with the per-episode metrics (see the module docstring)."""
    inst = result.instrument
    cs = inst.contract_size
    rows = []
    for ep in result.episodes.sort("episode").iter_rows(named=True):
        rec = result.records.filter(pl.col("episode") == ep["episode"])
        q = rec["position"].to_numpy()
        if inst.inverse:
            mid = rec["mid"].to_numpy()
            base = np.abs(q) * cs / np.where(np.isnan(mid), np.nan, mid)
            base = base[~np.isnan(base)]
        else:
            base = np.abs(q) * cs
        equity = np.concatenate([rec["equity"].to_numpy(), [ep["pnl"]]])
        fees = ep["maker_fee"] + ep["close_fee"]
        rows.append({
            "episode": ep["episode"], "session": ep["session"], "start_ns": ep["start_ns"],
            "pnl": ep["pnl"], "gross_pnl": ep.get("gross_pnl", ep["pnl"] + fees),
            "map": float(base.mean()) if len(base) else 0.0,
            "fills": ep["fills"], "volume": ep["volume"] + abs(ep["close_qty"]),
            "fees": fees, "max_drawdown": max_drawdown(equity),
            "close_qty": ep["close_qty"], "close_unfilled_qty": ep.get("close_unfilled_qty", 0.0),
            "decisions": ep["decisions"],
        })
    return pl.DataFrame(rows)


def summarize(result: BacktestResult) -> dict:
    """Metrics of a backtest: headline figures and mean/std over episodes."""
    per = episode_metrics(result)
    n = len(per)
    pnl = per["pnl"].to_numpy().astype(np.float64) if n else np.zeros(0)
    map_ = per["map"].to_numpy().astype(np.float64) if n else np.zeros(0)
    fills = per["fills"].to_numpy() if n else np.zeros(0, np.int64)
    epnl = float(pnl.mean()) if n else math.nan
    total_fills = int(fills.sum())
    gross = per["gross_pnl"].to_numpy() if n else np.zeros(0)
    out = {
        "dataset": result.dataset, "policy": result.policy, "split": result.split,
        "currency": result.currency, "fee_tier": result.fee_tier, "episodes": n,
        "EPnL": epnl, "EPnL_std": sample_std(pnl),
        "EPnL_gross": float(gross.mean()) if n else math.nan, "EPnL_gross_std": sample_std(gross),
        "MAP": float(map_.mean()) if n else math.nan, "MAP_std": sample_std(map_),
        "PnLMAP": pnl_map(pnl, map_), "RPT": rpt(pnl, fills),
        "Sharpe": sharpe(pnl), "total_pnl": float(pnl.sum()),
        "total_gross_pnl": float(gross.sum()), "fills": total_fills,
        "per_episode": {},
    }
    for col in PER_EPISODE:
        a = per[col].to_numpy().astype(np.float64)
        out["per_episode"][col] = {"mean": float(a.mean()) if n else math.nan, "std": sample_std(a)}
    out["max_drawdown"] = out["per_episode"]["max_drawdown"]["mean"]
    out["volume"] = float(per["volume"].sum()) if n else 0.0
    out["fees"] = float(per["fees"].sum()) if n else 0.0
    out["close_unfilled_qty"] = float(per["close_unfilled_qty"].abs().sum()) if n else 0.0
    return out
