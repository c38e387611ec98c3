"""Summaries and a picture of a prepared dataset."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl
from rich.table import Table

from cmm.io import atomic_path

REGIME_COLOURS = ("#4c9f70", "#e0a030", "#c8423b")  # low, mid, high volatility


def _utc(ns: int) -> str:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def summary(ds) -> dict:
    meta = ds.meta
    steps = ds.steps
    per_session = []
    for s in ds.sessions:
        st = steps.filter(pl.col("session") == s.id)
        per_session.append({
            "session": s.id, "start_utc": _utc(s.start_ns), "end_utc": _utc(s.end_ns),
            "minutes": round((s.end_ns - s.start_ns) / 6e10, 2), "steps": s.n_steps,
            "files": [Path(f).name for f in s.files],
            "mid_first": float(st["mid"][0]), "mid_last": float(st["mid"][-1]),
            "spread_ticks_mean": float(st["spread_ticks"].mean()),
            "traded_base_volume": float((st["buy_vol"] + st["sell_vol"]).sum()),
            "trades": int(st["trade_count"].sum()),
        })
    gaps = sum(r["gap_count"] for r in meta["reports"])
    return {
        "name": ds.name, "folder": str(ds.folder), "key": ds.cache_key,
        "instrument": ds.spec.instrument.model_dump(), "grid": meta["config"]["grid"],
        "features": meta["config"]["features"], "sessions": per_session,
        "split_counts": meta["split_counts"], "regime_thresholds": meta["regime_thresholds"],
        "regime_counts": meta["regime_counts"], "sequence_gaps": gaps,
        "repairs": meta["repairs"],
        "warnings": [w for r in meta["reports"] for w in r["warnings"]],
    }


def summary_table(ds) -> Table:
    s = summary(ds)
    table = Table(title=f"{ds.name}  ({len(s['sessions'])} sessions, key {ds.cache_key})")
    for col in ("session", "start (UTC)", "minutes", "steps", "mid first→last", "spread (ticks)",
                "volume", "trades"):
        table.add_column(col, justify="right")
    for p in s["sessions"]:
        table.add_row(str(p["session"]), p["start_utc"], f"{p['minutes']:.1f}", str(p["steps"]),
                      f"{p['mid_first']:.2f}→{p['mid_last']:.2f}", f"{p['spread_ticks_mean']:.2f}",
                      f"{p['traded_base_volume']:.3f}", str(p["trades"]))
    c, r = s["split_counts"], s["regime_counts"]
    lo, hi = s["regime_thresholds"]
    table.caption = (
        f"windows train/validation/test: {c['train']}/{c['validation']}/{c['test']}  ·  "
        f"regimes low/mid/high (train) {r['train']}, (validation) {r['validation']}, (test) {r['test']}  ·  "
        f"sigma thresholds {lo:.3g}, {hi:.3g}  ·  sequence gaps {s['sequence_gaps']}  ·  "
        f"crossed levels removed {sum(x.get('crossed_levels_removed', 0) for x in s['repairs'])}"
    )
    return table


def plot_dataset(ds, path: str | Path) -> Path:
    """One column per session: mid with split shading, spread, depth, traded volume, regimes."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    steps, samples = ds.steps, ds.samples
    L = ds.config.grid.levels
    lo, hi = ds.regime_thresholds
    n = len(ds.sessions)
    fig, axes = plt.subplots(5, n, figsize=(max(5.5 * n, 9.0), 11), sharex="col", squeeze=False)
    split_colours = {"train": "#dde8f7", "validation": "#f7efd9", "test": "#f3dde0"}
    for col, s in enumerate(ds.sessions):
        st = steps.filter(pl.col("session") == s.id)
        sm = samples.filter(pl.col("session") == s.id)
        t = (st["ts_ns"].to_numpy() - s.start_ns) / 1e9
        ax = axes[0, col]
        ax.plot(t, st["mid"].to_numpy(), lw=0.8, color="black")
        for split, colour in split_colours.items():
            part = sm.filter(pl.col("split") == split)
            if len(part):
                ts = (part["ts_ns"].to_numpy() - s.start_ns) / 1e9
                ax.axvspan(ts.min(), ts.max(), color=colour, zorder=0, label=split)
        ax.set_title(f"session {s.id}: {_utc(s.start_ns)} UTC")
        ax.set_ylabel("mid")
        if col == 0:
            ax.legend(loc="upper left", fontsize=8)
        axes[1, col].plot(t, st["spread_ticks"].to_numpy(), lw=0.6)
        axes[1, col].set_ylabel("spread (ticks)")
        bid_depth = sum(st[f"bid_sz_{i}"].to_numpy() for i in range(L))
        ask_depth = sum(st[f"ask_sz_{i}"].to_numpy() for i in range(L))
        axes[2, col].plot(t, bid_depth, lw=0.6, label="bid", color="#2a7ab0")
        axes[2, col].plot(t, ask_depth, lw=0.6, label="ask", color="#c8423b")
        axes[2, col].set_ylabel(f"depth, top {L}")
        axes[2, col].legend(fontsize=8)
        # Per-step bars vanish on long sessions: sum the flow into at most 200 bins.
        edges = np.linspace(t[0], t[-1] + 1e-9, min(200, len(t)) + 1)
        which = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, len(edges) - 2)
        width = edges[1] - edges[0]
        buy = np.bincount(which, st["buy_vol"].to_numpy(), len(edges) - 1)
        sell = np.bincount(which, st["sell_vol"].to_numpy(), len(edges) - 1)
        axes[3, col].bar(edges[:-1], buy, width=width, align="edge", color="#2a7ab0", label="buy")
        axes[3, col].bar(edges[:-1], -sell, width=width, align="edge", color="#c8423b", label="sell")
        axes[3, col].set_ylabel(f"traded volume per {width:.3g} s")
        axes[3, col].legend(fontsize=8)
        sig = st["sigma"].to_numpy()
        axes[4, col].plot(t, sig, lw=0.7, color="black")
        axes[4, col].axhline(lo, ls="--", color=REGIME_COLOURS[0], lw=0.8)
        axes[4, col].axhline(hi, ls="--", color=REGIME_COLOURS[2], lw=0.8)
        if len(sm):
            ts = (sm["ts_ns"].to_numpy() - s.start_ns) / 1e9
            axes[4, col].scatter(ts, sm["sigma"].to_numpy(), s=2,
                                 c=[REGIME_COLOURS[r] for r in sm["regime"].to_numpy()])
        axes[4, col].set_ylabel("sigma (regime)")
        axes[4, col].set_xlabel("seconds from session start")
    fig.suptitle(f"{ds.name}: mid (splits shaded), spread, depth, traded volume,\n"
                 f"volatility regimes (thresholds from train: {lo:.2g}, {hi:.2g})")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path
