"""One writer for the files of a backtest (:mod:`cmm.backtest.artefacts`), used by ``cmm run``
and ``cmm backtest`` alike, and one latency rule per kind of learned policy, used by both
(issue 12): the teacher is charged its all-threads median (``latency.json``'s ``charged_ns``),
a mixture its one-thread median stored for its gate."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest

from cmm.backtest.artefacts import FILES, write_backtest
from cmm.config import BacktestConfig, RunConfig
from cmm.errors import InputError
from cmm.pipeline.policies import PolicySpec
from cmm.strategy.policy import get_policy

DATASET = "binance-usdm-btcusdt"
# 60 s episodes (the capture's test split is 4 minutes); a tier other than base: pnl_base too
BT = BacktestConfig(episode_s=60.0, fee_tier="market_maker")
METRICS_KEYS = {"schema_version", "metrics", "settings", "dataset", "dataset_key", "policy",
                "latency_ns", "gate", "wall_s", "instrument", "warnings"}


def _columns(folder: Path) -> dict:
    """Each file's column names (metrics.json: its keys)."""
    return {"metrics.json": set(json.loads((folder / "metrics.json").read_text())),
            "episodes.csv": pl.read_csv(folder / "episodes.csv").columns,
            "records.parquet": pl.read_parquet(folder / "records.parquet").columns,
            "fills.parquet": pl.read_parquet(folder / "fills.parquet").columns}


@pytest.fixture(scope="module")
def fixed_result(prepared):
    from cmm.backtest.runner import run_backtest

    ds = prepared(DATASET)
    policy = get_policy("fixed").fit(ds)
    return ds, policy, run_backtest(ds, policy, "test", config=BT)


def test_the_writer_writes_every_file_with_its_columns(fixed_result, tmp_path):
    ds, policy, result = fixed_result
    spec = PolicySpec("fixed", "fixed spread", "registry", "fixed", seeded=False)
    written = write_backtest(tmp_path, result, policy=spec.to_json(), latency_ns=1234)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(FILES)
    cols = _columns(tmp_path)
    assert cols["metrics.json"] == METRICS_KEYS
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m == json.loads(json.dumps(written.payload))
    assert m["policy"] == spec.to_json() and m["latency_ns"] == 1234 and m["gate"] is None
    assert m["dataset"] == ds.name and m["dataset_key"] == ds.cache_key
    assert m["metrics"]["episodes"] == len(result.episodes) >= 3
    episodes = pl.read_csv(tmp_path / "episodes.csv")
    assert len(episodes) == len(result.episodes)
    assert {"session", "episode", "pnl", "pnl_base"} <= set(episodes.columns)
    assert episodes.columns == written.episodes.columns
    assert cols["fills.parquet"] == result.fills.columns and len(result.fills) > 0
    assert pl.read_parquet(tmp_path / "fills.parquet").equals(result.fills)
    assert pl.read_parquet(tmp_path / "records.parquet").equals(result.records)


def test_cmm_backtest_and_cmm_run_write_the_same_files_and_columns(fixed_result, tmp_path,
                                                                    monkeypatch):
    from typer.testing import CliRunner

    from cmm.cli import app
    from cmm.pipeline.policies import replay as _replay

    ds, policy, _ = fixed_result
    cfg = tmp_path / "bt.yaml"
    cfg.write_text("backtest: {fee_tier: market_maker, episode_s: 60}\n")
    monkeypatch.setenv("COLUMNS", "200")
    cli = tmp_path / "cli"
    r = CliRunner().invoke(app, ["backtest", "--dataset", DATASET, "--policy", "fixed",
                                 "--out", str(cli), "--config", str(cfg), "--no-plots"])
    assert r.exit_code == 0, r.output
    run = tmp_path / "run"
    run.mkdir()
    c = RunConfig().model_copy(update={"backtest": BT})
    spec = PolicySpec("fixed", "fixed spread", "registry", "fixed", seeded=False)
    _replay(policy, ds, c, run, spec, {})
    assert sorted(p.name for p in cli.iterdir()) == sorted(p.name for p in run.iterdir()) \
        == sorted(FILES)
    assert _columns(cli) == _columns(run)
    a, b = (json.loads((f / "metrics.json").read_text()) for f in (cli, run))
    assert b["policy"] == spec.to_json()
    assert {k: a["policy"][k] for k in ("slug", "label", "source", "name", "gate")} == \
        {k: b["policy"][k] for k in ("slug", "label", "source", "name", "gate")}
    assert a["latency_ns"] == b["latency_ns"] == 0
    assert a["metrics"]["EPnL"] == pytest.approx(b["metrics"]["EPnL"], abs=1e-12)
    assert pl.read_parquet(cli / "fills.parquet").equals(pl.read_parquet(run / "fills.parquet"))


# ------------------------------------------------------------------------ the latency rule
LATENCY = {"unit": "ms", "one_thread": {"threads": 1, "p50": 12.3456789},
           "all_threads": {"threads": 2, "p50": 4.5678901}, "charged_ns": 4_567_890}


@pytest.fixture
def teacher_dir(tmp_path) -> Path:
    folder = tmp_path / "teacher"
    folder.mkdir()
    (folder / "latency.json").write_text(json.dumps(LATENCY))
    np.save(folder / "test_predictions.npy", np.zeros((4, 3)))
    return folder


def test_the_teacher_is_charged_its_all_threads_median(teacher_dir):
    from cmm.teacher.policy import teacher_latency_ns

    assert teacher_latency_ns(teacher_dir) == 4_567_890  # charged_ns
    assert teacher_latency_ns(teacher_dir, latency_ns=7) == 7
    assert teacher_latency_ns(teacher_dir, threads="one_thread") == 12_345_679  # rounded
    older = {k: v for k, v in LATENCY.items() if k != "charged_ns"}
    (teacher_dir / "latency.json").write_text(json.dumps(older))
    assert teacher_latency_ns(teacher_dir) == 4_567_890  # the same figure, truncated
    (teacher_dir / "latency.json").unlink()
    with pytest.raises(InputError, match="no measured latency"):
        teacher_latency_ns(teacher_dir)


def test_cmm_run_and_cmm_backtest_charge_the_teacher_alike(teacher_dir, monkeypatch):
    import cmm.teacher.policy as tp
    from cmm.pipeline.policies import build_policy as _build_policy

    spec = PolicySpec("teacher", "teacher LLM", "teacher", "teacher")
    ds = SimpleNamespace()
    run, _ = _build_policy(spec, ds, ds, RunConfig(), {"teacher_dir": teacher_dir}, {}, None)
    monkeypatch.setattr(tp, "read_meta", lambda folder: {"backbone": "tiny"})
    monkeypatch.setattr(tp, "check_data", lambda meta, ds, folder: None)
    backtest = get_policy("teacher", {"teacher": str(teacher_dir)}).fit(ds)
    assert run.latency_ns == backtest.latency_ns == 4_567_890
    one = get_policy("teacher", {"teacher": str(teacher_dir), "latency": "one_thread"}).fit(ds)
    assert one.latency_ns == 12_345_679  # asked for by name only
    run, _ = _build_policy(spec, ds, ds, RunConfig(), {"teacher_dir": teacher_dir},
                           {"latency_ns": 5}, None)
    assert run.latency_ns == 5


MIXTURE = {"gates": {"hajek": {}, "mean": {}}, "data": {"cache_key": "k"},
           "latency_by_gate": {"hajek": {"p50": 12.3456}, "mean": {"p50": 7.0009}},
           "latency": {"p50": 99.0}}


def test_a_mixture_is_charged_its_stored_one_thread_median(tmp_path, monkeypatch):
    import cmm.moe.latency as ml
    from cmm.moe.policy import mixture_latency_ns

    calls = []

    def measure(folder, windows, repeats, warmup, gate):
        calls.append((repeats, warmup, gate))
        return {"p50": 3.2109}

    monkeypatch.setattr(ml, "measure_in_subprocess", measure)
    ds = SimpleNamespace(windows=lambda split: np.zeros((2, 3, 4), np.float32))
    assert mixture_latency_ns(tmp_path, MIXTURE, "hajek", ds) == 12_345  # us -> ns, truncated
    assert mixture_latency_ns(tmp_path, MIXTURE, "mean", ds) == 7_000
    assert mixture_latency_ns(tmp_path, MIXTURE, "router", ds) == 99_000  # the older figure
    assert mixture_latency_ns(tmp_path, MIXTURE, "hajek", ds, latency_ns=5) == 5
    assert not calls
    assert mixture_latency_ns(tmp_path, {}, "mean", ds, repeats=1000, warmup=20) == 3_210
    assert mixture_latency_ns(tmp_path, MIXTURE, "mean", ds, remeasure=True) == 3_210
    assert calls == [(1000, 20, "mean"), (2000, 200, "mean")]


def test_cmm_run_and_cmm_backtest_charge_a_mixture_alike(tmp_path, monkeypatch):
    from cmm.moe.quoter import Quoter
    from cmm.pipeline.policies import build_policy as _build_policy

    folder = tmp_path / "moe" / "cmm"
    folder.mkdir(parents=True)
    (folder / "mixture.json").write_text(json.dumps(MIXTURE))
    monkeypatch.setattr(Quoter, "load", classmethod(
        lambda cls, folder, gate, instrument: SimpleNamespace(meta=MIXTURE, gate=gate)))
    ds = SimpleNamespace(cache_key="k", spec=SimpleNamespace(instrument=None))
    spec = PolicySpec("cmm-mean", "CMM, mean of experts", "mixture", "cmm", gate="mean")
    run, extra = _build_policy(spec, ds, ds, RunConfig(), {"moe_dir": tmp_path / "moe"}, {},
                               None)
    backtest = get_policy("cmm", {"artefact": str(folder), "gate": "mean"}).fit(ds)
    assert extra["gate"] == "mean"
    assert run.latency_ns == backtest.latency_ns == 7_000
