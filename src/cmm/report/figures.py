"""The report's pictures, each a PNG written atomically: equity and inventory per policy, quotes
over the mid for one episode, expert weights over time by regime, decision latency."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl

from cmm.backtest.plots import draw_quotes
from cmm.io import atomic_path
from cmm.vocabulary import REGIMES

REGIME_COLOURS = {0: "#d8ecd8", 1: "#fbf0c8", 2: "#f6d3d3"}
REGIME_NAMES = dict(enumerate(REGIMES))


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path, dpi: int) -> Path:
    plt = _plt()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    plt.close(fig)
    return path


def equity_inventory(curves: dict[str, tuple[pl.DataFrame, pl.DataFrame]], path: Path,
                     title: str, unit: str, dpi: int = 90) -> Path:
    """``curves[label] = (records, episodes)`` of one backtest: equity across the test split's
    episodes in order (each episode's closed PnL carried into the next) and inventory."""
    plt = _plt()
    fig, (ax1, ax2) = plt.subplots(2, 1, figsize=(10, 6), sharex=True,
                                   gridspec_kw={"height_ratios": [2, 1]})
    # tab10 repeats after ten lines (CMM and PPO would share a colour): tab20 beyond that
    palette = plt.get_cmap("tab10" if len(curves) <= 10 else "tab20").colors
    for i, (label, (rec, eps)) in enumerate(curves.items()):
        colour = palette[i % len(palette)]
        rec = rec.sort("ts_ns")
        closed = eps.sort("episode").select("episode", "pnl")
        carry = dict(zip(closed["episode"].to_list(),
                         np.concatenate([[0.0], np.cumsum(closed["pnl"].to_numpy())[:-1]]),
                         strict=True))
        ep = rec["episode"].to_numpy()
        base = np.array([carry.get(int(e), 0.0) for e in ep])
        x = np.arange(len(rec))
        ax1.plot(x, base + np.nan_to_num(rec["equity"].to_numpy()), lw=1.0, label=label,
                 color=colour)
        ax2.step(x, rec["position"].to_numpy(), where="post", lw=0.8, label=label, color=colour)
    starts = np.flatnonzero(np.diff(ep)) + 1 if curves else []
    for ax in (ax1, ax2):
        for s in starts:
            ax.axvline(s, color="0.85", lw=0.6, zorder=0)
        ax.axhline(0, color="0.6", lw=0.6)
    ax1.set_ylabel(f"equity ({unit})")
    ax2.set_ylabel("inventory")
    ax2.set_xlabel("decision (test episodes in order; grey lines: episode starts, each flat)")
    ax1.legend(fontsize=7, ncol=3, loc="upper left")
    ax1.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path, dpi)


def quotes_over_mid(records: pl.DataFrame, fills: pl.DataFrame, episode: int, path: Path,
                    title: str, dpi: int = 90, shade: tuple[float, float] | None = None) -> Path:
    """One episode: mid, touch, our best bid and ask, our fills; inventory below."""
    plt = _plt()
    rec = records.filter(pl.col("episode") == episode).sort("ts_ns")
    f = fills.filter(pl.col("episode") == episode)
    t0 = int(rec["ts_ns"][0])
    t = (rec["ts_ns"].to_numpy() - t0) / 1e9
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(10, 5.5), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 1]})
    draw_quotes(ax, rec, f, t0)
    if shade is not None:
        for a in (ax, ax2):
            a.axvspan((shade[0] - t0) / 1e9, (shade[1] - t0) / 1e9, color="tab:orange",
                      alpha=0.12, zorder=0)
    ax.set_ylabel("price")
    ax.legend(fontsize=7, ncol=3, loc="best")
    ax.set_title(title, fontsize=10)
    ax2.step(t, rec["position"].to_numpy(), where="post", color="tab:blue", lw=0.9)
    ax2.axhline(0, color="0.6", lw=0.6)
    ax2.set_ylabel("inventory")
    ax2.set_xlabel("seconds since the episode's start")
    fig.tight_layout()
    return _save(fig, path, dpi)


def _regime_of(name: str) -> int | None:
    for r, word in REGIME_NAMES.items():
        if name.endswith(word) or f"-{word}-" in name or name.endswith(f"r{r}"):
            return r
    return None


def expert_weights(npz_path: Path, path: Path, title: str, dpi: int = 90) -> Path:
    """Per task, the mixture's weight on each of its experts at every test decision (a line
    per expert, coloured by the regime it was trained on), over a background coloured by the
    volatility regime of the moment (the strip on top repeats it)."""
    plt = _plt()
    from matplotlib.patches import Patch

    z = np.load(npz_path)
    w, regime, session = z["weights"], z["regime"], z["session"]
    tasks = [str(t) for t in z["tasks"]]
    experts = [str(e).split(";") for e in z["experts"]]
    n, T, M = w.shape
    fig, axes = plt.subplots(T + 1, 1, figsize=(10, 1.0 + 1.6 * T), sharex=True, squeeze=False,
                             gridspec_kw={"height_ratios": [0.25] + [1] * T})
    x = np.arange(n)
    bounds = np.concatenate([[0], np.flatnonzero(np.diff(regime)) + 1, [n]])
    strip = axes[0, 0]
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        colour = REGIME_COLOURS.get(int(regime[a]), "white")
        strip.axvspan(a - 0.5, b - 0.5, color=colour, lw=0)
        for ax in axes[1:, 0]:
            ax.axvspan(a - 0.5, b - 0.5, color=colour, alpha=0.5, lw=0, zorder=0)
    strip.set_yticks([])
    strip.set_ylabel("regime", fontsize=7, rotation=0, ha="right", va="center")
    strip.set_title(title, fontsize=10)
    line_colours = {0: "tab:green", 1: "tab:orange", 2: "tab:red"}
    for k, ax in enumerate(axes[1:, 0]):
        names = experts[k] if k < len(experts) and len(experts[k]) == M else [
            f"expert {i}" for i in range(M)]
        for i, name in enumerate(names):
            r = _regime_of(name)
            ax.plot(x, w[:, k, i], lw=0.8, label=name, zorder=2,
                    color=line_colours.get(r) if r is not None else None)
        for s in np.flatnonzero(np.diff(session)) + 1:
            ax.axvline(s, color="black", lw=0.6, zorder=3)
        ax.set_ylim(0, 1)
        ax.set_ylabel(f"{tasks[k]}\nweight", fontsize=8)
        ax.legend(fontsize=6, ncol=min(M, 4), loc="upper right")
    handles = [Patch(color=c, label=f"{REGIME_NAMES[r]} volatility")
               for r, c in REGIME_COLOURS.items() if (regime == r).any()]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=7)
    axes[-1, 0].set_xlabel("test decision (in time order; black lines: session changes)")
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    return _save(fig, path, dpi)


def latency_bars(rows: list[dict], path: Path, title: str, dpi: int = 90) -> Path:
    """Horizontal bars (log scale) of each policy's charged decision latency in ms."""
    plt = _plt()
    rows = [r for r in rows if (r["latency_ms"]["mean"] or 0) > 0]
    fig, ax = plt.subplots(figsize=(8, 0.9 + 0.32 * max(len(rows), 1)))
    if rows:
        labels = [r["label"] for r in rows]
        vals = [r["latency_ms"]["mean"] for r in rows]
        errs = [r["latency_ms"]["std"] or 0.0 for r in rows]
        colours = ["tab:red" if r["slug"].startswith("teacher") else
                   "tab:blue" if r["slug"].startswith("cmm") else "tab:gray" for r in rows]
        ax.barh(range(len(rows)), vals, xerr=errs, color=colours)
        ax.set_yticks(range(len(rows)), labels, fontsize=8)
        ax.set_xscale("log")
        for i, v in enumerate(vals):
            ax.text(v, i, f" {v:.3g} ms", va="center", fontsize=7)
    else:
        ax.text(0.5, 0.5, "every policy was charged zero latency", ha="center")
    ax.invert_yaxis()
    ax.set_xlabel("decision latency charged in the replay (ms, log scale)")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, path, dpi)


STOPPED_BY = {"early_stopping": "early stopping", "epochs": "all epochs run",
              "max_steps": "step limit (max_steps)",
              "time_budget": "time budget, the safety cap bound"}


def learning_curves(fits: dict[str, dict], path: Path, title: str, dpi: int = 90) -> Path:
    """Train and validation loss against optimizer step of one or several teacher fits
    (``fits[label]`` = the ``fit`` of a teacher's ``teacher.json``: ``history``, ``best``,
    ``stopped_by``), one colour per fit: validation solid with dots at the checks, train
    dashed, a star at the best checkpoint; the legend names what stopped each fit. Log y-axis
    when the losses span more than 10x."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4))
    colours = ["tab:blue", "tab:red", "tab:green", "tab:purple", "tab:orange", "tab:brown"]
    values: list[float] = []
    for i, (label, fit) in enumerate(fits.items()):
        colour = colours[i % len(colours)]
        hist = fit.get("history") or []
        stop = STOPPED_BY.get(fit.get("stopped_by"), str(fit.get("stopped_by", "?")))
        val = [(h["step"], h["val_loss"]) for h in hist if h.get("val_loss") is not None]
        train = [(h["step"], h["train_loss"]) for h in hist if h.get("train_loss") is not None]
        if val:
            ax.plot(*zip(*val), color=colour, lw=1.2, marker=".", ms=4,
                    label=f"{label}: validation (stopped: {stop})")
        if train:
            ax.plot(*zip(*train), color=colour, lw=1.0, ls="--", alpha=0.8,
                    label=f"{label}: train")
        best = fit.get("best") or {}
        if best.get("val_loss") is not None:
            ax.plot([best["step"]], [best["val_loss"]], marker="*", ms=12, color=colour,
                    markeredgecolor="black", ls="none",
                    label=f"{label}: best (step {best['step']})")
        values += [v for _, v in val + train]
    pos = [v for v in values if v > 0]
    if pos and len(pos) == len(values) and max(pos) > 10 * min(pos):
        ax.set_yscale("log")
    if not values:
        ax.text(0.5, 0.5, "no recorded checks", ha="center", transform=ax.transAxes)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (weighted MSE, standardised targets)")
    ax.set_title(title, fontsize=10)
    if values:
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _save(fig, path, dpi)
