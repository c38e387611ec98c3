"""Code version in every key (issue 12): an edit of a function a stage runs gives that stage a
new key, and the stage and what reads it are redone while unrelated stages are reused."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import cmm
from cmm.codeversion import STAGE_ENTRIES, code_version, stage_modules

LIVE = Path(cmm.__file__).resolve().parent
EDITED = "cmm/moe/mixture.py"  # the mixture: run by the moe stage and by the backtests


def _package_copy(tmp_path: Path) -> Path:
    dest = tmp_path / "src" / "cmm"
    shutil.copytree(LIVE, dest, ignore=shutil.ignore_patterns("__pycache__"))
    return dest


def _edit_a_function(root: Path) -> str:
    """Add a statement at the top of the first function of ``EDITED`` (its behaviour kept)."""
    path = root.parent / EDITED
    tree = ast.parse(path.read_text())
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef))
    fn.body.insert(1 if ast.get_docstring(fn) else 0, ast.parse("_edited = True").body[0])
    path.write_text(ast.unparse(tree) + "\n")
    return fn.name


def test_a_copy_of_the_package_has_the_same_code_versions(tmp_path):
    root = _package_copy(tmp_path)
    for kind in STAGE_ENTRIES:
        assert code_version(kind, root) == code_version(kind), kind


def test_an_edited_function_changes_the_stages_that_run_it_only(tmp_path):
    root = _package_copy(tmp_path)
    _edit_a_function(root)
    changed = {k for k in STAGE_ENTRIES if code_version(k, root) != code_version(k)}
    assert changed == {k for k in STAGE_ENTRIES if "cmm.moe.mixture" in stage_modules(k)}
    assert {"moe", "backtest"} <= changed
    assert not changed & {"dataset", "data", "teacher", "features", "probe", "distill", "crash"}


def test_comments_do_not_count_and_every_module_of_a_stage_does(tmp_path):
    root = _package_copy(tmp_path)
    path = root / "teacher" / "fit.py"
    path.write_text("# a comment\n" + path.read_text() + "\n# another, and blank lines\n\n")
    assert all(code_version(k, root) == code_version(k) for k in STAGE_ENTRIES)
    # a reader loaded by name through the readers' registry is part of the data's version
    assert "cmm.data.readers.lobster" in stage_modules("dataset")
    assert "cmm.pipeline.run" not in stage_modules("dataset")
    assert "cmm.pipeline.run" in stage_modules("teacher")
    # every policy module of the registry's table is part of the backtests' version
    assert {"cmm.strategy.baselines", "cmm.yardsticks.policy", "cmm.rl.policy",
            "cmm.teacher.policy", "cmm.moe.policy"} <= set(stage_modules("backtest"))


@pytest.mark.slow  # a tiny pipeline rerun with the edited source
def test_the_edited_stage_and_its_readers_rerun_the_others_are_reused(tiny_run_copy,
                                                                       tiny_config, tmp_path):
    root = _package_copy(tmp_path)
    _edit_a_function(root)
    env = {**os.environ, "PYTHONPATH": str(root.parent)}
    where = subprocess.run([sys.executable, "-c", "import cmm; print(cmm.__file__)"], env=env,
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).resolve().parent == root.resolve()  # the copy is what runs
    r = subprocess.run([sys.executable, "-m", "cmm", "run", str(tiny_config), "--root",
                        str(tiny_run_copy.parent), "--no-progress"], env=env,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    manifest = json.loads((tiny_run_copy / "manifest.json").read_text())
    cached = {s["stage"]: s["cached"] for s in manifest["stages"]}
    seed = "tiny-btcusdt/seed0"
    for kept in ("tiny-btcusdt/data", "tiny-btcusdt/crash", f"{seed}/teacher",
                 f"{seed}/features", f"{seed}/probe", f"{seed}/distill"):
        assert cached[kept], f"{kept} was redone"
    assert not cached[f"{seed}/moe"]
    backtests = [k for k in cached if "/backtest/" in k or "/crash/" in k]
    assert backtests and not any(cached[k] for k in backtests)
