"""The files of one backtest, written the same way by ``cmm run`` and ``cmm backtest``.

A backtest folder holds

- ``metrics.json``: the summary metrics (:func:`cmm.backtest.metrics.summarize`), the replay's
  settings, the dataset and its key, the instrument, the policy (``policy``: what names it),
  the latency it was charged (``latency_ns``), the mixture gate (``gate``, None for the other
  policies), the replay's wall time and its warnings;
- ``episodes.csv``: one row per episode (:func:`cmm.backtest.metrics.episode_metrics`), with
  ``pnl_base`` (the net PnL at the base fee tier) when the replay charged another tier;
- ``records.parquet``: one row per decision; ``fills.parquet``: one row per fill.

Their names are the backtest and crash stages' outputs in the stage contract
(:attr:`cmm.pipeline.graph.Stage.outputs`); the report and ``cmm backtest`` read them through
the readers here (:func:`read_metrics`, :func:`read_episodes`, :func:`read_records`,
:func:`read_fills`). Each file is written atomically, so a reader never sees half of one.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from cmm.io import atomic_path, write_json

if TYPE_CHECKING:
    import polars as pl

    from cmm.backtest.runner import BacktestResult

SCHEMA_VERSION = 1
METRICS_FILE = "metrics.json"
EPISODES_FILE = "episodes.csv"
RECORDS_FILE = "records.parquet"
FILLS_FILE = "fills.parquet"
FILES = (METRICS_FILE, EPISODES_FILE, RECORDS_FILE, FILLS_FILE)


@dataclass(frozen=True)
class Written:
    """What :func:`write_backtest` wrote: ``payload`` (the content of ``metrics.json``, its
    ``metrics`` the summary) and ``episodes`` (the frame of ``episodes.csv``)."""

    payload: dict
    episodes: pl.DataFrame

    @property
    def metrics(self) -> dict:
        return self.payload["metrics"]


def episode_table(result: BacktestResult) -> pl.DataFrame:
    """The per-episode table of ``episodes.csv``: :func:`~cmm.backtest.metrics.episode_metrics`
    plus, when the replay charged a tier other than ``base``, ``pnl_base`` (the report's
    second main table is at the base tier)."""
    from cmm.backtest.metrics import episode_metrics

    episodes = episode_metrics(result)
    if result.fee_tier != "base":
        import polars as pl

        from cmm.backtest.metrics import net_pnl_at

        episodes = episodes.with_columns(pl.Series("pnl_base", net_pnl_at(result, "base")))
    return episodes


def write_backtest(folder: str | Path, result: BacktestResult, *, policy: dict,
                   latency_ns: int, gate: str | None = None) -> Written:
    """Write the backtest ``result`` into ``folder`` (see the module docstring). ``policy``:
    what names the policy (a :class:`cmm.pipeline.policies.PolicySpec`'s ``to_json()``);
    ``latency_ns``: the latency it was charged (the policy's ``latency_ns``)."""
    from cmm.backtest.metrics import summarize

    folder = Path(folder)
    payload = {
        "schema_version": SCHEMA_VERSION, "metrics": summarize(result),
        "settings": result.settings, "dataset": result.dataset,
        "dataset_key": result.settings.get("dataset_key"), "policy": policy,
        "latency_ns": latency_ns, "gate": gate, "wall_s": result.wall_s,
        "instrument": result.instrument.model_dump(mode="json"), "warnings": result.warnings}
    write_metrics(folder, payload)
    episodes = episode_table(result)
    with atomic_path(folder / EPISODES_FILE) as tmp:
        episodes.write_csv(tmp)
    with atomic_path(folder / RECORDS_FILE) as tmp:
        result.records.write_parquet(tmp)
    with atomic_path(folder / FILLS_FILE) as tmp:
        result.fills.write_parquet(tmp)
    return Written(payload, episodes)


def write_metrics(folder: str | Path, payload: dict) -> None:
    """``metrics.json`` of the backtest in ``folder`` (``cmm backtest`` rewrites it once the
    paired comparison with its baseline is known)."""
    write_json(Path(folder) / METRICS_FILE, payload)


def read_metrics(folder: str | Path) -> dict:
    """``metrics.json`` of the backtest in ``folder`` (a damaged file: an error naming it)."""
    from cmm.io import read_json

    return read_json(Path(folder) / METRICS_FILE)


def read_episodes(folder: str | Path) -> pl.DataFrame:
    """``episodes.csv``: one row per episode."""
    import polars as pl

    from cmm.io import reading

    path = Path(folder) / EPISODES_FILE
    with reading(path):
        return pl.read_csv(path)


def read_records(folder: str | Path, columns: list[str] | None = None) -> pl.DataFrame:
    """``records.parquet``: one row per decision (``columns``: only these)."""
    from cmm.io import read_parquet

    return read_parquet(Path(folder) / RECORDS_FILE, columns=columns)


def read_fills(folder: str | Path) -> pl.DataFrame:
    """``fills.parquet``: one row per fill."""
    from cmm.io import read_parquet

    return read_parquet(Path(folder) / FILLS_FILE)
