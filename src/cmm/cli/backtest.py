"""``cmm backtest``: replay a dataset split through hftbacktest with a policy and report the
market-making metrics (table on screen; metrics JSON, per-episode CSV and one PNG per episode
on disk)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console()

SCHEMA_VERSION = 1


def register(app: typer.Typer) -> None:
    app.command("backtest")(backtest)


def _fmt(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "-"
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:.{digits}g}" if abs(x) < 1e5 else f"{x:,.0f}"


def _pm(m: dict, key: str) -> str:
    return f"{_fmt(m[key])} ± {_fmt(m[key + '_std'], 3)}"


def metrics_table(runs: list[dict]) -> Table:
    """One column per policy; rows are the paper's metrics (mean ± std over episodes)."""
    first = runs[0]["metrics"]
    cur = first["currency"]
    table = Table(title=f"{first['dataset']} | {first['split']} | {first['episodes']} episodes",
                  caption=f"mean ± std over episodes; PnL in {cur} currency, fees and closes "
                          "included; oracle = perfect-forecast ladder, not a competitor")
    table.add_column("metric", no_wrap=True)
    for r in runs:
        table.add_column(r["metrics"]["policy"], justify="right", no_wrap=True)
    rows = [
        ("EPnL", lambda m, r: _pm(m, "EPnL")),
        ("MAP (base)", lambda m, r: _pm(m, "MAP")),
        ("PnLMAP", lambda m, r: _fmt(m["PnLMAP"])),
        ("RPT", lambda m, r: _fmt(m["RPT"])),
        ("Sharpe", lambda m, r: _fmt(m["Sharpe"], 3)),
        ("max drawdown", lambda m, r: _fmt(m["max_drawdown"])),
        ("fills", lambda m, r: _fmt(m["fills"])),
        ("volume", lambda m, r: _fmt(m["volume"])),
        ("fees", lambda m, r: _fmt(m["fees"])),
        ("total PnL", lambda m, r: _fmt(m["total_pnl"])),
        ("latency ms", lambda m, r: _fmt(r["latency_ns"] / 1e6, 3)),
        ("replay s", lambda m, r: _fmt(r["wall_s"], 3)),
    ]
    for label, get in rows:
        table.add_row(label, *[get(r["metrics"], r) for r in runs])
    return table


def backtest(
    dataset: Annotated[str, typer.Option(
        help="A registered dataset name (see `cmm data list`) or the path of a dataset YAML spec.")],
    policy: Annotated[str, typer.Option(
        help="Policy name, or several separated by commas (e.g. fixed,as,oracle).")] = "fixed",
    split: Annotated[str, typer.Option(help="train, validation or test.")] = "test",
    out: Annotated[Path | None, typer.Option(
        help="Output folder (default runs/backtest/<dataset>-<policy>; one per policy).")] = None,
    config: Annotated[Path | None, typer.Option(
        help="YAML with `ladder:`, `backtest:` and `policies: {name: settings}` (cmm.config.BacktestRunConfig).")] = None,
    episode_s: Annotated[float | None, typer.Option(help="Episode length in seconds (overrides the config).")] = None,
    latency_ms: Annotated[float | None, typer.Option(
        help="Policy inference latency in ms (overrides the policy's own).")] = None,
    plots: Annotated[bool, typer.Option(help="Write one PNG per episode.")] = True,
    cache_dir: Annotated[Path | None, typer.Option(help="Folder of prepared datasets.")] = None,
) -> None:
    """Backtest market-making policies on a dataset split: quote ladder, queue position, latency,
    fees; each episode starts flat and is closed at the touch with the taker fee."""
    from cmm.backtest.metrics import episode_metrics, summarize
    from cmm.backtest.plots import plot_episode
    from cmm.backtest.runner import run_backtest
    from cmm.config import BacktestRunConfig, load_yaml_model
    from cmm.data.prepare import prepare_dataset
    from cmm.errors import InputError
    from cmm.io import atomic_dir, write_json
    from cmm.strategy.policy import get_policy

    run_cfg = load_yaml_model(BacktestRunConfig, config) if config else BacktestRunConfig()
    bt_cfg = run_cfg.backtest
    if episode_s is not None:
        if episode_s <= 0:
            raise InputError("episode length must be > 0", field="--episode-s", got=episode_s)
        bt_cfg = bt_cfg.model_copy(update={"episode_s": episode_s})
    names = [n.strip() for n in policy.split(",") if n.strip()]
    if out is not None and len(names) > 1:
        raise InputError("--out names the folder of one policy; with several, leave it unset "
                         "(each writes runs/backtest/<dataset>-<policy>)", field="--out", got=str(out))
    if latency_ms is not None and latency_ms < 0:
        raise InputError("latency must be >= 0", field="--latency-ms", got=latency_ms)
    policies = {}
    for name in names:  # before the (slow) data preparation: unknown names fail fast
        settings = dict(run_cfg.policies.get(name, {}))
        if latency_ms is not None:
            settings["latency_ns"] = int(round(latency_ms * 1e6))
        policies[name] = get_policy(name, settings or None)
    ds = prepare_dataset(dataset, cache_dir=cache_dir)
    runs = []
    for name, pol in policies.items():
        with console.status(f"fitting {name} on train"):
            pol.fit(ds)
        with console.status(f"replaying {ds.name} {split} with {name}"):
            result = run_backtest(ds, pol, split, ladder=run_cfg.ladder, config=bt_cfg)
        metrics = summarize(result)
        folder = out or Path("runs/backtest") / f"{ds.name}-{name}"
        with atomic_dir(folder) as tmp:
            write_json(tmp / "metrics.json", {
                "schema_version": SCHEMA_VERSION, "metrics": metrics,
                "settings": result.settings, "dataset": ds.name, "dataset_key": ds.cache_key,
                "instrument": result.instrument.model_dump(), "wall_s": result.wall_s,
                "warnings": result.warnings})
            episode_metrics(result).write_csv(tmp / "episodes.csv")
            result.fills.write_csv(tmp / "fills.csv")
            result.records.write_parquet(tmp / "records.parquet")
            if plots:
                for e in result.episodes["episode"].to_list():
                    plot_episode(result, e, tmp / f"episode_{e:03d}.png")
        runs.append({"metrics": metrics, "latency_ns": pol.latency_ns, "wall_s": result.wall_s,
                     "folder": folder, "warnings": result.warnings})
    console.print(metrics_table(runs))
    for r in runs:
        console.print(f"{r['metrics']['policy']}: {r['folder']}")
    for r in runs:
        for w in r["warnings"]:
            console.print(f"[yellow]warning:[/yellow] {w}", highlight=False)
