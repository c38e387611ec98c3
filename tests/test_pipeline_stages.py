"""Stage bookkeeping: skipped when complete for the same key, redone when stale or unmarked,
never trusted half-done; the policy list of a run."""

from __future__ import annotations

import json

import pytest

from cmm.pipeline.graph import stage_key
from cmm.pipeline.stages import MARKER, Display, StageRunner, Timings, read_marker


@pytest.fixture
def runner(tmp_path):
    return StageRunner(Display(enabled=False), Timings(tmp_path / "timings.json"))


def _work(calls: list):
    def work(folder, on_progress):
        calls.append(folder)
        (folder / "out.txt").write_text("x")
        return {"n": len(calls)}

    return work


def test_runs_once_then_skips(runner, tmp_path):
    calls: list = []
    folder = tmp_path / "s"
    a = runner.run("s", "kind", folder, {"a": 1}, _work(calls))
    b = runner.run("s", "kind", folder, {"a": 1}, _work(calls))
    assert len(calls) == 1 and not a.cached and b.cached
    assert a.key == b.key == stage_key("kind", {"a": 1})
    marker = read_marker(folder)
    assert marker["inputs"] == {"a": 1} and marker["info"] == {"n": 1}
    assert json.loads((tmp_path / "timings.json").read_text())["kind"] >= 0


def test_changed_inputs_redo_from_a_clean_folder(runner, tmp_path):
    calls: list = []
    folder = tmp_path / "s"
    runner.run("s", "kind", folder, {"a": 1}, _work(calls))
    (folder / "leftover").write_text("old")
    runner.run("s", "kind", folder, {"a": 2}, _work(calls))
    assert len(calls) == 2 and not (folder / "leftover").exists()
    assert read_marker(folder)["inputs"] == {"a": 2}


def test_unmarked_folder_is_never_trusted(runner, tmp_path):
    calls: list = []
    folder = tmp_path / "s"
    folder.mkdir()
    (folder / "out.txt").write_text("half")  # what an interrupted stage leaves
    runner.run("s", "kind", folder, {"a": 1}, _work(calls))
    assert len(calls) == 1 and (folder / "out.txt").read_text() == "x"


def test_failure_leaves_no_marker(runner, tmp_path):
    def boom(folder, on_progress):
        (folder / "partial").write_text("x")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        runner.run("s", "kind", tmp_path / "s", {"a": 1}, boom)
    assert not (tmp_path / "s" / MARKER).exists()


def test_force_redoes_a_current_stage(tmp_path):
    calls: list = []
    runner = StageRunner(Display(enabled=False), Timings(None), force=("*/s",))
    runner.run("d/s", "kind", tmp_path / "s", {"a": 1}, _work(calls))
    runner.run("d/s", "kind", tmp_path / "s", {"a": 1}, _work(calls))
    assert len(calls) == 2


def test_estimates_come_from_the_last_time(tmp_path):
    t = Timings(tmp_path / "t.json")
    assert t.estimate("teacher", "btc") == Timings.PRIORS["teacher"]
    t.record("teacher", "btc", 12.0)
    t2 = Timings(tmp_path / "t.json")
    assert t2.estimate("teacher", "btc") == 12.0 and t2.estimate("teacher", "eth") == 12.0


def test_policy_list_follows_the_config():
    from cmm.config import RunConfig
    from cmm.pipeline.policies import policy_specs

    cfg = RunConfig(rl=("ppo", "dqn"))
    specs, tables, skipped = policy_specs(cfg, ["as", "fixed", "oracle", "ppo"])
    slugs = [s.slug for s in specs]
    assert len(slugs) == len(set(slugs))
    assert tables["main"] == ["teacher", "cmm", "kd", "fitnets", "multitask", "truth", "fixed",
                              "as", "ridge", "lgbm", "ppo", "oracle"]
    seeded = {s.slug: s.seeded for s in specs}
    assert not any(seeded[k] for k in ("fixed", "as", "ridge", "lgbm", "oracle"))
    assert seeded["ppo"] and seeded["teacher"] and seeded["cmm"]
    assert tables["latency_price"] == ["teacher-zero-latency", "teacher", "cmm",
                                       "cmm-teacher-latency"]
    assert tables["ablations"] == ["cmm", "no_layer", "no_task", "no_data"]
    assert tables["gates"] == ["cmm", "cmm-mean", "cmm-router", "cmm-regime"]
    assert tables["backbone"] == ["teacher", "teacher-random"]
    assert skipped == [{"policy": "dqn", "reason": "not registered (the RL stage is not "
                                                   "installed in this version)"}]
    cmm = next(s for s in specs if s.slug == "cmm-router")
    assert (cmm.source, cmm.name, cmm.gate) == ("mixture", "cmm", "router")


def test_unknown_crash_policy_is_an_error():
    from cmm.config import RobustnessConfig, RunConfig
    from cmm.errors import InputError
    from cmm.pipeline.policies import policy_specs

    cfg = RunConfig(robustness=RobustnessConfig(crash_policies=("cmm", "nope")))
    with pytest.raises(InputError, match="robustness.crash_policies.*nope"):
        policy_specs(cfg, [])


@pytest.mark.parametrize("name", ["default", "paper", "tiny"])
def test_shipped_configs_are_valid(name):
    from pathlib import Path

    from cmm.cli.run import load_run_config
    from cmm.data.spec import builtin_datasets
    from cmm.pipeline.stress import crash_starts

    path = Path(__file__).resolve().parents[1] / "configs" / f"{name}.yaml"
    cfg = load_run_config(path)
    assert cfg.name == ("demo" if name == "default" else name)
    assert set(cfg.datasets) <= set(builtin_datasets())
    if cfg.robustness.flash_crash is not None:  # the crash fits inside an episode
        class NoEpisodes:
            n_episodes = 0

        crash_starts(NoEpisodes(), cfg.backtest.episode_s, cfg.robustness.flash_crash)
