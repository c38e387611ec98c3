"""The tiny run the whole-pipeline tests share (three minutes of real Binance data, a tiny random
Llama as the teacher, small students; latencies fixed so that backtests do not depend on this
machine's timing). The session fixtures ``tiny_config`` and ``tiny_run`` (tests/conftest.py)
build it once per test session; tests that change a run work on a copy (``tiny_run_copy``)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

TINY_DATA = {
    "name": "tiny-btcusdt", "format": "binance",
    "instrument": {"tick_size": 0.1, "lot_size": 0.001, "contract_size": 1.0, "inverse": False,
                   "maker_fee": 0.0002, "taker_fee": 0.0005},
    "grid": {"dt_ms": 100, "levels": 10},
}

# Small everywhere; latencies fixed so that backtests do not depend on this machine's timing.
TINY_RUN = {
    "name": "tiny",
    "seeds": [0],
    "data": {"features": {"window": 16, "horizon": 5, "vol_window": 300}},
    "teacher": {"backbone": {"name": "tiny-random-llama", "tiny_layers": 3}, "patch_len": 4,
                "patch_stride": 4, "epochs": 1, "threads": 1, "max_train_seconds": 0,
                "latency_repeats": 5, "latency_warmup": 1, "max_eval_windows": 128},
    "probe": {"draws": 2, "windows_per_regime": 16},
    "distill": {"expert": {"hidden": 8, "z_dim": 4}, "train": {"epochs": 3, "patience": 2},
                "executor": "serial", "min_validation_samples": 40,
                "baselines": ["kd", "truth"], "ablations": ["no_task"]},
    "moe": {"epochs": 5, "kernel_hidden": 4, "latency_repeats": 1000, "latency_warmup": 10},
    "ladder": {"min_side_notional": 500},
    "backtest": {"episode_s": 10},
    "policy_settings": {"teacher": {"latency_ns": 50_000_000}, "cmm": {"latency_ns": 200_000},
                        "ridge": {"latency_ns": 100_000}, "lgbm": {"latency_ns": 100_000}},
    "robustness": {"flash_crash": {"fall_s": 1.5, "hold_s": 1, "recover_s": 3,
                                   "start_fraction": 0.2}},
}

MAIN = ["teacher", "cmm", "kd", "truth", "fixed", "as", "ridge", "lgbm", "oracle"]


def write_tiny_config(root: Path, data_dir: Path, run: dict | None = None) -> Path:
    """``root``/tiny-data.yaml (one shared Binance capture) and ``root``/tiny.yaml."""
    spec = {**TINY_DATA, "files": [str(data_dir / "binance/usdm/btcusdt_20240718.gz")]}
    (root / "tiny-data.yaml").write_text(yaml.safe_dump(spec))
    (root / "tiny.yaml").write_text(yaml.safe_dump({**(run or TINY_RUN),
                                                    "datasets": ["tiny-data.yaml"]}))
    return root / "tiny.yaml"


def run_tiny(config_path: Path, root: Path, force: tuple[str, ...] = ()) -> Path:
    """``cmm run`` of ``config_path`` into ``root`` (in this process); the run folder."""
    from cmm.cli.run import load_run_config
    from cmm.pipeline.run import Pipeline

    return Pipeline(load_run_config(config_path), root, base_dir=config_path.parent,
                    command="cmm run tiny.yaml", progress=False, force=force).run()


def assert_same(a, b, where="tables"):
    """Equal structure and values; floats to 1e-9 relative (the teacher of one run was fitted
    in another process: sums may round differently in the last bits)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            assert_same(x, y, f"{where}[{i}]")
    elif isinstance(a, float) and isinstance(b, float):
        assert a == pytest.approx(b, rel=1e-9, abs=1e-12), where
    else:
        assert a == b, where
