"""``cmm distill`` and ``cmm moe``: fit the OFDD experts (and the baselines and ablations), then
the Hajek-MoE and its controls; save the CMM the Quoter and the ``cmm`` policy load."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

console = Console()

DatasetOpt = Annotated[str, typer.Option(
    help="A registered dataset name (see `cmm data list`) or the path of a dataset YAML spec.")]


def register(app: typer.Typer) -> None:
    app.command("distill")(distill)
    app.command("moe")(moe)


def _dataset(name: str):
    from cmm.data.prepare import prepare_dataset

    return prepare_dataset(name)


def distill(
    dataset: DatasetOpt = "binance-usdm-btcusdt",
    teacher: Annotated[Path, typer.Option(
        help="Fitted teacher folder with cached features (`cmm teacher fit` + "
             "`cmm teacher features`).")] = Path("runs/binance-usdm-btcusdt/teacher"),
    probe: Annotated[Path | None, typer.Option(
        help="The probe's probe.json (default: <teacher>/../probe/probe.json).")] = None,
    out: Annotated[Path, typer.Option(help="Folder for experts.json and experts.safetensors.")
                   ] = Path("runs/binance-usdm-btcusdt/distill"),
    config: Annotated[Path | None, typer.Option(
        help="YAML with DistillConfig fields (unknown keys are rejected).")] = None,
    workers: Annotated[int | None, typer.Option(help="Worker processes (overrides "
                                                     "max_workers).")] = None,
    only: Annotated[str | None, typer.Option(
        help="Comma-separated variants to train besides cmm (e.g. kd,no_task).")] = None,
) -> None:
    """Fit the OFDD experts (task x regime x layer group), the distillation baselines and the
    ablations, each early-stopped; independent fits run in parallel worker processes."""
    from cmm.config import DistillConfig, load_yaml_model
    from cmm.distill.pipeline import run_distill

    cfg = load_yaml_model(DistillConfig, config) if config else DistillConfig()
    if workers is not None:
        cfg = cfg.model_copy(update={"max_workers": max(1, workers)})
    ds = _dataset(dataset)

    def done(k: int, n: int) -> None:
        console.print(f"  student {k}/{n} fitted")

    meta = run_distill(ds, teacher, cfg, out, probe_path=probe,
                       only=tuple(only.split(",")) if only else None, on_done=done)
    console.print(f"assignment: {meta['assignment']}")
    for name, n in meta["parameters"].items():
        console.print(f"  {name:<10} {n:>9,d} parameters")
    console.print(f"wrote {out / 'experts.json'} ({meta['seconds']:.0f} s)")


def moe(
    dataset: DatasetOpt = "binance-usdm-btcusdt",
    experts: Annotated[Path, typer.Option(help="Folder written by `cmm distill`.")
                       ] = Path("runs/binance-usdm-btcusdt/distill"),
    out: Annotated[Path | None, typer.Option(
        help="Folder for the mixtures and evaluation (default: the experts folder).")] = None,
    config: Annotated[Path | None, typer.Option(
        help="YAML with MoEConfig fields (unknown keys are rejected).")] = None,
    latency: Annotated[bool, typer.Option(help="Measure the Quoter's decision latency.")] = True,
    teacher: Annotated[Path | None, typer.Option(
        help="Teacher folder whose features/ hold its predictions, for the table's teacher rows "
             "(default: the teacher the experts were distilled from).")] = None,
    teacher_row: Annotated[bool, typer.Option(
        help="Add the teacher's rows to the table (its features must be there).")] = True,
) -> None:
    """Fit the Hajek-MoE and the gate controls on validation (experts frozen), save each
    variant's mixture (``<out>/cmm`` is the CMM), time the Quoter, and write the error table."""
    from cmm.config import MoEConfig, load_yaml_model
    from cmm.moe import EVALUATION_FILE, EVALUATION_TABLE_FILE
    from cmm.moe.pipeline import run_moe

    cfg = load_yaml_model(MoEConfig, config) if config else MoEConfig()
    ds = _dataset(dataset)
    teacher_dir = (teacher or _recorded_teacher(experts)) if teacher_row else None
    report = run_moe(ds, experts, cfg, out, measure_latency=latency, teacher_dir=teacher_dir)
    folder = Path(out or experts)
    console.print((folder / EVALUATION_TABLE_FILE).read_text())
    console.print(f"wrote {folder / EVALUATION_FILE}, mixtures under {folder}")
    if report.get("latency"):
        console.print(f"latency: {report['latency']}")


def _recorded_teacher(experts: Path) -> Path:
    """The teacher folder recorded in the experts' ``experts.json`` (``teacher.dir``)."""
    from cmm.distill.pipeline import KIND, META_FILE, SCHEMA_VERSION, TENSORS_FILE
    from cmm.io import read_artefact_meta

    meta, _ = read_artefact_meta(experts, META_FILE, TENSORS_FILE, kind=KIND,
                                 schema_version=SCHEMA_VERSION, command="cmm distill")
    return Path(meta["teacher"]["dir"])
