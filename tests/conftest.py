"""Shared fixtures. Real captures come from the data folder (../shared/data or CMM_DATA_DIR);
prepared artefacts and converted weights go to a per-run temporary cache."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest

# Set before cmm is imported anywhere, so every default cache path points here.
_CACHE = Path(tempfile.mkdtemp(prefix="cmm-test-cache-"))
os.environ.setdefault("CMM_CACHE_DIR", str(_CACHE))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from cmm.io import default_data_dir  # noqa: E402


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = default_data_dir()
    if not (path / "README.md").is_file():
        pytest.fail(f"real data folder not found at {path}; set CMM_DATA_DIR")
    return path


_PREPARED: dict = {}


@pytest.fixture(scope="session")
def prepared():
    """``prepared(name_or_spec)``: a prepared dataset, built once per test run."""
    from cmm.data.prepare import prepare_dataset

    def get(name: str):
        if name not in _PREPARED:
            _PREPARED[name] = prepare_dataset(name, progress=False)
        return _PREPARED[name]

    return get


@pytest.fixture(scope="session")
def tiny_config(tmp_path_factory, data_dir) -> Path:
    """tests/tiny.py's run configuration, written once per session."""
    from tiny import write_tiny_config

    return write_tiny_config(tmp_path_factory.mktemp("tiny-config"), data_dir)


@pytest.fixture(scope="session")
def tiny_run(tiny_config, tmp_path_factory) -> Path:
    """One finished tiny run for the whole session (one pipeline instead of one per module).
    Read it, do not change it: a test that reruns or damages a run uses ``tiny_run_copy``."""
    from tiny import run_tiny

    return run_tiny(tiny_config, tmp_path_factory.mktemp("runs"))


@pytest.fixture
def tiny_run_copy(tiny_run, tmp_path) -> Path:
    """A copy of the session's tiny run (same folder name) for a test to rerun or damage."""
    import shutil

    dest = tmp_path / "runs" / tiny_run.name
    shutil.copytree(tiny_run, dest, symlinks=True, ignore=shutil.ignore_patterns(".lock"))
    return dest
