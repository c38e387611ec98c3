"""The paper's market-making metrics (method.md, "Backtest and metrics").

Per episode ``e``:

- ``pnl``: episode PnL, fees and the closing trade included, in the settlement currency (quote
  for linear instruments, base coin for inverse ones);
- ``map``: mean absolute position over the episode's decision points (evenly spaced in time), in
  base units (``|q| * contract_size`` linear, ``|q| * contract_size / mid`` inverse);
- ``fills``: maker fills (each hftbacktest execution, partial ones included; the computed close
  is not a fill);
- ``volume``: traded quantity (instrument units: base or contracts), the close included;
- ``fees``: maker fees (negative for rebates) + the closing taker fee;
- ``max_drawdown``: the largest fall of the episode's equity (marked at the mid at each decision,
  then the closed PnL at the end) from its running maximum, starting from 0.

Across episodes: ``EPnL`` = mean ``pnl``; ``MAP`` = mean ``map``; ``PnLMAP`` = EPnL / MAP;
``RPT`` = total PnL / total fills; ``Sharpe`` = mean / std (ddof 1) of episode PnL, not
annualised; and mean and standard deviation (ddof 1) of every per-episode column.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl

from cmm.backtest.runner import BacktestResult

PER_EPISODE = ["pnl", "map", "fills", "volume", "fees", "max_drawdown"]


def max_drawdown(equity: np.ndarray) -> float:
    """Largest peak-to-trough fall of a path that starts at 0 (NaNs skipped)."""
    path = np.concatenate([[0.0], equity[~np.isnan(equity)]])
    return float(np.max(np.maximum.accumulate(path) - path))


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
        rows.append({
            "episode": ep["episode"], "session": ep["session"], "start_ns": ep["start_ns"],
            "pnl": ep["pnl"], "map": float(base.mean()) if len(base) else 0.0,
            "fills": ep["fills"], "volume": ep["volume"] + abs(ep["close_qty"]),
            "fees": ep["maker_fee"] + ep["close_fee"], "max_drawdown": max_drawdown(equity),
            "close_qty": ep["close_qty"], "decisions": ep["decisions"],
        })
    return pl.DataFrame(rows)


def _ratio(a: float, b: float) -> float:
    return a / b if b != 0 and not math.isnan(b) else math.nan


def summarize(result: BacktestResult) -> dict:
    """Metrics of a backtest: headline figures and mean/std over episodes."""
    per = episode_metrics(result)
    pnl = per["pnl"].to_numpy()
    n = len(pnl)
    std = lambda a: float(np.std(a, ddof=1)) if len(a) > 1 else math.nan  # noqa: E731
    epnl = float(pnl.mean()) if n else math.nan
    map_ = float(per["map"].mean()) if n else math.nan
    total_fills = int(per["fills"].sum()) if n else 0
    out = {
        "dataset": result.dataset, "policy": result.policy, "split": result.split,
        "currency": result.currency, "episodes": n,
        "EPnL": epnl, "EPnL_std": std(pnl), "MAP": map_, "MAP_std": std(per["map"].to_numpy()),
        "PnLMAP": _ratio(epnl, map_), "RPT": _ratio(float(pnl.sum()), total_fills),
        "Sharpe": _ratio(epnl, std(pnl)), "total_pnl": float(pnl.sum()), "fills": total_fills,
        "per_episode": {},
    }
    for col in PER_EPISODE:
        a = per[col].to_numpy().astype(np.float64)
        out["per_episode"][col] = {"mean": float(a.mean()) if n else math.nan, "std": std(a)}
    out["max_drawdown"] = out["per_episode"]["max_drawdown"]["mean"]
    out["volume"] = float(per["volume"].sum()) if n else 0.0
    out["fees"] = float(per["fees"].sum()) if n else 0.0
    return out
