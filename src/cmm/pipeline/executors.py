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

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass

from cmm.errors import CmmError
from cmm.pipeline.graph import Stage, StageGraph
from cmm.pipeline.stages import Running, StageResult, StageRunner

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


# ------------------------------------------------------------------------------------- Ray

# Environment a worker needs to find the same data, cache and model as the driver (a local
# Ray's workers inherit it; a cluster's get it through the job's runtime environment).
_FORWARDED_ENV = ("CMM_", "HF_", "TRANSFORMERS_", "OMP_WAIT_POLICY")
_POLL_S = 0.25  # how often the driver gathers progress and logs while stages run
_PROGRESS_EVERY_S = 0.5  # a worker's progress messages, at most this often per stage


def import_ray():
    """The ``ray`` module, or a CmmError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise CmmError("the Ray executor needs Ray: pip install -e '.[ray]' (or "
                       "pip install 'ray>=2.40')") from None
    return ray


def run_on_ray(graph: StageGraph, runner: StageRunner, *, address: str | None = None,
               num_cpus: int | None = None, keep_going: bool = False) -> None:
    """Every stage as a Ray task once the stages it reads are finished, as many at once as the
    cluster's resources allow (a stage's ``resources``: ``num_cpus``, and one GPU for a stage
    that may use one when the cluster has GPUs). ``address``: a running cluster's (``auto``,
    ``ray://host:10001``...), else a Ray started here with ``num_cpus`` (default: this
    machine's cores) and stopped at the end. Stages found done are skipped in the driver; a
    stage's progress and log lines reach the driver's display and ``run.log`` while it runs.
    A worker lost mid-stage (killed, out of memory, its node gone) leaves the stage unmarked;
    Ray runs it once more, and a second loss fails the stage."""
    import builtins
    import os

    ray = import_ray()
    # Ray's driver replaces builtins.print (tqdm_ray's safe_print) once it relays worker
    # output, and keeps it after shutdown; numba then cannot compile a kernel that prints
    # (hftbacktest's correct_local_timestamp), so a later in-process stage in this process
    # failed. Ask Ray not to, and put print back whatever it did.
    os.environ.setdefault("RAY_TQDM_PATCH_PRINT", "0")
    builtin_print = builtins.print
    started_here = not ray.is_initialized()
    if started_here:
        env = {k: v for k, v in os.environ.items() if k.startswith(_FORWARDED_ENV)}
        ray.init(address=address, num_cpus=None if address else (num_cpus or os.cpu_count()),
                 include_dashboard=False, runtime_env={"env_vars": env},
                 logging_level=logging.WARNING, configure_logging=False)
    try:
        _RayRun(ray, graph, runner, keep_going).run()
    finally:
        if started_here:
            ray.shutdown()
        builtins.print = builtin_print


class _RayRun:
    """The driver's side of one graph on Ray (see :func:`run_on_ray`)."""

    def __init__(self, ray, graph: StageGraph, runner: StageRunner, keep_going: bool) -> None:
        self.ray, self.graph, self.runner, self.keep_going = ray, graph, runner, keep_going
        self.display = runner.display
        resources = ray.cluster_resources()
        self.gpus = float(resources.get("GPU", 0.0))
        self.display.workers = max(int(resources.get("CPU", 1)), 1)
        self.inbox = ray.remote(num_cpus=0)(_Inbox).remote()
        self.task = ray.remote(max_retries=1, retry_exceptions=False)(_run_on_worker)
        self.cpus = float(resources.get("CPU", 1.0))
        self.waiting = list(graph)  # not yet submitted, in graph order
        self.urgency = _longest_path_below(graph, runner)
        self.running: dict = {}  # ObjectRef -> stage, sent to Ray
        self.shown: dict[str, Running] = {}  # stage id -> its display line, once it started
        self.failed: dict[str, Failure] = {}
        self.left_out: list[str] = []
        self.ready: list[Stage] = []  # its reads finished, waiting for a free CPU

    def run(self) -> None:
        log.info("Ray executor: %s CPUs, %s GPUs", self.display.workers, self.gpus)
        try:
            while True:
                self._submit_ready()
                if not self.running and not self.ready:
                    break
                ready, _ = self.ray.wait(list(self.running), num_returns=1, timeout=_POLL_S)
                self._gather()
                for ref in ready:
                    self._collect(ref)
        except BaseException:
            self._cancel_running("stopped")
            raise
        if self.waiting:  # cannot happen with a graph in topological order
            raise RuntimeError(f"internal: stages never ready: {[s.id for s in self.waiting]}")
        if self.failed:
            raise StagesFailed(list(self.failed.values()), self.left_out,
                               len(self.runner.results))

    def _submit_ready(self) -> None:
        """Waiting stages whose reads are finished: found done here (repeated until nothing
        changes: a stage found done may make others ready), then sent to Ray while CPUs are
        free, the one with the longest estimated path below it first (the critical path
        starts first, rather than in whatever order Ray's queue takes them)."""
        changed = True
        ready: list[Stage] = []
        while changed:
            changed = False
            for stage in list(self.waiting):
                if any(r in self.failed or r in self.left_out for r in stage.reads):
                    self.waiting.remove(stage)
                    self.left_out.append(stage.id)
                    changed = True
                elif all(r in self.runner.results for r in stage.reads):
                    self.waiting.remove(stage)
                    changed = True
                    done = self.runner.found_done(stage)
                    if done is None:
                        ready.append(stage)
                    else:
                        self.display.skipped(stage.id)
                        self._finish(stage, done)
        self.ready = sorted([*self.ready, *ready],
                            key=lambda s: -self.urgency[s.id])
        busy = sum(s.resources.get("num_cpus", 1) for s in self.running.values())
        while self.ready and (busy < self.cpus or not self.running):
            stage = self.ready.pop(0)
            busy += stage.resources.get("num_cpus", 1)
            self._send(stage)

    def _send(self, stage: Stage) -> None:
        """Submit ``stage`` as a Ray task with its resources."""
        want = stage.resources
        options = {"num_cpus": want.get("num_cpus", 1), "name": stage.id,
                   "num_gpus": 1 if want.get("gpu") and self.gpus >= 1 else 0}
        # the driver-side checks stay here: they may hold what does not travel
        shipped = dataclasses.replace(stage, checks=None)
        ref = self.task.options(**options).remote(shipped, self.runner.upstream(stage),
                                                  self.runner.reads(stage), self.inbox)
        self.running[ref] = stage  # shown when a worker starts it, not while it queues

    def _end(self, stage: Stage, ok: bool = True, why: str = "") -> None:
        running = self.shown.pop(stage.id, None)
        if running is None:  # ended before its start was heard of (lost, cancelled)
            running = self.display.begin(stage.id, None, where="Ray")
        self.display.end(running, ok, why)

    def _gather(self) -> None:
        """Progress and log lines the workers sent since last time."""
        for kind, stage_id, *rest in self.ray.get(self.inbox.take.remote()):
            if kind == "progress" and stage_id in self.shown:
                self.shown[stage_id].on_progress(*rest)
            elif kind == "log":
                name, level, text = rest
                logging.getLogger(name).log(level, "%s", text)
            elif kind == "start":
                pid, node = rest
                if stage_id in self.shown:  # Ray's second try after a lost worker
                    self.display.end(self.shown.pop(stage_id), ok=False,
                                     why="worker lost; Ray runs it again")
                log.info("start %s on Ray: node %s, worker pid %d", stage_id, node, pid)
                stage = self.graph[stage_id]
                self.shown[stage_id] = self.display.begin(
                    stage_id, self.runner.estimate(stage), where=f"{node} pid {pid}")

    def _collect(self, ref) -> None:
        stage = self.running.pop(ref)
        try:
            outcome = self.ray.get(ref)
        except self.ray.exceptions.RayError as exc:  # the worker died (twice), or Ray failed
            self._gather()
            self._end(stage, ok=False, why="worker lost")
            error = CmmError(f"stage {stage.id}: its Ray worker was lost before it finished "
                             f"({type(exc).__name__}); rerun to redo it")
            return self._fail(stage, error, str(error))
        self._gather()
        if outcome[0] == "error":
            _, message, trace, error = outcome
            self._end(stage, ok=False)
            log.error("stage %s failed:\n%s", stage.id, trace)
            return self._fail(stage, error if error is not None else
                              CmmError(f"stage {stage.id}: {message}"), message)
        self._end(stage)
        self._finish(stage, outcome[1])

    def _finish(self, stage: Stage, result: StageResult) -> None:
        self.runner.finished(stage, result)
        if stage.checks is None:
            return
        try:
            stage.checks(result)
        except Exception as exc:
            self._fail(stage, exc, describe(exc))

    def _fail(self, stage: Stage, error: BaseException, message: str) -> None:
        self.failed[stage.id] = Failure(stage.id, error, message)
        if not self.keep_going:
            raise error

    def _cancel_running(self, why: str) -> None:
        for ref, stage in list(self.running.items()):
            self.ray.cancel(ref, force=True)  # not marked done: it reruns next time
            if stage.id in self.shown:
                self._end(stage, ok=False, why=why)
        self.running.clear()


def _longest_path_below(graph: StageGraph, runner: StageRunner) -> dict[str, float]:
    """Per stage, its estimated seconds plus the longest chain of estimated stages that read
    it, directly or not: how urgent starting it is."""
    below: dict[str, float] = {}
    readers: dict[str, list[str]] = {}
    for s in graph:
        for r in s.reads:
            readers.setdefault(r, []).append(s.id)
    for s in reversed(list(graph)):
        below[s.id] = (runner.estimate(s) or 0.0) + max(
            (below[r] for r in readers.get(s.id, ())), default=0.0)
    return below


class _Inbox:
    """A Ray actor holding the workers' messages until the driver takes them."""

    def __init__(self) -> None:
        self.messages: list[tuple] = []

    def put(self, message: tuple) -> None:
        self.messages.append(message)

    def take(self) -> list[tuple]:
        out, self.messages = self.messages, []
        return out


class _ForwardLogs(logging.Handler):
    """A worker's ``cmm.run`` log records, sent to the driver's log."""

    def __init__(self, inbox, stage_id: str) -> None:
        super().__init__(logging.INFO)
        self.inbox, self.stage_id = inbox, stage_id

    def emit(self, record: logging.LogRecord) -> None:
        self.inbox.put.remote(("log", self.stage_id, record.name, record.levelno,
                               record.getMessage()))


def _run_on_worker(stage: Stage, upstream: dict, reads: dict, inbox) -> tuple:
    """A Ray task: one stage's :func:`~cmm.pipeline.stages.execute_stage`, its progress and log
    lines sent to the driver; ``("ok", result)``, or ``("error", message, traceback, error)``
    for a stage that raised (``error``: the exception when it travels back, else None)."""
    import os
    import pickle
    import time
    import traceback

    import ray

    from cmm.pipeline.stages import execute_stage

    inbox.put.remote(("start", stage.id, os.getpid(), ray.util.get_node_ip_address()))
    run_log = logging.getLogger("cmm.run")
    handler = _ForwardLogs(inbox, stage.id)
    run_log.addHandler(handler)
    run_log.setLevel(logging.INFO)
    run_log.propagate = False  # the driver's log has them; not the worker's stderr too
    last = [0.0]

    def on_progress(sub: str, done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= _PROGRESS_EVERY_S or done >= total:
            last[0] = now
            inbox.put.remote(("progress", stage.id, sub, done, total))

    try:
        return ("ok", execute_stage(stage, upstream, reads, on_progress))
    except Exception as exc:
        try:  # the driver re-raises it as the stage raised it, when it survives the trip
            pickle.loads(pickle.dumps(exc))
            error = exc
        except Exception:
            error = None
        return ("error", describe(exc), traceback.format_exc(), error)
    finally:
        run_log.removeHandler(handler)
        ray.get(inbox.put.remote(("end", stage.id)))  # its lines reach the driver first


EXECUTORS = ("in-process", "ray")


def make_executor(name: str = "in-process", *, address: str | None = None,
                  num_cpus: int | None = None, keep_going: bool = False) -> Executor:
    """The executor called ``name`` (one of :data:`EXECUTORS`) with its settings."""
    from cmm.errors import UnknownNameError

    if name == "in-process":
        if address or num_cpus:
            raise CmmError("--address and --cpus are settings of the Ray executor; add "
                           "--executor ray")
        return lambda graph, runner: run_in_process(graph, runner, keep_going=keep_going)
    if name == "ray":
        import_ray()  # the missing extra is said before the run starts
        return lambda graph, runner: run_on_ray(graph, runner, address=address,
                                                num_cpus=num_cpus, keep_going=keep_going)
    raise UnknownNameError("executor", name, list(EXECUTORS))
