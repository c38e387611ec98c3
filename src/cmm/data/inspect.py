"""Summaries and pictures of a prepared dataset: a per-session figure and the intraday pattern."""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import polars as pl
from rich.table import Table

from cmm.data.readers.lobster import EXCHANGE_TZ
from cmm.io import atomic_path

REGIME_COLOURS = ("#4c9f70", "#e0a030", "#c8423b")  # low, mid, high volatility
BID_COLOUR, ASK_COLOUR = "#2a7ab0", "#c8423b"

# The one place that says in which clock a format's time of day is read: the exchange's local
# time where trading follows a local day (LOBSTER: NASDAQ), UTC for everything else (crypto).
LOCAL_TZ_BY_FORMAT = {"lobster": EXCHANGE_TZ}


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
    intra = intraday(ds)
    return {
        "name": ds.name, "folder": str(ds.folder), "key": ds.cache_key,
        "instrument": ds.spec.instrument.model_dump(), "grid": meta["config"]["grid"],
        "features": meta["config"]["features"], "sessions": per_session,
        "split_counts": meta["split_counts"], "regime_thresholds": meta["regime_thresholds"],
        "regime_counts": meta["regime_counts"], "sequence_gaps": gaps,
        "repairs": meta["repairs"],
        "warnings": [w for r in meta["reports"] for w in r["warnings"]],
        "intraday": {"line": intraday_line(ds, intra), "timezone": local_timezone(ds.spec.format),
                     "bin_minutes": intra[0], "volatility": _VOL_LABEL,
                     "bins": [] if intra[1] is None else _json_rows(intra[1].drop("bin"))},
    }


def summary_table(ds) -> Table:
    """The summary table with the split/regime caption under it (the CLI prints the intraday
    line, :func:`intraday_line`, after it)."""
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


# --- intraday pattern ---------------------------------------------------------------------

_VOL_LABEL = "std of 1-step mid log-returns (bps)"


def _json_rows(frame: pl.DataFrame) -> list[dict]:
    """Rows as dicts, NaN as None (JSON has no NaN)."""
    return [{k: None if isinstance(v, float) and v != v else v for k, v in row.items()}
            for row in frame.to_dicts()]


def local_timezone(fmt: str) -> str:
    """The time zone whose clock the intraday pattern of a ``fmt`` dataset is read in."""
    return LOCAL_TZ_BY_FORMAT.get(fmt, "UTC")


def intraday_bin_minutes(ds) -> int | None:
    """The bin width for ``ds``'s intraday pattern, from its longest session: 5 minutes when it
    lasts an hour or more, 1 minute from 5 minutes to an hour, None (no pattern) under 5 minutes."""
    longest_min = max((s.end_ns - s.start_ns) / 6e10 for s in ds.sessions) if ds.sessions else 0.0
    if longest_min >= 60:
        return 5
    if longest_min >= 5:
        return 1
    return None


def intraday_profile(steps: pl.DataFrame, tz: str, bin_minutes: int, dt_ms: int) -> pl.DataFrame:
    """Per ``bin_minutes`` bin of time of day in ``tz``, pooled over the sessions in ``steps``.

    Each step goes to the bin of its timestamp's local time of day (so a winter and a summer
    session at the same wall-clock time share bins). One row per bin that holds steps, sorted:

    - ``minute``: start of the bin in minutes after local midnight; ``start``/``end``: "HH:MM";
    - ``steps``: grid steps in the bin (all sessions), ``sessions``: sessions with steps there;
    - ``spread_ticks``: mean spread in ticks over the valid steps (NaN if none);
    - ``volume``: traded base volume (``buy_vol + sell_vol``) summed over the bin, divided by
      ``sessions`` (the plain sum for one session; see ``coverage`` for partial bins at the ends);
    - ``vol_bps``: std of the 1-step mid log-returns, in bps, whose both ends are valid steps of
      one session (NaN with fewer than two);
    - ``coverage``: steps over (steps of a full bin x sessions), 1.0 for complete bins.
    """
    full = bin_minutes * 60_000 / dt_ms
    local = pl.from_epoch(pl.col("ts_ns"), time_unit="ns").dt.replace_time_zone("UTC") \
        .dt.convert_time_zone(tz)
    minute_of_day = local.dt.hour().cast(pl.Int32) * 60 + local.dt.minute().cast(pl.Int32)
    prev_valid = pl.col("valid").shift(1).over("session")
    ret = (pl.col("mid").log().diff().over("session") * 1e4)
    frame = steps.lazy().select(
        pl.col("session"),
        (minute_of_day // bin_minutes).alias("bin"),
        pl.when(pl.col("valid")).then(pl.col("spread_ticks")).alias("spread"),
        (pl.col("buy_vol") + pl.col("sell_vol")).alias("flow"),
        pl.when(pl.col("valid") & prev_valid.fill_null(False)).then(ret).alias("ret"),
    )
    out = frame.group_by("bin").agg(
        pl.len().alias("steps"),
        pl.col("session").n_unique().alias("sessions"),
        pl.col("spread").mean().alias("spread_ticks"),
        pl.col("flow").sum().alias("flow"),
        pl.col("ret").std().alias("vol_bps"),
    ).sort("bin").collect()
    hhmm = lambda m: pl.format("{}:{}", (m // 60 % 24).cast(pl.String).str.zfill(2),  # noqa: E731
                               (m % 60).cast(pl.String).str.zfill(2))
    start = pl.col("bin") * bin_minutes
    return out.with_columns(
        start.alias("minute"), hhmm(start).alias("start"), hhmm(start + bin_minutes).alias("end"),
        (pl.col("steps") / (full * pl.col("sessions"))).alias("coverage"),
        (pl.col("flow") / pl.col("sessions")).alias("volume"),
        pl.col("spread_ticks").fill_null(float("nan")), pl.col("vol_bps").fill_null(float("nan")),
    ).select("bin", "minute", "start", "end", "steps", "sessions", "coverage", "spread_ticks",
             "volume", "vol_bps")


def intraday(ds) -> tuple[int | None, pl.DataFrame | None]:
    """``(bin_minutes, intraday_profile)`` of ``ds``, ``(None, None)`` for captures under 5 min."""
    bm = intraday_bin_minutes(ds)
    if bm is None:
        return None, None
    return bm, intraday_profile(ds.steps, local_timezone(ds.spec.format), bm, ds.config.grid.dt_ms)


def _peak(profile: pl.DataFrame, col: str) -> dict | None:
    """The bin where ``col`` is largest, among bins at least half covered (else all bins)."""
    p = profile.filter(pl.col(col).is_not_nan())
    half = p.filter(pl.col("coverage") >= 0.5)
    p = half if len(half) else p
    if not len(p):
        return None
    row = p.row(int(p[col].arg_max()), named=True)
    return {**row, "median": float(p[col].median())}


def _qty(x: float) -> str:
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{unit}"
    return f"{x:.3g}"


def intraday_line(ds, intra: tuple | None = None) -> str:
    """One line: where, by local time of day, the mean spread is widest and the volume highest."""
    bm, prof = intraday(ds) if intra is None else intra
    tz = local_timezone(ds.spec.format)
    if prof is None:
        longest = max((s.end_ns - s.start_ns) / 6e10 for s in ds.sessions) if ds.sessions else 0.0
        return f"intraday ({tz}): skipped, the longest session lasts {longest:.1f} min (< 5 min)"
    sp, vo = _peak(prof, "spread_ticks"), _peak(prof, "volume")
    parts = []
    if sp:
        parts.append(f"spread widest {sp['start']}-{sp['end']} ({sp['spread_ticks']:.3g} ticks vs "
                     f"median {sp['median']:.3g})")
    if vo and vo["volume"] > 0:
        parts.append(f"volume highest {vo['start']}-{vo['end']} ({_qty(vo['volume'])} vs "
                     f"median {_qty(vo['median'])})")
    elif vo:
        parts.append("no traded volume (the capture holds no trades)")
    return f"intraday ({bm}-min bins, {tz}): " + (", ".join(parts) or "no valid steps")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    plt = _pyplot()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)
    return path


def intraday_path(path: str | Path) -> Path:
    """Where :func:`plot_dataset` puts the intraday figure next to the figure at ``path``."""
    path = Path(path)
    return path.with_name(f"{path.stem}-intraday.png")


def plot_intraday(ds, path: str | Path, intra: tuple | None = None) -> Path | None:
    """Three panels against local time of day: mean spread, traded volume, volatility per bin,
    pooled over sessions (see :func:`intraday_profile`). None, and no file, for short captures."""
    from matplotlib.ticker import FuncFormatter, MultipleLocator

    bm, prof = intraday(ds) if intra is None else intra
    if prof is None:
        return None
    plt = _pyplot()
    tz = local_timezone(ds.spec.format)
    # Start the axis after the longest run of empty bins round the clock, so captures across
    # midnight (Binance's 23:55-00:05) stay in one piece; then every bin from the first to the
    # last, NaN where no session has steps, so lines break there.
    per_day = 1440 // bm
    occupied = np.sort(prof["bin"].to_numpy())
    gaps = (np.roll(occupied, -1) - occupied) % per_day
    origin = int(np.roll(occupied, -1)[np.argmax(gaps)]) if gaps.max() > 1 else int(occupied[0])
    prof = prof.with_columns(((pl.col("bin") - origin) % per_day + origin).alias("bin"))
    grid = pl.DataFrame({"bin": np.arange(prof["bin"].min(), prof["bin"].max() + 1)})
    prof = grid.join(prof.drop("minute"), on="bin", how="left")
    x = prof["bin"].to_numpy() * bm / 60.0  # hours after local midnight, left edge of the bin
    w = bm / 60.0
    edges = np.append(x, x[-1] + w)
    span_h = x[-1] + w - x[0]

    def arr(col: str) -> np.ndarray:
        return prof[col].cast(pl.Float64).fill_null(float("nan")).to_numpy()

    def bins_of(v: np.ndarray) -> np.ndarray:  # step(where="post") draws a bin per edge pair
        return np.append(v, v[-1])

    fig, axes = plt.subplots(3, 1, figsize=(11, 8.5), sharex=True)
    axes[0].step(edges, bins_of(arr("spread_ticks")), where="post", color="black", lw=1.0)
    axes[0].set_ylabel("mean spread (ticks)")
    axes[1].bar(x, np.nan_to_num(arr("volume")), width=w, align="edge", color=BID_COLOUR)
    axes[1].set_ylabel(f"traded volume per {bm} min\n(base units)")
    axes[2].step(edges, bins_of(arr("vol_bps")), where="post", color=ASK_COLOUR, lw=1.0)
    dt_ms = ds.config.grid.dt_ms
    dt = f"{dt_ms // 1000} s" if dt_ms % 1000 == 0 else f"{dt_ms} ms"
    axes[2].set_ylabel(f"volatility (bps):\nstd of {dt} mid log-returns")
    for ax, col in zip(axes, ("spread_ticks", "volume", "vol_bps")):
        med = float(np.nanmedian(arr(col)))
        ax.axhline(med, ls="--", lw=0.8, color="grey", label=f"median bin {_qty(med)}")
        lo_y, hi_y = ax.get_ylim()
        ax.set_ylim(lo_y, hi_y + 0.12 * (hi_y - lo_y))  # headroom for the legend
        ax.legend(loc="upper right", fontsize=8)
        ax.grid(alpha=0.3, lw=0.5)
    axes[1].set_ylim(bottom=0)
    axes[2].set_ylim(bottom=0)
    step_min = next(m for m in (1, 2, 5, 10, 15, 30, 60, 120, 180, 360) if span_h * 60 / m <= 13)
    axes[2].xaxis.set_major_locator(MultipleLocator(step_min / 60))
    axes[2].xaxis.set_major_formatter(FuncFormatter(
        lambda h, _: f"{round(h * 60) // 60 % 24:02d}:{round(h * 60) % 60:02d}"))
    axes[2].set_xlim(x[0], x[-1] + w)
    axes[2].set_xlabel(f"time of day ({tz})")
    n = len(ds.sessions)
    fig.suptitle(f"{ds.name}: intraday pattern, {bm}-min bins of {tz} time of day"
                 + (f", pooled over {n} sessions" if n > 1 else ""))
    return _save(fig, Path(path))


def plot_dataset(ds, path: str | Path) -> Path:
    """One column per session: mid with split shading, spread, depth, traded volume, regimes.

    Also writes the intraday pattern (:func:`plot_intraday`) to :func:`intraday_path` of ``path``
    when the capture is long enough for one."""
    plt = _pyplot()
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
        axes[2, col].plot(t, bid_depth, lw=0.6, label="bid", color=BID_COLOUR)
        axes[2, col].plot(t, ask_depth, lw=0.6, label="ask", color=ASK_COLOUR)
        axes[2, col].set_ylabel(f"depth, top {L}")
        axes[2, col].legend(fontsize=8)
        # Per-step bars vanish on long sessions: sum the flow into at most 200 bins.
        edges = np.linspace(t[0], t[-1] + 1e-9, min(200, len(t)) + 1)
        which = np.clip(np.searchsorted(edges, t, side="right") - 1, 0, len(edges) - 2)
        width = edges[1] - edges[0]
        buy = np.bincount(which, st["buy_vol"].to_numpy(), len(edges) - 1)
        sell = np.bincount(which, st["sell_vol"].to_numpy(), len(edges) - 1)
        axes[3, col].bar(edges[:-1], buy, width=width, align="edge", color=BID_COLOUR, label="buy")
        axes[3, col].bar(edges[:-1], -sell, width=width, align="edge", color=ASK_COLOUR, label="sell")
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
    _save(fig, path)
    plot_intraday(ds, intraday_path(path))
    return path
