"""The Ray executor on a local Ray with 2 CPUs: stages run as Ray tasks in an order that respects
what they read, skip when done, and fail the way the in-process executor does; the tiny run
(the tiny run through Ray against in process, with a worker killed mid-stage, is not in yet:
see issue 17's notes).

Ray is an optional extra (``pip install -e '.[ray]'``; ``make test`` installs it)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

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


@pytest.fixture
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


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
