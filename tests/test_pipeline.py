"""`cmm run` end to end on a tiny configuration (three minutes of real Binance data, a tiny random
Llama as the teacher): every stage, the report's tables complete, a second run skipping
everything, and a run killed mid-stage that resumes and gives the same result. The tests that
run a whole pipeline are marked slow; no test changes the module's run folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from tiny import MAIN, assert_same, run_tiny

def _run(config_path: Path, root: Path) -> Path:
    return run_tiny(config_path, root)


def _tables(run_dir: Path) -> dict:
    return json.loads((run_dir / "report" / "tables.json").read_text())


def _stages(run_dir: Path) -> dict[str, bool]:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return {s["stage"]: s["cached"] for s in manifest["stages"]}


@pytest.mark.slow  # a whole pipeline run
def test_whole_pipeline_writes_a_complete_report(tiny_run):
    run = tiny_run
    for name in ("config.yaml", "run.json", "logs/run.log", "manifest.json", "report.md",
                 "report.html"):
        assert (run / name).is_file(), name
    tables = _tables(run)
    assert tables["missing"] == []
    t = tables["tables"]["tiny-btcusdt"]
    assert [r["slug"] for r in t["main"]] == MAIN
    assert [r["slug"] for r in t["ablations"]] == ["cmm", "no_task"]
    assert [r["slug"] for r in t["gates"]] == ["cmm", "cmm-mean", "cmm-router", "cmm-regime"]
    assert [r["slug"] for r in t["backbone"]] == ["teacher", "teacher-random"]
    for name in ("main", "ablations", "gates", "backbone"):
        for row in t[name]:
            for metric in ("EPnL", "MAP", "PnLMAP", "RPT", "Sharpe", "latency_ms"):
                assert metric in row, (name, row["slug"], metric)
            assert row["EPnL"]["n"] == 3  # three 10 s test episodes, one seed
    lat = {r["slug"]: r["latency_ms"]["mean"] for r in t["latency"]}
    assert lat["teacher"] == pytest.approx(50.0) and lat["cmm"] == pytest.approx(0.2)
    robust = {r["slug"]: r for r in t["robustness"]}
    assert set(robust) == set(MAIN)
    assert all(r["EPnL_crash"]["mean"] is not None for r in robust.values())
    # a flash crash costs a market maker that keeps quoting
    assert robust["fixed"]["EPnL_crash"]["mean"] < robust["fixed"]["EPnL"]["mean"]
    md = (run / "report.md").read_text()
    for heading in ("Main table", "Ablations", "Mixture controls",
                    "Pretrained vs random-init backbone", "Robustness", "Decision latency",
                    "Fluorescent probe", "Figures"):
        assert f"### {heading}" in md, heading
    for label in ("CMM (Hájek-MoE)", "teacher LLM", "Avellaneda-Stoikov", "perfect-forecast ladder"):
        assert f"| {label} |" in md
    run_info = json.loads((run / "run.json").read_text())
    assert "cmm run tiny.yaml" in md and run_info["git"]["commit"][:12] in md
    for fig in ("equity", "quotes", "crash", "weights", "latency", "probe"):
        assert (run / "report" / "figures" / f"tiny-btcusdt-{fig}.png").is_file(), fig
        assert f"report/figures/tiny-btcusdt-{fig}.png" in md
    # the teacher's learning curves (one figure for its seed: pretrained and random-init)
    assert (run / "report" / "figures" / "tiny-btcusdt-learning-seed0.png").is_file()
    assert "### Teacher learning curves" in md
    html = (run / "report.html").read_text()
    assert html.count("src='data:image/png;base64,") == 7
    assert "src='figures" not in html and "http://" not in html and "https://" not in html
    assert "<table>" in html and "CMM (Hájek-MoE)" in html


@pytest.mark.slow  # a whole pipeline run
def test_overview_puts_markets_side_by_side(tiny_run):
    from cmm.report.blocks import fmt
    from cmm.report.overview import overview_blocks as _overview_blocks

    manifest = json.loads((tiny_run / "manifest.json").read_text())
    tables = _tables(tiny_run)["tables"]
    d = manifest["datasets"][0]
    two = {**manifest, "datasets": [d, {**d, "dataset": "the same again"}]}  # same tables twice
    blocks = _overview_blocks(tiny_run, two, tables)
    titled = {b.text: blocks[i + 1] for i, b in enumerate(blocks) if b.kind in ("h2", "h3")}
    assert {"Overview across markets", "CMM against its teacher", "Ablations",
            "Mixture controls", "Pretrained vs random-init backbone",
            "Robustness: the most volatile episodes", "Robustness: flash crash",
            "Fluorescent probe"} <= set(titled)
    overview = titled["Overview across markets"]
    assert overview.headers == ["policy", "tiny-btcusdt", "the same again", "mean rank"]
    main = {r["label"]: r for r in tables["tiny-btcusdt"]["main"]}
    assert [row[0] for row in overview.rows] == list(main)
    for row in overview.rows:
        assert row[1] == row[2] == fmt(main[row[0]]["EPnL"])
        assert (row[3] == "–") == (row[0] == "perfect-forecast ladder")
    pair = titled["CMM against its teacher"].rows
    assert len(pair) == 2 and pair[0][-1].endswith("x")
    assert len(titled["Fluorescent probe"].rows) == 2  # one seed per market


@pytest.mark.slow  # a whole pipeline run
def test_stage_folders_describe_themselves(tiny_run):
    seed = tiny_run / "tiny-btcusdt" / "seed0"
    marker = json.loads((seed / "distill" / "stage.json").read_text())
    assert marker["kind"] == "distill" and len(marker["key"]) == 16
    assert marker["inputs"]["distill"]["train"]["seed"] == 0
    assert set(marker["inputs"]) == {"features", "probe", "distill"}
    features = json.loads((seed / "teacher" / "features" / "stage.json").read_text())
    teacher = json.loads((seed / "teacher" / "stage.json").read_text())
    assert features["inputs"]["teacher"] == teacher["key"]
    config = yaml.safe_load((tiny_run / "config.yaml").read_text())
    assert config["teacher"]["patience"] == 6  # defaults written out
    shared = tiny_run / "tiny-btcusdt" / "seed-independent"  # fixed does not use the seed
    assert (shared / "crash" / "fixed" / "episodes.csv").is_file()
    assert not (seed / "crash" / "fixed").exists()


@pytest.mark.slow  # a whole pipeline run
def test_second_run_skips_every_stage(tiny_run_copy, tiny_config):
    before = _tables(tiny_run_copy)
    _run(tiny_config, tiny_run_copy.parent)
    stages = _stages(tiny_run_copy)
    assert stages and all(stages.values()), [k for k, v in stages.items() if not v]
    assert _tables(tiny_run_copy) == before


@pytest.mark.slow  # a whole pipeline run
def test_changed_setting_redoes_only_what_depends_on_it(tiny_run_copy, tiny_config):
    from cmm.cli.run import load_run_config
    from cmm.pipeline.run import Pipeline

    copy = tiny_run_copy
    cfg = load_run_config(tiny_config)
    cfg = cfg.model_copy(update={"ladder": cfg.ladder.model_copy(update={"levels": 4})})
    Pipeline(cfg, copy.parent, base_dir=tiny_config.parent, progress=False).run()
    stages = _stages(copy)
    redone = {k for k, cached in stages.items() if not cached}
    assert {k for k in redone if "/backtest/" in k or "/crash/" in k} == {
        k for k in stages if "/backtest/" in k or "/crash/" in k}
    for kept in ("tiny-btcusdt/data", "tiny-btcusdt/seed0/teacher", "tiny-btcusdt/seed0/moe",
                 "tiny-btcusdt/crash"):
        assert stages[kept], kept


@pytest.mark.slow  # a whole pipeline run
def test_killed_mid_stage_resumes_and_gives_the_same_result(tiny_run, tiny_config, tmp_path):
    """SIGKILL while the experts stage is complete on disk but not yet marked (the widest
    window): the rerun keeps data, teacher, features and probe, redoes the experts, and the
    report's numbers equal those of the uninterrupted run."""
    root = tmp_path / "runs"
    env = {**os.environ, "CMM_STAGE_HOLD": "*/distill:60"}
    proc = subprocess.Popen([sys.executable, "-m", "cmm", "run", str(tiny_config), "--root",
                             str(root), "--no-progress"], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    log = root / "tiny" / "logs" / "run.log"
    deadline = time.monotonic() + 240
    try:
        while time.monotonic() < deadline:
            if log.is_file() and "holding tiny-btcusdt/seed0/distill" in log.read_text():
                break
            if proc.poll() is not None:
                pytest.fail(f"run ended before the hold: {proc.stderr.read()[-2000:]}")
            time.sleep(0.1)
        else:
            pytest.fail("the run never reached the experts stage")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    seed = root / "tiny" / "tiny-btcusdt" / "seed0"
    assert (seed / "distill" / "experts.json").is_file()
    assert not (seed / "distill" / "stage.json").exists()
    assert not (seed / "moe").exists()

    _run(tiny_config, root)
    stages = _stages(root / "tiny")
    for done in ("tiny-btcusdt/data", "tiny-btcusdt/crash", "tiny-btcusdt/seed0/teacher",
                 "tiny-btcusdt/seed0/features", "tiny-btcusdt/seed0/probe"):
        assert stages[done], f"{done} was redone"
    for redo in ("tiny-btcusdt/seed0/distill", "tiny-btcusdt/seed0/moe"):
        assert not stages[redo], f"{redo} was not redone"
    assert "incomplete tiny-btcusdt/seed0/distill" in log.read_text()
    assert_same(_tables(root / "tiny")["tables"], _tables(tiny_run)["tables"])


def test_unknown_key_in_run_config_is_located(tmp_path):
    from cmm.cli.run import load_run_config
    from cmm.errors import InputError

    path = tmp_path / "bad.yaml"
    path.write_text("name: x\nteacher:\n  epochs: 1\n  epoches: 2\n")
    with pytest.raises(InputError, match=r"bad.yaml:4.*teacher.epoches.*unknown field"):
        load_run_config(path)


def test_cli_help_and_missing_config(tmp_path):
    r = subprocess.run([sys.executable, "-m", "cmm", "run", "--help"], capture_output=True,
                       text=True, env={**os.environ, "COLUMNS": "160"}, timeout=120)
    assert r.returncode == 0 and "--force" in r.stdout and "--report-only" in r.stdout
    r = subprocess.run([sys.executable, "-m", "cmm", "run", str(tmp_path / "none.yaml")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "run configuration not found" in r.stderr
