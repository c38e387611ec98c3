"""``cmm teacher fit``, ``cmm teacher features`` and ``cmm probe`` end to end on a tiny Llama and
a synthetic dataset (the dataset loader is replaced; nothing is downloaded or prepared)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from cmm.cli import app
from cmm.teacher.data import synthetic_dataset


@pytest.fixture()
def tiny_run(tmp_path, monkeypatch):
    import cmm.cli.teacher as cli

    dataset = synthetic_dataset(n=(96, 48, 48), window=16, n_features=4)
    monkeypatch.setattr(cli, "_dataset", lambda name: dataset)
    config = tmp_path / "teacher.yaml"
    config.write_text("backbone:\n  name: tiny-random-llama\npatch_len: 4\npatch_stride: 4\n"
                      "epochs: 1\nlatency_repeats: 2\nlatency_warmup: 1\nthreads: 1\n"
                      "head_init_windows: 32\n")
    return tmp_path, config


def test_fit_features_probe_commands(tiny_run):
    tmp_path, config = tiny_run
    runner = CliRunner()
    run = tmp_path / "run"
    result = runner.invoke(app, ["teacher", "fit", "--run", str(run), "--config", str(config),
                                 "--control"])
    assert result.exit_code == 0, result.output
    for name in ("teacher", "teacher-random"):
        assert (run / name / "weights.safetensors").is_file()
        assert (run / name / "latency.json").is_file()
    comparison = (run / "teacher" / "comparison.md").read_text()
    assert "teacher (tiny-random-llama, random)" in comparison and "| ridge |" in comparison

    result = runner.invoke(app, ["teacher", "features", "--run", str(run)])
    assert result.exit_code == 0, result.output
    index = json.loads((run / "teacher" / "features" / "index.json").read_text())
    assert set(index["splits"]) == {"train", "validation", "test"}

    probe_cfg = tmp_path / "probe.yaml"
    probe_cfg.write_text("draws: 2\nwindows_per_regime: 8\n")
    result = runner.invoke(app, ["probe", "--run", str(run), "--config", str(probe_cfg)])
    assert result.exit_code == 0, result.output
    assert "paper's pattern" in result.output
    assert (run / "probe" / "probe.json").is_file() and (run / "probe" / "probe.png").is_file()


def test_unknown_config_key_is_rejected_by_name(tiny_run):
    tmp_path, _ = tiny_run
    bad = tmp_path / "bad.yaml"
    bad.write_text("patch_lenn: 4\n")
    result = CliRunner().invoke(app, ["teacher", "fit", "--run", str(tmp_path / "r"),
                                      "--config", str(bad)])
    assert result.exit_code != 0
    assert "patch_lenn" in str(result.exception) and "unknown field" in str(result.exception)


def test_features_without_fit_says_what_to_run(tiny_run):
    tmp_path, _ = tiny_run
    result = CliRunner().invoke(app, ["teacher", "features", "--run", str(tmp_path / "none")])
    assert result.exit_code != 0
    assert "run `cmm teacher fit` first" in str(result.exception)
