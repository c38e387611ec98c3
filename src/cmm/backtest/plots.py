"""One picture per episode: mid with our best quotes and fills, inventory, equity."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from cmm.backtest.runner import BacktestResult


def draw_quotes(ax, rec: pl.DataFrame, fills: pl.DataFrame, t0: int) -> None:
    """Mid, touch, our best bid and ask (step lines) and our fills, seconds since ``t0``."""
    t = (rec["ts_ns"].to_numpy() - t0) / 1e9
    ax.plot(t, rec["mid"].to_numpy(), color="black", lw=1.0, label="mid")
    ax.fill_between(t, rec["best_bid"].to_numpy(), rec["best_ask"].to_numpy(), step="post",
                    color="0.85", label="touch")
    ax.step(t, rec["quote_bid"].to_numpy(), where="post", color="tab:green", lw=0.8,
            label="our best bid")
    ax.step(t, rec["quote_ask"].to_numpy(), where="post", color="tab:red", lw=0.8,
            label="our best ask")
    for side, marker, color, name in ((1, "^", "tab:green", "buy fill"),
                                      (-1, "v", "tab:red", "sell fill")):
        f = fills.filter(pl.col("side") == side)
        if len(f):
            ax.scatter((f["exch_ts_ns"].to_numpy() - t0) / 1e9, f["price"].to_numpy(),
                       marker=marker, color=color, s=18, zorder=5, label=name)


def plot_episode(result: BacktestResult, episode: int, path: str | Path) -> None:
    """Write a PNG of ``episode``: (1) mid, touch, our best bid/ask and fills; (2) inventory;
    (3) equity marked at the mid, ending at the closed PnL."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rec = result.records.filter(pl.col("episode") == episode).sort("ts_ns")
    ep = result.episodes.filter(pl.col("episode") == episode).row(0, named=True)
    fills = result.fills.filter(pl.col("episode") == episode)
    t0 = ep["start_ns"]
    t = (rec["ts_ns"].to_numpy() - t0) / 1e9
    unit = "base" if result.instrument.inverse else "quote"

    fig, axes = plt.subplots(3, 1, figsize=(10, 7.5), sharex=True,
                             gridspec_kw={"height_ratios": [3, 1.2, 1.2]})
    ax = axes[0]
    draw_quotes(ax, rec, fills, t0)
    ax.set_ylabel("price")
    ax.legend(loc="upper left", fontsize=7, ncol=3)
    ax.set_title(f"{result.dataset} | {result.policy} | {result.split} episode {episode} "
                 f"(session {ep['session']}) | PnL {ep['pnl']:.4g} {unit}", fontsize=10)

    axes[1].step(t, rec["position"].to_numpy(), where="post", color="tab:blue", lw=1.0)
    axes[1].axhline(0, color="0.6", lw=0.6)
    axes[1].set_ylabel("inventory")

    eq = rec["equity"].to_numpy()
    close_t = (ep["close_ns"] - t0) / 1e9
    axes[2].plot(np.append(t, close_t), np.append(eq, ep["pnl"]), color="tab:purple", lw=1.0)
    axes[2].scatter([close_t], [ep["pnl"]], color="tab:purple", s=14, zorder=5)
    axes[2].axhline(0, color="0.6", lw=0.6)
    axes[2].set_ylabel(f"equity ({unit})")
    axes[2].set_xlabel("seconds since episode start")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
