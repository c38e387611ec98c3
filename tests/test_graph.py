"""The stage contract: a declared graph, its contract check, its critical path, and the
in-process executor running it in order with each stage handed what it reads."""

from __future__ import annotations

from pathlib import Path

import pytest

from cmm.pipeline.graph import Stage, StageGraph
from cmm.pipeline.stages import Display, StageRunner, Timings


def _work(log: list, name: str):
    def work(folder: Path, on_progress, reads) -> dict:
        log.append((name, sorted(reads)))
        (folder / "out.txt").write_text(name)
        return {"name": name, "read": {k: r.info["name"] for k, r in reads.items()}}

    return work


def _diamond(root: Path, log: list) -> StageGraph:
    """a -> (b, c) -> d."""
    g = StageGraph()
    a = g.add(Stage("a", "ka", root / "a", {"x": 1}, _work(log, "a")))
    b = g.add(Stage("b", "kb", root / "b", {"a": a.key}, _work(log, "b"), reads=("a",)))
    c = g.add(Stage("c", "kc", root / "c", {"a": a.key, "y": 2}, _work(log, "c"),
                    reads=("a",)))
    g.add(Stage("d", "kd", root / "d", {"b": b.key, "c": c.key}, _work(log, "d"),
                reads=("b", "c")))
    return g


def test_a_stage_must_declare_every_stage_its_inputs_name(tmp_path):
    g = StageGraph()
    a = g.add(Stage("a", "ka", tmp_path / "a", {"x": 1}, _work([], "a"), aliases=("data-key",)))
    with pytest.raises(RuntimeError, match=r"name the keys of \['a'\]"):
        g.add(Stage("b", "kb", tmp_path / "b", {"a": a.key}, _work([], "b")))
    with pytest.raises(RuntimeError, match=r"name the keys of \['a'\]"):  # by its alias too
        g.add(Stage("b", "kb", tmp_path / "b", {"nested": ["data-key"]}, _work([], "b")))
    with pytest.raises(RuntimeError, match="not declared before it"):
        g.add(Stage("b", "kb", tmp_path / "b", {}, _work([], "b"), reads=("z",)))


def test_the_same_stage_declared_twice_is_one_stage(tmp_path):
    """A teacher several run seeds share: declared by each, one stage."""
    g = StageGraph()
    first = g.add(Stage("t", "teacher", tmp_path / "t", {"seed": 0}, _work([], "t")))
    assert g.add(Stage("t", "teacher", tmp_path / "t", {"seed": 0}, _work([], "t2"))) is first
    assert len(g) == 1
    with pytest.raises(RuntimeError, match="declared twice"):
        g.add(Stage("t", "teacher", tmp_path / "t", {"seed": 1}, _work([], "t")))


def test_critical_path_known_answer(tmp_path):
    g = _diamond(tmp_path, [])
    seconds = {"a": 1.0, "b": 5.0, "c": 2.0, "d": 3.0}
    assert g.critical_path(seconds) == (9.0, ["a", "b", "d"])
    seconds["c"] = 7.0
    assert g.critical_path(seconds) == (11.0, ["a", "c", "d"])
    assert g.dependents("b") == ["d"] and g.dependents("a") == ["b", "c", "d"]


def test_in_process_executor_runs_in_order_then_skips(tmp_path):
    from cmm.pipeline.executors import run_in_process

    log: list = []
    runner = StageRunner(Display(enabled=False), Timings(None))
    run_in_process(_diamond(tmp_path, log), runner)
    assert [name for name, _ in log] == ["a", "b", "c", "d"]
    assert log[-1] == ("d", ["b", "c"])  # handed exactly what it declared
    assert runner.results["d"].info["read"] == {"b": "b", "c": "c"}
    log.clear()
    again = StageRunner(Display(enabled=False), Timings(None))
    run_in_process(_diamond(tmp_path, log), again)
    assert log == [] and all(r.cached for r in again.results.values())
    # a forced stage redoes what reads it, directly or not, and nothing else
    forced = StageRunner(Display(enabled=False), Timings(None), force=("b",))
    run_in_process(_diamond(tmp_path, log), forced)
    assert [name for name, _ in log] == ["b", "d"]


def test_checks_run_after_their_stage_and_stop_the_run(tmp_path):
    from cmm.pipeline.executors import run_in_process

    log: list = []
    g = StageGraph()

    def refuse(result) -> None:
        raise ValueError(f"split empty in {result.info['name']}")

    a = g.add(Stage("a", "ka", tmp_path / "a", {}, _work(log, "a"), checks=refuse))
    g.add(Stage("b", "kb", tmp_path / "b", {"a": a.key}, _work(log, "b"), reads=("a",)))
    with pytest.raises(ValueError, match="split empty in a"):
        run_in_process(g, StageRunner(Display(enabled=False), Timings(None)))
    assert [name for name, _ in log] == ["a"]


def test_a_stage_without_a_declared_output_fails_unmarked(tmp_path):
    from cmm.errors import CmmError
    from cmm.pipeline.executors import run_in_process
    from cmm.pipeline.stages import MARKER

    g = StageGraph()
    g.add(Stage("a", "ka", tmp_path / "a", {}, _work([], "a"), outputs=("out.txt", "probe.json")))
    with pytest.raises(CmmError, match=r"stage a finished without its output\(s\) probe.json"):
        run_in_process(g, StageRunner(Display(enabled=False), Timings(None)))
    assert (tmp_path / "a" / "out.txt").is_file() and not (tmp_path / "a" / MARKER).exists()


def test_tiny_run_graph_is_declared_without_running(tiny_config, tmp_path):
    """configs/tiny.yaml's graph: every stage's folder inside the run folder, ids unique,
    every read declared before its reader, and the critical path ends at a replay."""
    from cmm.cli.run import load_run_config
    from cmm.pipeline.run import Pipeline

    pipe = Pipeline(load_run_config(tiny_config), tmp_path, base_dir=tiny_config.parent,
                    progress=False)
    g = pipe.graph()
    ids = [s.id for s in g]
    assert len(ids) == len(set(ids)) and not (tmp_path / pipe.config.name).exists()
    for i, s in enumerate(g):
        assert s.folder.is_relative_to(pipe.run_dir), s.id
        assert all(ids.index(r) < i for r in s.reads), s.id
    kinds = {s.kind for s in g}
    assert {"data", "teacher", "features", "probe", "distill", "moe", "backtest"} <= kinds
    # the stages the report and the later stages read from declare what they leave
    declared = {s.kind: s.outputs for s in g}
    assert "probe.json" in declared["probe"] and "experts.json" in declared["distill"]
    assert "evaluation.json" in declared["moe"] and "records.parquet" in declared["backtest"]
    assert "weights.safetensors" in declared["teacher"] and declared["features"]
    plan = pipe.plan()
    assert plan["stages"] == len(g) and plan["done"] == 0
    assert 0 < plan["critical_s"] <= plan["total_s"]
    assert plan["critical_path"][0].endswith("/data")
    assert "/backtest/" in plan["critical_path"][-2] or "/crash/" in plan["critical_path"][-1]
