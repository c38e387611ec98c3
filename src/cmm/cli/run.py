"""``cmm run [CONFIG]``: raw data to report in one command (see :mod:`cmm.pipeline.run`)."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: see cmm.teacher

import shlex  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Annotated  # noqa: E402

import typer  # noqa: E402

DEFAULT_CONFIG = Path("configs/default.yaml")


def register(app: typer.Typer) -> None:
    app.command("run")(run)


def load_run_config(path: Path, name: str | None = None):
    from cmm.config import RunConfig, load_yaml_model

    config = load_yaml_model(RunConfig, path)
    if name:
        config = RunConfig.model_validate({**config.model_dump(), "name": name})
    return config


def run(
    config: Annotated[Path, typer.Argument(
        help="Run configuration (YAML with cmm.config.RunConfig fields; unknown keys are "
             "rejected).")] = DEFAULT_CONFIG,
    root: Annotated[Path, typer.Option(help="Folder of run folders: the run goes to "
                                            "<root>/<name>.")] = Path("runs"),
    name: Annotated[str | None, typer.Option(help="Run name (overrides the config's).")
                    ] = None,
    force: Annotated[list[str] | None, typer.Option(
        help="Redo the stages whose id matches this glob even when done (e.g. 'report', "
             "'*/backtest/*'); repeatable.")] = None,
    progress: Annotated[bool, typer.Option(help="Live progress bars (on a terminal).")] = True,
    report_only: Annotated[bool, typer.Option(
        help="Only rebuild report.md/report.html from the run folder's finished stages.")
    ] = False,
) -> None:
    """Run every stage (data, teacher fit, features, probe, experts, mixture, backtests of every
    policy incl. robustness scenarios, report) for every dataset and seed of CONFIG. A stage
    whose artefact for the same inputs and settings exists is skipped, so an interrupted run
    resumes where it stopped. Writes <root>/<name>/ with config.yaml, logs/, the artefacts,
    report.md and report.html."""
    from rich.console import Console

    from cmm.errors import InputError

    console = Console()
    if not config.is_file():
        raise InputError("run configuration not found", file=config,
                         expected="a YAML file such as configs/default.yaml")
    cfg = load_run_config(config, name)
    command = "cmm " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:] else \
        f"cmm run {config}"
    if report_only:
        from cmm.report import build_report
        from cmm.report.render import markdown_for

        run_dir = root / cfg.name
        if not (run_dir / "manifest.json").is_file():
            raise InputError("no finished run here; run `cmm run` first",
                             file=run_dir / "manifest.json")
        build_report(run_dir)
        (run_dir / "report.html").write_bytes((run_dir / "report" / "report.html").read_bytes())
        (run_dir / "report.md").write_text(markdown_for(run_dir, "report"))
        console.print(f"report: {run_dir / 'report.html'}")
        return
    from cmm.pipeline.run import Pipeline

    run_dir = Pipeline(cfg, root, base_dir=config.resolve().parent, command=command,
                       progress=progress, force=tuple(force or ()), config_file=config).run()
    console.print(f"report: {run_dir / 'report.html'} (and report.md); "
                  f"log: {run_dir / 'logs' / 'run.log'}")
