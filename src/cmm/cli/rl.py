"""``cmm rl train``: train an RL market maker (PPO or DQN) on a dataset's training split, keep the
checkpoint with the best validation EPnL, save it to ``runs/<dataset>/rl/<algo>``, and measure
the gap between the training simulator and hftbacktest on the validation episodes
(``sim_gap.json`` there).

Backtest it like any other policy: ``cmm backtest --dataset D --policy ppo,dqn,as,fixed``
(``rl`` with ``policies: {rl: {algo: ..., artefact: ...}}`` in a ``--config`` YAML)."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: shared cores

from pathlib import Path  # noqa: E402
from typing import Annotated  # noqa: E402

import typer  # noqa: E402
from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

console = Console()
rl_app = typer.Typer(help="RL market-making baselines (stable-baselines3 PPO and DQN).",
                     no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(rl_app, name="rl")


@rl_app.command("train")
def train(
    algo: Annotated[str, typer.Option(help="ppo or dqn.")] = "ppo",
    dataset: Annotated[str, typer.Option(
        help="A registered dataset name (see `cmm data list`) or the path of a dataset YAML spec.")
    ] = "binance-usdm-btcusdt",
    config: Annotated[Path | None, typer.Option(
        help="YAML with RLConfig fields (cmm.config.RLConfig; unknown keys are rejected).")] = None,
    out: Annotated[Path | None, typer.Option(
        help="Folder for agent.json and policy.safetensors (default runs/<dataset>/rl/<algo>).")
    ] = None,
    timesteps: Annotated[int | None, typer.Option(help="Environment steps (overrides the config).")] = None,
    seed: Annotated[int | None, typer.Option(help="Seed (overrides the config).")] = None,
    max_seconds: Annotated[float | None, typer.Option(
        help="Wall-clock limit of training in seconds, 0 = none (overrides the config).")] = None,
) -> None:
    """Train PPO or DQN in the market-making environment; select on validation; save."""
    from cmm.config import RLConfig, load_yaml_model, validate_model
    from cmm.data.prepare import prepare_dataset
    from cmm.errors import InputError

    if algo not in ("ppo", "dqn"):
        raise InputError("unknown algorithm", field="--algo", expected="ppo or dqn", got=algo)
    cfg = load_yaml_model(RLConfig, config) if config else RLConfig()
    updates = {"algo": algo, "total_timesteps": timesteps, "seed": seed,
               "max_train_seconds": max_seconds}
    data = {**cfg.model_dump(), **{k: v for k, v in updates.items() if v is not None}}
    cfg = validate_model(RLConfig, data)
    ds = prepare_dataset(dataset)

    from cmm.rl import SIM_GAP_FILE
    from cmm.rl.train import train_agent

    def log(entry: dict) -> None:
        star = " *" if entry.get("best") else ""
        console.print(f"  {entry['timesteps']:>8,} steps  {entry['wall_s']:6.0f} s  validation "
                      f"EPnL {entry['EPnL']:9.4f}  MAP {entry['MAP']:.4g}  fills "
                      f"{entry['fills']:,}{star}")

    console.print(f"training {algo} on {ds.name} train ({cfg.timesteps:,} steps, "
                  f"limit {cfg.max_train_seconds:.0f} s); validation checks (env):")
    result = train_agent(ds, cfg, out, log=log)
    m = result.meta
    table = Table(title=f"{ds.name} | {algo} | selected on validation (environment)")
    table.add_column("what")
    table.add_column("value", justify="right")
    tr, best, lat = m["training"], m["selection"]["best"], m["latency"]
    rows = [("timesteps", f"{tr['timesteps']:,}"), ("training wall s", f"{tr['wall_s']:.1f}"),
            ("env steps / s (learning)", f"{tr['steps_per_s']:.0f}"),
            ("stopped by time limit", str(tr["stopped_by_time_limit"])),
            ("selected at step", f"{best['timesteps']:,}"),
            ("validation EPnL (env)", f"{best['EPnL']:.4f} ± {best['EPnL_std']:.3g}"),
            ("validation MAP (env)", f"{best['MAP']:.4g}"),
            ("decision latency p50 / p90 us", f"{lat['p50_us']:.0f} / {lat['p90_us']:.0f}")]
    for r in rows:
        table.add_row(*r)
    console.print(table)
    gap = result.sim_gap
    if gap is not None:
        pd = gap.get("paired")
        diff = (f"sim - hbt {pd['mean']:+.4g} [{pd['low']:.4g}, {pd['high']:.4g}]: "
                f"{gap['reading']}" if pd else gap.get("reading", ""))
        console.print(f"simulator vs hftbacktest on {gap['episodes']} {gap['split']} episodes: "
                      f"EPnL {gap['sim_pnl_mean']:.4g} vs {gap['hbt_pnl_mean']:.4g}, fills "
                      f"{gap['sim_fills_mean']:.4g} vs {gap['hbt_fills_mean']:.4g} per episode; "
                      f"{diff}  ({result.folder / SIM_GAP_FILE})", highlight=False)
    console.print(f"saved: {result.folder}  (backtest: cmm backtest --dataset {ds.name} "
                  f"--policy {algo} --split validation)")
