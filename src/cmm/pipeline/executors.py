"""Executors: what runs a :class:`~cmm.pipeline.graph.StageGraph`'s stages.

An executor is a callable ``executor(graph, runner)``. Every executor keeps the same rules,
owned by :class:`~cmm.pipeline.stages.StageRunner`: a stage found done (same key, intact,
current) is skipped, a stage runs after the stages it reads, its ``stage.json`` is written last
(so a stage killed anywhere is not marked done and reruns), and its checks run in the driver
before any stage that reads it.

- :func:`run_in_process` (the default): every stage in graph order in this process.
- :func:`run_on_ray`: stages as Ray tasks, as many at once as the cluster's CPUs (and GPUs)
  allow, on one machine (``ray.init`` with this machine's cores) or a cluster (``address``);
  the run folder must be on storage every worker sees.

A stage that raises stops the stages below it. Without ``keep_going`` the run stops there
(stages running elsewhere are cancelled: not marked done, they rerun next time) and the error
is raised as the stage raised it; with ``keep_going`` every stage that does not read a failed
one still runs, and :class:`StagesFailed` is raised at the end naming each failed stage with
its own message and the stages left out below it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

from cmm.errors import CmmError
from cmm.pipeline.graph import StageGraph
from cmm.pipeline.stages import StageRunner

log = logging.getLogger("cmm.run")

Executor = Callable[[StageGraph, StageRunner], None]


@dataclass(frozen=True)
class Failure:
    """A stage that raised: its id, the error as the stage raised it, and its text."""

    stage: str
    error: BaseException
    message: str


class StagesFailed(CmmError):
    """Stages raised with ``keep_going`` set: each with its own message, and the stages left
    out because they read one."""

    def __init__(self, failures: list[Failure], left_out: list[str], finished: int) -> None:
        self.failures = failures
        self.left_out = left_out
        lines = [f"{len(failures)} stage(s) failed, {len(left_out)} left out below them, "
                 f"{finished} finished:"]
        lines += [f"  {f.stage}: {f.message}" for f in failures]
        if left_out:
            lines.append("  left out: " + ", ".join(left_out))
        super().__init__("\n".join(lines))


def describe(error: BaseException) -> str:
    """An error as the run reports it: its type (unless it is one of cmm's, which read as
    sentences) and its message."""
    text = str(error) or type(error).__name__
    return text if isinstance(error, CmmError) else f"{type(error).__name__}: {text}"


def run_in_process(graph: StageGraph, runner: StageRunner, *, keep_going: bool = False
                   ) -> None:
    """The default executor: every stage in graph order in this process (each stage's reads
    come before it), a stage's checks right after it."""
    failed: dict[str, Failure] = {}
    left_out: list[str] = []
    for stage in graph:
        if any(r in failed or r in left_out for r in stage.reads):
            left_out.append(stage.id)
            continue
        try:
            result = runner.run_stage(stage)
            if stage.checks is not None:
                stage.checks(result)
        except Exception as exc:
            if not keep_going:
                raise
            log.exception("stage %s failed", stage.id)
            failed[stage.id] = Failure(stage.id, exc, describe(exc))
    if failed:
        raise StagesFailed(list(failed.values()), left_out, len(runner.results))


def keep_going(executor: Callable[..., None]) -> Executor:
    """``executor`` with ``keep_going`` set."""
    return lambda graph, runner: executor(graph, runner, keep_going=True)
