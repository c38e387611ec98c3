"""``cmm backtest``: replay a dataset split through hftbacktest with one or several policies and
report the market-making metrics (table on screen; on disk the files ``cmm run`` writes of each
backtest, by the same function (:func:`cmm.backtest.artefacts.write_backtest`: metrics.json,
episodes.csv, records.parquet, fills.parquet), and one PNG per episode).

With several policies every one replays the same episodes, so each is compared with a baseline
(``--baseline``, default the first policy listed) on the per-episode *difference* of net PnL,
episodes matched by session and episode number (:func:`cmm.backtest.stats.paired_difference`:
mean difference, 95 % stratified block-bootstrap interval with sessions as strata, Wilcoxon
signed-rank p-value, minimum detectable difference, verdict). Where the episodes carry a gross
PnL (``gross_pnl``, before fees) it is shown and compared too."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

console = Console()

# Per-episode values compared with the baseline: (label, episode column).
PAIRED_VALUES = (("net", "pnl"), ("gross", "gross_pnl"))
MATCH_KEYS = ("session", "episode")


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


def _mean_std(values) -> tuple[float, float]:
    import numpy as np

    a = np.asarray(values, np.float64)
    if len(a) == 0:
        return math.nan, math.nan
    return float(a.mean()), (float(a.std(ddof=1)) if len(a) > 1 else math.nan)


def episode_values(per, result=None):
    """The per-episode frame used for the comparisons: ``session``, ``episode``, ``pnl`` (net)
    and, where the backtest has it, ``gross_pnl`` (from ``episode_metrics`` or the result's own
    episode table)."""
    import polars as pl

    cols = [c for c in (*MATCH_KEYS, "start_ns", "pnl", "gross_pnl") if c in per.columns]
    out = per.select(cols)
    if ("gross_pnl" not in out.columns and result is not None
            and "gross_pnl" in result.episodes.columns):
        out = out.join(result.episodes.select([*MATCH_KEYS, pl.col("gross_pnl")]),
                       on=list(MATCH_KEYS), how="left")
    return out


def paired_to_baseline(values: dict, baseline: str, block: int = 1) -> dict[str, dict]:
    """Per policy name, its paired comparison with ``baseline`` (``values``: name -> the frame
    of :func:`episode_values`): for ``net`` (and ``gross`` where both have it) the
    :class:`~cmm.backtest.stats.PairedDifference` of ``policy - baseline`` as a dict, or an
    ``error`` line where no comparison can be made (fewer than 2 matched episodes)."""
    from cmm.backtest.stats import paired_difference
    from cmm.errors import InputError

    base = values[baseline]
    out: dict[str, dict] = {}
    for name, v in values.items():
        entry: dict = {"baseline": baseline, "difference": f"{name} - {baseline}",
                       "per_episode": "PnL (net: fees and the close included; gross: before fees)",
                       "matched_by": list(MATCH_KEYS)}
        if name == baseline:
            out[name] = {**entry, "is_baseline": True}
            continue
        joined = v.join(base, on=list(MATCH_KEYS), how="inner", suffix="_base").sort(
            list(MATCH_KEYS))
        entry.update(episodes=len(joined), episodes_policy=len(v), episodes_baseline=len(base))
        for label, col in PAIRED_VALUES:
            if col not in joined.columns or f"{col}_base" not in joined.columns:
                continue
            try:
                pd = paired_difference(joined[col].to_numpy(), joined[f"{col}_base"].to_numpy(),
                                       joined["session"].to_numpy(), block=block)
                entry[label] = pd.to_dict()
            except InputError as e:
                entry[label] = None
                entry[f"{label}_error"] = str(e)
        out[name] = entry
    return out


def _short_verdict(d: dict | None) -> str:
    if d is None:
        return "-"
    return d["verdict"] if d["verdict"] in ("better", "worse") else "indistinct"


def _interval(d: dict | None) -> str:
    if d is None:
        return "-"
    return f"{d['mean']:+.4g} [{_fmt(d['low'])}, {_fmt(d['high'])}]"


def metrics_table(runs: list[dict], baseline: str | None = None) -> Table:
    """One column per policy; rows are the paper's metrics (mean ± std over episodes), net and
    (where present) gross EPnL, and the paired difference to ``baseline``."""
    first = runs[0]["metrics"]
    cur = first["currency"]
    gross = all(r.get("gross") is not None for r in runs)
    paired = baseline is not None and len(runs) > 1
    caption = (f"mean ± std over episodes; PnL in {cur} currency; net = fees and closes "
               "included" + (", gross = before fees" if gross else "")
               + "; oracle = perfect-forecast ladder, not a competitor")
    if paired:
        caption += (f"; Δ = policy - {baseline} per episode (matched by session and episode), "
                    "mean [95 % bootstrap interval]; Wilcoxon signed-rank p; better/worse only "
                    "where the interval excludes 0 and p < 0.05, else indistinct")
    table = Table(title=f"{first['dataset']} | {first['split']} | {first['episodes']} episodes",
                  caption=caption)
    table.add_column("metric", no_wrap=True)
    for r in runs:
        name = r["metrics"]["policy"]
        table.add_column(name + (" (baseline)" if paired and name == baseline else ""),
                         justify="right", no_wrap=True)

    def pair(r, label):
        p = r.get("paired") or {}
        return None if p.get("is_baseline") else p.get(label)

    def base_or(r, text):
        return "baseline" if (r.get("paired") or {}).get("is_baseline") else text

    rows = [("EPnL net", lambda m, r: _pm(m, "EPnL"))]
    if gross:
        rows.append(("EPnL gross",
                     lambda m, r: f"{_fmt(r['gross'][0])} ± {_fmt(r['gross'][1], 3)}"))
    if paired:
        rows += [
            (f"Δ net vs {baseline}", lambda m, r: base_or(r, _interval(pair(r, "net")))),
            ("  Wilcoxon p",
             lambda m, r: base_or(r, _fmt((pair(r, "net") or {}).get("p_value"), 3))),
            ("  verdict", lambda m, r: base_or(r, _short_verdict(pair(r, "net")))),
        ]
        if gross:
            rows.append((f"Δ gross vs {baseline}",
                         lambda m, r: base_or(r, _interval(pair(r, "gross")))))
    rows += [
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


def paired_lines(runs: list[dict]) -> list[str]:
    """One sentence per comparison with the baseline (the table's Δ rows in full)."""
    lines = []
    for r in runs:
        p = r.get("paired") or {}
        if not p or p.get("is_baseline"):
            continue
        for label, _ in PAIRED_VALUES:
            if label not in p:
                continue
            d = p[label]
            what = f"{r['metrics']['policy']} - {p['baseline']}, {label} PnL per episode"
            if d is None:
                lines.append(f"{what}: no comparison ({p.get(label + '_error')})")
                continue
            pv = "-" if d["p_value"] is None else f"{d['p_value']:.3g}"
            lines.append(f"{what} ({d['n']} paired episodes): {d['mean']:+.4g}, 95 % interval "
                         f"[{d['low']:.4g}, {d['high']:.4g}], Wilcoxon p {pv}, minimum "
                         f"detectable {d['min_detectable']:.3g}: {d['verdict']}")
    return lines


def _policy_record(name: str, gate: str | None) -> dict:
    """What names a policy of this command in its metrics.json, as ``cmm run`` names its
    (:class:`cmm.pipeline.policies.PolicySpec`): every policy here is the registry's."""
    from cmm.pipeline.policies import PolicySpec, label_of

    return PolicySpec(slug=name, label=label_of(name), source="registry", name=name,
                      gate=gate).to_json()


def backtest(
    dataset: Annotated[str, typer.Option(
        help="A registered dataset name (see `cmm data list`) or the path of a dataset YAML spec.")],
    policy: Annotated[str, typer.Option(
        help="Policy name, or several separated by commas (e.g. fixed,as,oracle,ridge,lgbm); "
             "with several, each is compared with the baseline on the same episodes.")] = "fixed",
    baseline: Annotated[str | None, typer.Option(
        help="The policy the others are compared with (paired per-episode net PnL difference, "
             "95 % interval, Wilcoxon p, verdict); one of --policy; default the first listed.")
    ] = None,
    split: Annotated[str, typer.Option(help="train, validation or test.")] = "test",
    out: Annotated[Path | None, typer.Option(
        help="Output folder (default runs/backtest/<dataset>-<policy>; one per policy).")] = None,
    config: Annotated[Path | None, typer.Option(
        help="YAML with `ladder:`, `backtest:` (e.g. `{fee_tier: market_maker, episode_s: 300}`) "
             "and `policies: {name: settings}` (cmm.config.BacktestRunConfig).")] = None,
    episode_s: Annotated[float | None, typer.Option(help="Episode length in seconds (overrides the config).")] = None,
    latency_ms: Annotated[float | None, typer.Option(
        help="Policy inference latency in ms (overrides the policy's own).")] = None,
    plots: Annotated[bool, typer.Option(help="Write one PNG per episode.")] = True,
    cache_dir: Annotated[Path | None, typer.Option(help="Folder of prepared datasets.")] = None,
) -> None:
    """Backtest market-making policies on a dataset split: quote ladder, queue position, latency,
    fees; each episode starts flat and its position is closed at its end on the visible book
    with the taker fee. Prints net
    (and, where available, gross) EPnL and each policy's paired difference to the baseline; the
    comparison is also written under `paired` in each policy's metrics.json."""
    from cmm.data.prepare import prepare_dataset

    run_cfg, bt_cfg = _run_config(config, episode_s)
    names, base_name = _policy_names(policy, out, baseline)
    # before the (slow) data preparation: unknown names fail fast
    policies = _build_policies(names, run_cfg, latency_ms)
    ds = prepare_dataset(dataset, cache_dir=cache_dir)
    runs = []
    for name, pol in policies.items():
        runs.append(_replay_policy(ds, name, pol, split, run_cfg, bt_cfg, out, plots))
    if len(runs) > 1:
        _write_paired(runs, base_name)
    console.print(metrics_table(runs, base_name if len(runs) > 1 else None))
    for line in paired_lines(runs):
        console.print(line, highlight=False)
    for r in runs:
        console.print(f"{r['metrics']['policy']}: {r['folder']}")
    for r in runs:
        for w in r["warnings"]:
            console.print(f"[yellow]warning:[/yellow] {w}", highlight=False)


def _run_config(config: Path | None, episode_s: float | None) -> tuple:
    """The command's settings (``--config``'s YAML, else the defaults) and its backtest
    settings with ``--episode-s`` in."""
    from cmm.config import BacktestRunConfig, load_yaml_model
    from cmm.errors import InputError

    run_cfg = load_yaml_model(BacktestRunConfig, config) if config else BacktestRunConfig()
    bt_cfg = run_cfg.backtest
    if episode_s is not None:
        if episode_s <= 0:
            raise InputError("episode length must be > 0", field="--episode-s", got=episode_s)
        bt_cfg = bt_cfg.model_copy(update={"episode_s": episode_s})
    return run_cfg, bt_cfg


def _policy_names(policy: str, out: Path | None, baseline: str | None) -> tuple[list[str], str]:
    """The policies ``--policy`` names (each once, in order) and the baseline, checked against
    ``--out`` and ``--baseline``."""
    from cmm.errors import InputError

    names = list(dict.fromkeys(n.strip() for n in policy.split(",") if n.strip()))
    if not names:
        raise InputError("no policy named", field="--policy", got=policy)
    if out is not None and len(names) > 1:
        raise InputError("--out names the folder of one policy; with several, leave it unset "
                         "(each writes runs/backtest/<dataset>-<policy>)", field="--out", got=str(out))
    if baseline is not None and baseline not in names:
        raise InputError("the baseline must be one of the policies backtested",
                         field="--baseline", expected=", ".join(names), got=baseline)
    return names, baseline or names[0]


def _build_policies(names: list[str], run_cfg, latency_ms: float | None) -> dict:
    """Per name, the registry's policy with its settings from the config (``--latency-ms``
    replacing its latency), not yet fitted."""
    from cmm.errors import InputError
    from cmm.strategy.policy import get_policy

    if latency_ms is not None and latency_ms < 0:
        raise InputError("latency must be >= 0", field="--latency-ms", got=latency_ms)
    policies = {}
    for name in names:
        settings = dict(run_cfg.policies.get(name, {}))
        if latency_ms is not None:
            settings["latency_ns"] = int(round(latency_ms * 1e6))
        policies[name] = get_policy(name, settings or None)
    return policies


def _replay_policy(ds, name: str, pol, split: str, run_cfg, bt_cfg, out: Path | None,
                   plots: bool) -> dict:
    """Fit ``pol`` on train, replay it on ``split`` and write its folder (the files of `cmm
    run`'s backtests, and one PNG per episode with ``plots``); what the table and the
    comparisons read of it."""
    from cmm.backtest.artefacts import write_backtest
    from cmm.backtest.plots import plot_episode
    from cmm.backtest.runner import run_backtest
    from cmm.io import atomic_dir

    with console.status(f"fitting {name} on train"):
        pol.fit(ds)
    with console.status(f"replaying {ds.name} {split} with {name}"):
        result = run_backtest(ds, pol, split, ladder=run_cfg.ladder, config=bt_cfg)
    folder = out or Path("runs/backtest") / f"{ds.name}-{name}"
    gate = getattr(pol.config, "gate", None)
    with atomic_dir(folder) as tmp:
        # the files of `cmm run`'s backtests, by the same function; the pictures are ours
        written = write_backtest(tmp, result, policy=_policy_record(name, gate),
                                 latency_ns=pol.latency_ns, gate=gate)
        if plots:
            for e in result.episodes["episode"].to_list():
                plot_episode(result, e, tmp / f"episode_{e:03d}.png")
    metrics, payload = written.metrics, written.payload
    values = episode_values(written.episodes, result)
    gross = (_mean_std(values["gross_pnl"].to_numpy())
             if "gross_pnl" in values.columns else None)
    return {"name": name, "metrics": metrics, "latency_ns": pol.latency_ns,
            "wall_s": result.wall_s, "folder": folder, "warnings": result.warnings,
            "values": values, "gross": gross, "payload": payload}


def _write_paired(runs: list[dict], base_name: str) -> None:
    """Each run's comparison with the baseline, in ``runs`` and in its metrics.json."""
    from cmm.backtest.artefacts import write_metrics

    paired = paired_to_baseline({r["name"]: r["values"] for r in runs}, base_name)
    for r in runs:  # each policy's metrics.json gets its comparison with the baseline
        r["paired"] = paired[r["name"]]
        write_metrics(r["folder"], {**r["payload"], "paired": r["paired"]})
