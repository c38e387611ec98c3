"""The Ray executor on a local Ray with 2 CPUs: stages run as Ray tasks in an order that respects
what they read, skip when done, and fail the way the in-process executor does; the tiny run
through Ray, with the worker of one stage killed mid-stage (its pid from the stage's own start
message), gives the in-process run's report tables and then skips every stage; a driver killed
mid-stage takes its local Ray with it and the same command resumes to the same tables.

Ray is an optional extra (``pip install -e '.[ray]'``; ``make test`` installs it)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tiny import assert_same

from cmm.errors import InputError
from cmm.pipeline.graph import Stage, StageGraph
from cmm.pipeline.stages import MARKER, Display, StageRunner, Timings

ray = pytest.importorskip("ray", reason="Ray is the optional extra [ray]: "
                                         "pip install -e '.[ray]'")

from cmm.pipeline.executors import StagesFailed, run_in_process, run_on_ray  # noqa: E402

# Each test starts a local Ray (5-10 s): in `make test`, out of the fast suite.
pytestmark = pytest.mark.slow


def _work(name: str, fail: bool = False):
    """Writes what it was handed (on a worker, so into its folder, not a list here)."""

    def work(folder: Path, on_progress, reads) -> dict:
        for r in reads.values():  # what it reads is finished and marked before it starts
            assert (Path(r.folder) / MARKER).is_file()
        on_progress("step", 1, 1)
        if fail:
            raise InputError("no windows in the test split", file="tiny.yaml", field="split")
        (folder / "seen.json").write_text(json.dumps(sorted(reads)))
        return {"name": name, "pid": os.getpid()}

    return work


def _graph(root: Path, failing: str = "") -> StageGraph:
    """a -> (b, c) -> d, and e beside them: d reads b and c."""
    g = StageGraph()
    a = g.add(Stage("a", "ka", root / "a", {"x": 1}, _work("a", "a" == failing)))
    b = g.add(Stage("b", "kb", root / "b", {"a": a.key}, _work("b", "b" == failing),
                    reads=("a",)))
    c = g.add(Stage("c", "kc", root / "c", {"a": a.key, "y": 2}, _work("c"), reads=("a",)))
    g.add(Stage("d", "kd", root / "d", {"b": b.key, "c": c.key}, _work("d"), reads=("b", "c")))
    g.add(Stage("e", "ke", root / "e", {"z": 3}, _work("e")))
    return g


def _runner() -> StageRunner:
    return StageRunner(Display(enabled=False), Timings(None))


@contextlib.contextmanager
def _local_ray():
    """A local Ray with 2 CPUs started by the test (its workers inherit this environment)."""
    import builtins

    builtin_print = builtins.print
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False,
             logging_level="WARNING")
    try:
        yield
    finally:
        ray.shutdown()
        builtins.print = builtin_print  # Ray's driver patches it (see run_on_ray)


@pytest.fixture
def local_ray():
    with _local_ray():
        yield


def test_a_run_on_ray_leaves_print_the_builtin(tmp_path):
    """Ray's driver swaps builtins.print for tqdm_ray's and keeps it after shutdown; numba then
    fails to compile hftbacktest's kernels that print, so the next in-process run of this
    process failed in its data stage. run_on_ray puts it back."""
    import builtins

    before = builtins.print
    run_on_ray(_graph(tmp_path), _runner(), num_cpus=2)
    assert builtins.print is before


def test_stages_run_as_ray_tasks_with_what_they_read_then_skip(tmp_path, local_ray):
    runner = _runner()
    run_on_ray(_graph(tmp_path), runner)
    assert sorted(runner.results) == ["a", "b", "c", "d", "e"]
    assert json.loads((tmp_path / "d" / "seen.json").read_text()) == ["b", "c"]
    assert not any(r.cached for r in runner.results.values())
    assert {r.info["pid"] for r in runner.results.values()} - {os.getpid()}  # ran elsewhere
    again = _runner()
    run_on_ray(_graph(tmp_path), again)
    assert all(r.cached for r in again.results.values())
    assert {k: r.key for k, r in again.results.items()} == \
        {k: r.key for k, r in runner.results.items()}  # the same keys as before


def test_a_failed_stage_stops_its_dependents_with_its_own_message(tmp_path, local_ray):
    # without --keep-going: the stage's own error, as it raised it
    with pytest.raises(InputError, match="tiny.yaml, field 'split': no windows"):
        run_on_ray(_graph(tmp_path / "stop", failing="b"), _runner())
    assert not (tmp_path / "stop" / "b" / MARKER).exists()
    assert not (tmp_path / "stop" / "d").exists()
    # with it: every stage that does not read b finishes; d is left out
    for executor in (run_on_ray, run_in_process):
        root = tmp_path / executor.__name__
        runner = _runner()
        with pytest.raises(StagesFailed) as caught:
            executor(_graph(root, failing="b"), runner, keep_going=True)
        assert [f.stage for f in caught.value.failures] == ["b"]
        assert caught.value.left_out == ["d"]
        assert "b: tiny.yaml, field 'split': no windows in the test split" in str(caught.value)
        assert sorted(runner.results) == ["a", "c", "e"]
        assert not (root / "b" / MARKER).exists() and not (root / "d").exists()


# ----------------------------------------------------------- the tiny run, a worker killed


def _watch_and_kill(log_path: Path, pattern: str, seen: dict, stop: threading.Event) -> None:
    """Reads the driver's run.log until the held stage has started on a worker and says it is
    holding, then kills that worker (SIGKILL: no cleanup runs, as in an out-of-memory kill)."""
    start = re.compile(rf"start ({pattern}) on Ray: node \S+, worker pid (\d+)")
    while not stop.is_set():
        text = log_path.read_text() if log_path.is_file() else ""
        starts = start.findall(text)
        seen["starts"] = starts
        if starts and "kill" not in seen and f"holding {starts[0][0]}" in text:
            stage_id, pid = starts[0]
            seen["stage"], seen["kill"] = stage_id, int(pid)
            # held before its stage.json is written: killed now, it is not marked done
            seen["marked_at_kill"] = (log_path.parent.parent / stage_id / MARKER).exists()
            os.kill(int(pid), signal.SIGKILL)
        time.sleep(0.2)


def _tables(run_dir: Path) -> dict:
    from cmm.pipeline.layout import RunLayout

    return json.loads((RunLayout.read(run_dir).report / "tables.json").read_text())


def test_tiny_through_ray_after_a_killed_worker_equals_in_process(
        tiny_config, tiny_run, tmp_path, monkeypatch):
    from cmm.cli.run import load_run_config
    from cmm.pipeline.executors import make_executor
    from cmm.pipeline.run import Pipeline

    # set before Ray starts: a local Ray's workers inherit this process's environment (Ray's
    # second try holds too); 15 s leaves the log lines time to reach run.log on busy cores
    monkeypatch.setenv("CMM_STAGE_HOLD", "*/seed0/probe:15")
    with _local_ray():
        config = load_run_config(tiny_config)

        def pipeline() -> Pipeline:
            return Pipeline(config, tmp_path, base_dir=tiny_config.parent, command="test",
                            progress=False, executor=make_executor("ray"))

        run_dir = tmp_path / config.name
        seen: dict = {}
        stop = threading.Event()
        watcher = threading.Thread(target=_watch_and_kill,
                                   args=(run_dir / "logs" / "run.log", r"\S+/seed0/probe",
                                         seen, stop), daemon=True)
        watcher.start()
        try:
            first = pipeline()
            first.run()
        finally:
            stop.set()
            watcher.join()
        assert "kill" in seen, f"the held stage never started on a worker: {seen}"
        assert seen["marked_at_kill"] is False, \
            f"the hold ended before the kill (the stage was already marked done): {seen}"
        # Ray ran the killed stage once more, on another worker process
        starts = [pid for sid, pid in seen["starts"] if sid == seen["stage"]]
        assert len(starts) == 2 and starts[0] != starts[1], seen
        assert_same(_tables(run_dir), _tables(tiny_run))  # the same report as in process
        again = pipeline()
        again.run()
        assert all(r.cached for r in again.runner.results.values())
        assert {k: r.key for k, r in again.runner.results.items()} == \
            {k: r.key for k, r in first.runner.results.items()}


def _gone(pid: int, within_s: float) -> bool:
    """Whether process ``pid`` ends within ``within_s`` (a zombie, dead but not yet reaped by
    its parent, counts as ended)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            return True
        if "\nState:\tZ" in state:
            return True
        time.sleep(0.2)
    return False


def test_a_killed_ray_driver_leaves_no_stage_marked_and_the_same_command_resumes(
        tiny_config, tiny_run, tmp_path):
    """`cmm run --executor ray` killed (SIGKILL) while a stage runs on a worker: the local Ray
    it started goes with it (no orphaned worker finishing the stage behind the next run's
    back), the stage is not marked done, and the same command resumes: the stages before it
    are reused, it reruns, and the report is the in-process one."""
    cmd = [str(Path(sys.executable).parent / "cmm"), "run", str(tiny_config), "--root",
           str(tmp_path), "--executor", "ray", "--cpus", "2", "--no-progress"]
    run_dir = tmp_path / "tiny"
    log_path = run_dir / "logs" / "run.log"
    with open(tmp_path / "first.err", "w") as err:
        driver = subprocess.Popen(cmd, env={**os.environ, "CMM_STAGE_HOLD": "*/seed0/probe:120"},
                                  cwd=tiny_config.parent, stdout=subprocess.DEVNULL, stderr=err)
        try:
            deadline = time.monotonic() + 300
            while time.monotonic() < deadline and driver.poll() is None:
                text = log_path.read_text() if log_path.is_file() else ""
                held = re.search(r"start (\S+/seed0/probe) on Ray: node \S+, worker pid (\d+)",
                                 text)
                if held and f"holding {held.group(1)}" in text:
                    break
                time.sleep(0.2)
            else:
                pytest.fail(f"the probe never held: {(tmp_path / 'first.err').read_text()}")
            driver.kill()
        finally:
            driver.kill()
            driver.wait()
    stage_id, worker = held.group(1), int(held.group(2))
    assert _gone(worker, 30), f"worker {worker} of {stage_id} outlived its killed driver"
    assert not (run_dir / stage_id / MARKER).exists()
    subprocess.run(cmd, env={k: v for k, v in os.environ.items() if k != "CMM_STAGE_HOLD"},
                   cwd=tiny_config.parent, check=True, capture_output=True, timeout=600)
    stages = {s["stage"]: s for s in json.loads((run_dir / "manifest.json").read_text())
              ["stages"]}
    assert not stages[stage_id]["cached"]  # it reran
    for before in ("tiny-btcusdt/data", "tiny-btcusdt/seed0/teacher",
                   "tiny-btcusdt/seed0/features"):
        assert stages[before]["cached"], before  # finished before the kill: reused
    assert_same(_tables(run_dir), _tables(tiny_run))
