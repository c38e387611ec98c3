"""``cmm data``: list, fetch, prepare and inspect datasets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

data_app = typer.Typer(help="Datasets: list the registry, fetch raw files, prepare and inspect them.",
                       no_args_is_help=True)
console = Console()

DatasetArg = Annotated[str, typer.Argument(
    help="A registered dataset name (see `cmm data list`) or the path of your own dataset YAML spec.")]
CacheOpt = Annotated[Path | None, typer.Option(
    help="Folder for prepared artefacts (default: $CMM_CACHE_DIR or ~/.cache/cmm).")]


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")


@data_app.command("list")
def list_datasets() -> None:
    """List the built-in datasets and whether their raw files are present in the data folder."""
    from cmm.data.spec import builtin_datasets
    from cmm.io import default_data_dir

    table = Table(title=f"datasets (data folder: {default_data_dir()})")
    for col in ("name", "format", "files", "present", "tick", "lot", "dt ms"):
        table.add_column(col)
    for name, spec in builtin_datasets().items():
        spec = spec.model_copy(update={"base_dir": str(default_data_dir())})
        present = sum(p.is_file() for p in spec.file_paths())
        grid = spec.grid
        table.add_row(name, spec.format, str(len(spec.files)), f"{present}/{len(spec.files)}",
                      f"{spec.instrument.tick_size:g}", f"{spec.instrument.lot_size:g}",
                      str(grid.dt_ms if grid else 100))
    console.print(table)


@data_app.command("fetch")
def fetch(
    dataset: DatasetArg,
    data_dir: Annotated[Path | None, typer.Option(help="Where to put the files (default: the data folder).")] = None,
    force: Annotated[bool, typer.Option(help="Download even when a file with the right sha256 exists.")] = False,
) -> None:
    """Download a dataset's raw files from their source URLs, verifying each sha256."""
    from cmm.data.fetch import fetch_dataset

    for path, status in fetch_dataset(dataset, data_dir=data_dir, force=force):
        console.print(f"{status:>10}  {path}")


@data_app.command("prepare")
def prepare(dataset: DatasetArg, cache_dir: CacheOpt = None) -> None:
    """Read the raw files, build sessions, grid, features, targets, regimes and splits (cached)."""
    from cmm.data.inspect import summary_table
    from cmm.data.prepare import prepare_dataset

    ds = prepare_dataset(dataset, cache_dir=cache_dir)
    console.print(summary_table(ds))
    console.print(f"artefacts: {ds.folder}")


@data_app.command("inspect")
def inspect(
    dataset: DatasetArg,
    out: Annotated[Path, typer.Option(help="Folder for the summary JSON and the PNG.")] = Path("runs/inspect"),
    cache_dir: CacheOpt = None,
) -> None:
    """Summary table plus a PNG of mid, spread, depth, traded volume and regimes over time, and
    for captures of an hour or more the intraday pattern (spread, volume, volatility per 5
    minutes of local time of day) as a second PNG."""
    from cmm.data.inspect import intraday_path, plot_dataset, summary, summary_table
    from cmm.data.prepare import prepare_dataset
    from cmm.io import write_json

    ds = prepare_dataset(dataset, cache_dir=cache_dir)
    facts = summary(ds)
    console.print(summary_table(ds))
    console.print(facts["intraday"]["line"], highlight=False, soft_wrap=True)
    out.mkdir(parents=True, exist_ok=True)
    png = plot_dataset(ds, out / f"{ds.name}.png")
    write_json(out / f"{ds.name}.json", facts)
    written = [png] + [p for p in (intraday_path(png),) if p.is_file()]
    console.print(f"wrote {', '.join(map(str, written))} and {out / (ds.name + '.json')}",
                  highlight=False, soft_wrap=True)
