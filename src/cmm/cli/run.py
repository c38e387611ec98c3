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
    plan: Annotated[bool, typer.Option(
        "--plan", help="Print the stage graph instead of running it: stages per kind, their "
                       "estimated seconds, how many are done already, the total stage time "
                       "and the critical path (the least wall time any number of workers "
                       "needs).")] = False,
    executor: Annotated[str, typer.Option(
        help="What runs the stages: 'in-process' (one after another in this process) or "
             "'ray' (as Ray tasks, as many at once as the cores or the cluster allow; needs "
             "the [ray] extra). Both give the same results in the same run folder.")
    ] = "in-process",
    address: Annotated[str | None, typer.Option(
        help="With --executor ray: the address of a running Ray cluster ('auto', "
             "'ray://HOST:10001'); the run folder, data and cache must be on storage every "
             "node sees. Default: a Ray started on this machine for the run.")] = None,
    cpus: Annotated[int | None, typer.Option(
        min=1, help="With --executor ray and no --address: the CPUs the local Ray may use "
                    "(default: all cores).")] = None,
    keep_going: Annotated[bool, typer.Option(
        help="When a stage fails, still run every stage that does not read it, then exit "
             "non-zero naming each failed stage (default: stop at the first failure).")
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
    from cmm.pipeline.layout import RunLayout

    if report_only:
        from cmm.report import build_report
        from cmm.report.render import copy_to_run_folder

        layout = RunLayout.read(root / cfg.name)
        if not layout.manifest.is_file():
            raise InputError("no finished run here; run `cmm run` first", file=layout.manifest)
        build_report(layout.run_dir)
        copy_to_run_folder(layout.run_dir)
        console.print(f"report: {layout.report_html}")
        return
    from cmm.pipeline.executors import make_executor
    from cmm.pipeline.run import Pipeline

    run_with = make_executor(executor, address=address, num_cpus=cpus, keep_going=keep_going)
    if plan:
        _print_plan(Pipeline(cfg, root, base_dir=config.resolve().parent, command=command,
                             config_file=config).plan(), console)
        return
    run_dir = Pipeline(cfg, root, base_dir=config.resolve().parent, command=command,
                       progress=progress, force=tuple(force or ()), config_file=config,
                       executor=run_with).run()
    layout = RunLayout(run_dir, cfg)
    console.print(f"report: {layout.report_html} (and {layout.report_md.name}); "
                  f"log: {layout.log_file}")


def _print_plan(plan: dict, console) -> None:
    from rich.table import Table

    from cmm.pipeline.stages import fmt_s

    table = Table(title=f"{plan['stages']} stages ({plan['done']} done already)")
    for col in ("kind", "stages", "estimated stage time"):
        table.add_column(col, justify="left" if col == "kind" else "right")
    for kind, k in plan["by_kind"].items():
        table.add_row(kind, str(k["stages"]), fmt_s(k["seconds"]))
    console.print(table)
    total, critical = plan["total_s"], plan["critical_s"]
    console.print(f"total stage time {fmt_s(total)}; critical path {fmt_s(critical)} "
                  f"({len(plan['critical_path'])} stages); so at most "
                  f"{total / critical if critical else 1.0:.1f}x faster with enough workers")
    for w in (2, 4, 8, 16):
        console.print(f"  {w:>2} workers: at least {fmt_s(max(critical, total / w))}")
    console.print("critical path: " + " -> ".join(plan["critical_path"]))
