"""End to end on a tiny random teacher: teacher features + probe -> `cmm distill` -> `cmm moe`
-> the CMM artefact, the evaluation table, the Quoter and the policy."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from cmm.config import (
    BackboneConfig,
    DistillConfig,
    ExpertConfig,
    MoEConfig,
    ProbeConfig,
    StudentTrainConfig,
    TeacherConfig,
)
from cmm.distill.executor import SerialExecutor
from cmm.errors import InputError


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    from cmm.probe.pipeline import run_probe
    from cmm.teacher.data import synthetic_dataset
    from cmm.teacher.features import extract_features
    from cmm.teacher.fit import fit_teacher
    from cmm.teacher.store import save_teacher

    root = tmp_path_factory.mktemp("run")
    ds = synthetic_dataset(n=(240, 150, 90), window=16, n_features=4)
    cfg = TeacherConfig(backbone=BackboneConfig(name="tiny-random-llama"), patch_len=4,
                        patch_stride=4, epochs=1, threads=1)
    fit = fit_teacher(ds, cfg)
    save_teacher(root / "teacher", fit.model, {"data": {
        "name": ds.name, "cache_key": ds.cache_key, "window": 16, "n_features": 4,
        "feature_names": ds.feature_names, "horizon": 10}})
    extract_features(fit.model, ds, root / "teacher")
    run_probe(root / "teacher", ds, ProbeConfig(draws=2, windows_per_regime=16), root / "probe")
    return root, ds


CONFIG = DistillConfig(expert=ExpertConfig(hidden=8, z_dim=4),
                       train=StudentTrainConfig(epochs=3, patience=2), executor="serial",
                       min_validation_samples=40, baselines=("kd", "fitnets"),
                       ablations=("no_task", "no_data"))
MOE = MoEConfig(epochs=5, kernel_hidden=4, latency_repeats=1000, latency_warmup=10)


def test_distill_then_moe_end_to_end(teacher_run):
    from cmm.distill.pipeline import run_distill
    from cmm.moe.pipeline import run_moe
    from cmm.moe.quoter import Quoter

    root, ds = teacher_run
    out = root / "distill"
    meta = run_distill(ds, root / "teacher", CONFIG, out, executor=SerialExecutor())
    probe = json.loads((root / "probe" / "probe.json").read_text())
    assert meta["assignment"] == probe["all"]["assignment"]
    assert set(meta["parameters"]) == {"cmm", "no_task", "no_data", "kd", "fitnets"}
    cmm_params = meta["parameters"]["cmm"]
    for name, n in meta["parameters"].items():
        assert abs(n - cmm_params) / cmm_params < 0.15, (name, n)
    sources = {s["name"]: s["record"]["stop_source"] for s in meta["students"]}
    assert set(sources.values()) <= {"validation", "train-tail"}

    report = run_moe(ds, out, MOE, teacher_dir=root / "teacher")
    models = {r["model"] for r in report["rows"]}
    for want in ("teacher", "train-mean", "cmm (hajek)", "cmm (mean)", "cmm (router)",
                 "cmm (regime)", "no_task (hajek)", "no_data", "kd", "fitnets"):
        assert want in models
    table = (out / "evaluation.md").read_text()
    assert "| cmm (hajek) |" in table and "val MSE mid" in table
    assert report["latency"]["n"] == 1000

    quoter = Quoter.load(out / "cmm")
    x = ds.windows("validation")
    d = quoter.decide(x[0], 100.0, 101.0)
    batch, weights = quoter.predict_batch(x[:5])
    np.testing.assert_allclose(d.predictions, batch[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
    assert quoter.latency["p50_us"] > 0
    hajek = next(r for r in report["rows"] if r["model"] == "cmm (hajek)"
                 and r["split"] == "validation")
    assert hajek["parameters"] == quoter.mixture.n_parameters
    assert report["teacher_dir"] == str(root / "teacher")
    # the teacher's rows come from the folder given, with no fallback: no features there is an
    # error naming the file (raised before any gate is fitted)
    with pytest.raises(InputError, match="validation.safetensors"):
        run_moe(ds, out, MOE, root / "elsewhere", measure_latency=False,
                teacher_dir=root / "probe")


def test_cli_commands(teacher_run, monkeypatch):
    from cmm.cli import app
    from cmm.cli import distill as cli

    root, ds = teacher_run
    monkeypatch.setattr(cli, "_dataset", lambda name: ds)
    (root / "d.yaml").write_text("expert: {hidden: 6, z_dim: 3}\ntrain: {epochs: 2}\n"
                                 "executor: serial\nbaselines: [truth]\nablations: []\n")
    runner = CliRunner()
    res = runner.invoke(app, ["distill", "--teacher", str(root / "teacher"), "--out",
                              str(root / "cli"), "--config", str(root / "d.yaml")])
    assert res.exit_code == 0, res.output
    assert "truth" in res.output
    (root / "m.yaml").write_text("epochs: 2\nkernel_hidden: 3\n")
    res = runner.invoke(app, ["moe", "--experts", str(root / "cli"), "--config",
                              str(root / "m.yaml"), "--no-latency"])
    assert res.exit_code == 0, res.output
    assert (root / "cli" / "cmm" / "mixture.safetensors").is_file()
    # cmm moe: the teacher recorded in the experts by default, none with --no-teacher-row
    ev = json.loads((root / "cli" / "evaluation.json").read_text())
    assert ev["teacher_dir"] == str(root / "teacher")
    assert {"validation", "test"} <= {r["split"] for r in ev["rows"] if r["model"] == "teacher"}
    res = runner.invoke(app, ["moe", "--experts", str(root / "cli"), "--out", str(root / "cli-nt"),
                              "--config", str(root / "m.yaml"), "--no-latency",
                              "--no-teacher-row"])
    assert res.exit_code == 0, res.output
    ev = json.loads((root / "cli-nt" / "evaluation.json").read_text())
    assert ev["teacher_dir"] is None and all(r["model"] != "teacher" for r in ev["rows"])
    (root / "bad.yaml").write_text("expert: {hidden: 6, widht: 3}\n")
    res = runner.invoke(app, ["distill", "--teacher", str(root / "teacher"), "--out",
                              str(root / "cli2"), "--config", str(root / "bad.yaml")])
    assert res.exit_code != 0
    assert "expert.widht" in str(res.exception) and "unknown field" in str(res.exception)


def test_stale_inputs_are_refused(teacher_run, tmp_path):
    from cmm.distill.pipeline import run_distill
    from cmm.teacher.data import synthetic_dataset
    from cmm.teacher.store import StaleArtefactError

    root, _ = teacher_run
    other = synthetic_dataset(n=(240, 150, 90), window=16, n_features=4, seed=5)
    with pytest.raises(StaleArtefactError, match="cmm teacher features"):
        run_distill(other, root / "teacher", CONFIG, tmp_path, executor=SerialExecutor())
    _, ds = teacher_run
    with pytest.raises(Exception, match="run `cmm probe` first"):
        run_distill(ds, root / "teacher", CONFIG, tmp_path, probe_path=tmp_path / "none.json",
                    executor=SerialExecutor())
