"""Stages that skip themselves when their artefact is already there, and a progress display.

A stage owns one output folder. Its *key* hashes everything that determines its output: its
kind, its settings and the keys of the stages it reads (so a change anywhere upstream reaches
every stage below). When a stage finishes, :class:`StageRunner` writes ``stage.json`` into its
folder *last* (atomically): the key, the inputs that made it, how long it took. A folder whose
``stage.json`` holds the same key is complete and current, and the stage is skipped; any other
folder (no ``stage.json``: interrupted; another key: stale) is removed and the stage runs
again from scratch. The stages themselves write their files atomically, so an interruption at
any moment leaves either a complete, marked folder or one that is redone.

No stale or corrupt artefact is trusted:

- ``stage.json`` records the size and sha256 of every file the stage wrote (``files``). Before a
  stage is skipped, its files are checked: sizes first, then checksums (each file hashed once
  per process while unchanged; a tiny run's 80 MB of stage folders: 0.07-0.3 s per run). A
  missing, truncated or overwritten file is named, and the stage is redone. Every stage a run
  reads is either run or skipped (so checked) earlier in the same process, before any reader.
- Each completion gets a fresh ``stamp``, and ``stage.json`` records the stamps of the stages it
  read (``after``: every finished stage whose key appears in its inputs, or in ``after=``).
  The rule: **a stage is redone when any stage it read was redone since** - forced
  (``--force``), stale, interrupted or corrupt - even when its own key is unchanged. So a
  forced or repaired stage redoes everything below it down to the report (whose inputs hold
  every key), and this survives an interruption: a dependent left from before a rerun of its
  input still holds the old stamp. Markers written before stamps and checksums were recorded
  (no ``files``, no ``stamp``) are trusted as before until their stage is redone.

``CMM_STAGE_HOLD=<glob>:<seconds>`` (for tests of interruption) sleeps after a matching stage's
work and before its ``stage.json`` is written: the widest window in which a kill leaves complete
files without their completion mark.
"""

from __future__ import annotations

import contextlib
import fnmatch
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from cmm.errors import CmmError
from cmm.io import RESUME_DIR, check_folder, folder_checksums, write_json
from cmm.pipeline.graph import SCHEMA_VERSION, ProgressFn, Stage, strings_in

MARKER = "stage.json"
TIMINGS_FILE = "timings.json"  # in the cache folder: the last time of each stage kind

log = logging.getLogger("cmm.run")


@dataclass
class StageResult:
    """What a finished (or skipped) stage left: its key, folder, time and what it reported."""

    key: str
    folder: Path
    seconds: float
    cached: bool
    info: dict = field(default_factory=dict)
    stamp: str | None = None  # this completion's id (None: marked before stamps were kept)


def read_marker(folder: str | Path) -> dict | None:
    path = Path(folder) / MARKER
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


# ------------------------------------------------------------------------------ time estimates


class Timings:
    """Seconds each stage took last time, by ``kind`` and ``scope`` (e.g. the dataset), kept in
    ``timings.json`` under the cache folder: the estimates of the progress display."""

    # First-run figures of configs/default.yaml on 2 busy CPU cores, used until a stage has
    # been timed on this machine once.
    PRIORS = {"data": 20.0, "teacher": 240.0, "features": 140.0, "probe": 80.0,
              "distill": 50.0, "moe": 10.0, "backtest": 3.0, "crash": 6.0, "report": 5.0,
              "rl": 540.0}

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.data: dict[str, float] = {}
        if path is not None and path.is_file():
            with contextlib.suppress(OSError, json.JSONDecodeError):
                self.data = json.loads(path.read_text())

    @classmethod
    def in_cache(cls) -> Timings:
        """This machine's timings, ``timings.json`` in the cache folder."""
        from cmm.io import default_cache_dir

        return cls(default_cache_dir() / TIMINGS_FILE)

    def estimate(self, kind: str, scope: str, prior: float | None = None) -> float | None:
        for k in (f"{kind}|{scope}", kind):
            if k in self.data:
                return float(self.data[k])
        return prior if prior is not None else self.PRIORS.get(kind)

    def record(self, kind: str, scope: str, seconds: float) -> None:
        self.data[f"{kind}|{scope}"] = round(seconds, 2)
        self.data[kind] = round(seconds, 2)
        if self.path is not None:
            with contextlib.suppress(OSError):
                write_json(self.path, self.data)


# ---------------------------------------------------------------------------------- display


class Display:
    """One line per running stage: a bar (the stage's own progress when it reports it, else
    time against its estimate), elapsed time and time left; a total line on top whose time left
    is the estimates of the stages still to run, over the executor's ``workers``. Without a
    terminal: one plain line per stage start and end. Several stages may run at once (an
    executor with workers opens each with :meth:`begin` and closes it with :meth:`end`)."""

    def __init__(self, enabled: bool = True) -> None:
        from rich.console import Console

        self.console = Console()
        self.live = enabled and self.console.is_terminal
        self.progress = None
        self.workers = 1  # stages the executor runs at once: the total's time left divides by it
        self._pending: dict[str, float] = {}
        self._running: dict[str, Running] = {}

    def __enter__(self) -> Display:
        if self.live:
            from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(TextColumn("{task.description:<44}"), BarColumn(bar_width=24),
                                     TextColumn("{task.fields[state]:<8}"), TimeElapsedColumn(),
                                     _left_column()(self), console=self.console,
                                     refresh_per_second=4)
            self.progress.__enter__()
            self.progress.add_task("[bold]all stages", total=None, state="", total_line=True)
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:
            self.progress.__exit__(*exc)

    def plan(self, estimates: dict[str, float | None]) -> None:
        """Stages still to run and their estimates (seconds), for the total's time left."""
        self._pending = {k: v or 0.0 for k, v in estimates.items()}

    def total_left(self) -> float:
        left = sum(self._pending.values())
        now = time.perf_counter()
        for r in self._running.values():
            left += max(r.estimate - (now - r.start), 0.0)
        return left / max(self.workers, 1)

    def print(self, text: str) -> None:
        (self.progress.console if self.progress else self.console).print(text, soft_wrap=True)

    def skipped(self, stage_id: str) -> None:
        self._pending.pop(stage_id, None)
        if self.progress is not None:
            self.progress.console.print(f"[dim]cached  {stage_id}[/dim]")
        else:
            self.console.print(f"cached  {stage_id}")

    def begin(self, stage_id: str, estimate: float | None, where: str = "") -> Running:
        """A stage starts (``where``: the worker it runs on, when not here)."""
        self._pending.pop(stage_id, None)
        running = Running(stage_id, time.perf_counter(), estimate or 0.0)
        self._running[stage_id] = running
        at = f" on {where}" if where else ""
        if self.progress is None:
            self.console.print(f"start   {stage_id}{at}"
                               + (f" (estimate {fmt_s(estimate)})" if estimate else ""))
            return running
        tid = self.progress.add_task(stage_id, total=None, state="running", estimate=estimate)

        def on_progress(sub: str, done: int, total: int) -> None:
            self.progress.update(tid, description=f"{stage_id} [dim]{sub}[/dim]",
                                 completed=done, total=max(total, 1), own=True)

        running.task, running.on_progress = tid, on_progress
        return running

    def end(self, running: Running, ok: bool = True, why: str = "") -> None:
        """A stage ends: done, or failed (``why``: e.g. cancelled)."""
        self._running.pop(running.stage_id, None)
        took = fmt_s(time.perf_counter() - running.start)
        what = (f"done    {running.stage_id} in {took}" if ok else
                f"failed  {running.stage_id} after {took}" + (f" ({why})" if why else ""))
        if self.progress is None:
            self.console.print(what)
            return
        # finished stages leave the live area (which stays two lines high) for one line above
        self.progress.remove_task(running.task)
        self.progress.console.print(what.replace("done", "[green]done[/green]", 1) if ok else
                                    what.replace("failed", "[red]failed[/red]", 1))

    @contextlib.contextmanager
    def stage(self, stage_id: str, estimate: float | None) -> Iterator[ProgressFn]:
        running = self.begin(stage_id, estimate)
        try:
            yield running.on_progress
        except BaseException:
            self.end(running, ok=False)
            raise
        self.end(running)


@dataclass
class Running:
    """A stage the display shows running: since when, its estimate, its progress hook."""

    stage_id: str
    start: float
    estimate: float
    task: Any = None
    on_progress: ProgressFn = field(default=lambda *a: None)


def fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(round(seconds))
    return f"{seconds // 60}:{seconds % 60:02d}" if seconds >= 60 else f"{seconds}s"


def _left_column():
    from rich.progress import ProgressColumn
    from rich.text import Text

    class LeftColumn(ProgressColumn):
        """Time left: the stage's own rate when it reports progress, else its estimate; on
        the total line, the estimates of every stage still to run."""

        def __init__(self, display: Display) -> None:
            super().__init__()
            self.display = display

        def render(self, task) -> Text:
            if task.fields.get("total_line"):
                return Text(f"~{fmt_s(self.display.total_left())} left", style="bold cyan")
            if task.finished:
                return Text("")
            if task.fields.get("own") and task.time_remaining is not None:
                return Text(f"{fmt_s(task.time_remaining)} left", style="cyan")
            est = task.fields.get("estimate")
            if est:
                return Text(f"~{fmt_s(max(est - (task.elapsed or 0.0), 0.0))} left",
                            style="cyan")
            return Text("")

    return LeftColumn


# ------------------------------------------------------------------------------ the runner


class StageRunner:
    """Runs stages in the calling process, skipping those whose folder is complete for the same
    key, intact, and made after the stages it reads were (see the module docstring). An
    executor that runs stages elsewhere (:mod:`cmm.pipeline.executors`) asks it
    :meth:`found_done` first, runs :func:`execute_stage` on a worker, and hands the result to
    :meth:`finished`."""

    def __init__(self, display: Display, timings: Timings, force: tuple[str, ...] = ()) -> None:
        self.display = display
        self.timings = timings
        self.force = force
        self.results: dict[str, StageResult] = {}
        self._by_key: dict[str, tuple[str, StageResult]] = {}  # key or alias -> (id, result)
        self._marked: dict[str, float | None] = {}  # stage id -> its stage.json's seconds

    def upstream(self, stage: Stage) -> dict[str, str | None]:
        """The stamps of the stages ``stage`` reads, by their keys (``stage.json``'s
        ``after``)."""
        return {self.results[r].key: self.results[r].stamp for r in stage.reads}

    def reads(self, stage: Stage) -> dict[str, StageResult]:
        return {r: self.results[r] for r in stage.reads}

    def _not_current(self, folder: Path, marker: dict, upstream: dict[str, str | None]
                     ) -> str | None:
        """Why a folder marked with the right key cannot be trusted (None when it can)."""
        recorded = marker.get("after") or {}
        for key, stamp in upstream.items():
            if recorded.get(key) != stamp:
                return f"its input {self._by_key[key][0]} was redone since"
        bad = check_folder(folder, marker.get("files") or {})
        if bad is not None:
            return f"{bad[0]}: {bad[1]}"
        return None

    def found_done(self, stage: Stage) -> StageResult | None:
        """``stage``'s result when its folder is complete, current and intact (and it is not
        forced), else None (the reason logged); every stage it reads must be finished."""
        folder = Path(stage.folder)
        marker = read_marker(folder)
        forced = any(fnmatch.fnmatch(stage.id, pat) for pat in self.force)
        if marker is not None and marker.get("key") == stage.key and not forced:
            why = self._not_current(folder, marker, self.upstream(stage))
            if why is None:
                log.info("cached %s (key %s)", stage.id, stage.key)
                return StageResult(stage.key, folder, float(marker.get("seconds", 0.0)), True,
                                   marker.get("info") or {}, marker.get("stamp"))
            log.warning("redoing %s: %s", stage.id, why)
            from rich.markup import escape

            self.display.print(f"redo    {stage.id}: {escape(why)}")
        elif marker is not None:
            log.info("stale %s: key %s, want %s; redoing it", stage.id, marker.get("key"),
                     stage.key)
        elif folder.exists():
            log.info("incomplete %s (no %s); redoing it", stage.id, MARKER)
        return None

    def estimate(self, stage: Stage) -> float | None:
        """Its last time in this folder, else the kind's last time here (updated as stages of
        its kind finish), else the prior. The folder's ``stage.json`` is read once per stage:
        the display's plan, an executor's order and its progress line all ask."""
        if stage.id not in self._marked:
            marker = read_marker(stage.folder)
            self._marked[stage.id] = (float(marker["seconds"]) if marker is not None
                                      and marker.get("seconds") else None)
        marked = self._marked[stage.id]
        return marked if marked is not None else self.timings.estimate(stage.kind, stage.scope)

    def run_stage(self, stage: Stage) -> StageResult:
        """Run ``stage`` here unless it is found done; every stage it reads must be
        finished."""
        done = self.found_done(stage)
        if done is not None:
            self.display.skipped(stage.id)
            return self.finished(stage, done)
        with self.display.stage(stage.id, self.estimate(stage)) as on_progress:
            result = execute_stage(stage, self.upstream(stage), self.reads(stage), on_progress)
        return self.finished(stage, result)

    def finished(self, stage: Stage, result: StageResult) -> StageResult:
        """Record a stage's result (run here, elsewhere, or found done)."""
        if not result.cached:
            self.timings.record(stage.kind, stage.scope, result.seconds)
        self.results[stage.id] = result
        for k in (result.key, *stage.aliases):
            self._by_key[k] = (stage.id, result)
        return result

    def run(self, stage_id: str, kind: str, folder: str | Path, inputs: dict,
            work: Callable[[Path, ProgressFn], dict | None], scope: str = "",
            after: tuple[str, ...] = (), provides: tuple[str, ...] = ()) -> StageResult:
        """One stage without a graph: ``work(folder, on_progress)``; the stages it reads are
        the finished ones whose keys its ``inputs`` (or ``after``) name."""
        named = [*strings_in(inputs), *after]
        reads = dict.fromkeys(self._by_key[k][0] for k in named if k in self._by_key)
        return self.run_stage(Stage(stage_id, kind, Path(folder), inputs,
                                    lambda f, p, r: work(f, p), tuple(reads), scope,
                                    aliases=provides))


def execute_stage(stage: Stage, upstream: dict[str, str | None],
                  reads: dict[str, StageResult], on_progress: ProgressFn) -> StageResult:
    """Run one stage's work from a clean folder and mark it complete (``stage.json``, written
    last and atomically): the part of a stage that runs on a worker. ``upstream``: the stamps
    of the stages it reads, by key; ``reads``: their results, by id."""
    folder = Path(stage.folder)
    _clear_keeping_resume(folder)
    log.info("start %s (key %s)", stage.id, stage.key)
    t0 = time.perf_counter()
    stamp = uuid.uuid4().hex[:16]
    info = stage.work(folder, on_progress, reads) or {}
    missing = [name for name in stage.outputs if not (folder / name).exists()]
    if missing:  # the contract: a stage is marked done only with every output it declares
        raise CmmError(f"stage {stage.id} finished without its output(s) "
                       f"{', '.join(missing)} in {folder}; it is not marked done")
    seconds = time.perf_counter() - t0
    _hold(stage.id)
    write_json(folder / MARKER, {
        "schema_version": SCHEMA_VERSION, "stage": stage.id, "kind": stage.kind,
        "key": stage.key, "inputs": stage.inputs, "info": info, "seconds": seconds,
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "stamp": stamp, "after": upstream,
        "files": folder_checksums(folder, exclude=(MARKER,))})
    log.info("done %s in %.1f s", stage.id, seconds)
    return StageResult(stage.key, folder, seconds, False, info, stamp)


def _clear_keeping_resume(folder: Path) -> None:
    """Empty ``folder`` for a fresh run of its stage, except its ``resume/`` checkpoints, which
    the stage checks against its own settings before using (and removes when it finishes)."""
    keep = folder / RESUME_DIR
    aside = folder.parent / f".{folder.name}.{RESUME_DIR}-{os.getpid()}"
    if keep.is_dir():
        keep.rename(aside)
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    if aside.is_dir():
        aside.rename(keep)


def _hold(stage_id: str) -> None:
    spec = os.environ.get("CMM_STAGE_HOLD")
    if not spec:
        return
    pattern, _, seconds = spec.rpartition(":")
    if fnmatch.fnmatch(stage_id, pattern):
        log.info("holding %s for %s s before marking it complete (CMM_STAGE_HOLD)", stage_id,
                 seconds)
        time.sleep(float(seconds))


def jsonable(obj: Any) -> Any:
    """Settings as plain JSON (pydantic models dumped)."""
    if hasattr(obj, "model_dump"):
        return obj.model_dump(mode="json")
    return obj
