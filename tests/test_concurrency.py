"""Two runs or preparations at the same time, a run killed with its workers busy, and the
temporaries a kill leaves behind.

- Two ``cmm run`` of one run folder started together: one runs, the other is refused with one
  line naming the folder and the pid holding it (exit 2); the survivor's folder is complete (a
  rerun skips every stage) and its report equals that of a run made elsewhere.
- Two preparations of one dataset into an empty cache: both succeed, one artefact, no
  temporaries or lock files left.
- ``kill -9`` of ``cmm run`` while the distill workers fit students: the workers die with it.
- A prepare removes the temporaries of dead processes from the cache and leaves those of live
  ones alone.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import yaml
from tiny import TINY_DATA, TINY_RUN, assert_same

from cmm.errors import CmmError
from cmm.io import file_lock, owner_tag

# The pipeline test's tiny run, with the students fitted in two worker processes.
RUN = {**TINY_RUN, "distill": {**TINY_RUN["distill"], "executor": "process", "max_workers": 2}}


@pytest.fixture(scope="module")
def env(tmp_path_factory) -> dict:
    """A cache of this module's own, shared by its subprocesses."""
    cache = tmp_path_factory.mktemp("cache")
    return {**os.environ, "CMM_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1",
            "COLUMNS": "200"}


@pytest.fixture(scope="module")
def data_spec(tmp_path_factory, data_dir) -> Path:
    root = tmp_path_factory.mktemp("spec")
    spec = {**TINY_DATA, "files": [str(data_dir / "binance/usdm/btcusdt_20240718.gz")]}
    (root / "tiny-data.yaml").write_text(yaml.safe_dump(spec))
    return root / "tiny-data.yaml"


@pytest.fixture(scope="module")
def run_config(data_spec) -> Path:
    path = data_spec.parent / "tiny.yaml"
    path.write_text(yaml.safe_dump({**RUN, "datasets": [data_spec.name]}))
    return path


def _start_run(config: Path, root: Path, env: dict, **extra) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cmm", "run", str(config), "--root", str(root),
                             "--no-progress"], env={**env, **extra}, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _tables(run_dir: Path) -> dict:
    return json.loads((run_dir / "report" / "tables.json").read_text())


def _stages(run_dir: Path) -> dict[str, bool]:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return {s["stage"]: s["cached"] for s in manifest["stages"]}


def _leftovers(folder: Path) -> list[str]:
    """Temporaries and lock files anywhere under ``folder``."""
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*")
                  if p.name.endswith((".tmp", ".lock")))


# ---------------------------------------------------------------------------- the lock itself


def test_a_held_lock_refuses_or_makes_wait_and_leaves_no_file(tmp_path):
    lock = tmp_path / ".thing.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom cmm.io import file_lock\n"
         f"with file_lock({str(lock)!r}, wait=False, what='x'):\n"
         "    print('held', flush=True)\n    time.sleep(1.5)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(CmmError, match=rf"the thing is in use .*\(pid {holder.pid}\)"), \
                file_lock(lock, wait=False, what="the thing"):
            pass
        t0 = time.monotonic()
        with file_lock(lock, wait=True, what="the thing"):
            assert time.monotonic() - t0 > 0.3  # waited for the holder
            assert lock.read_text().strip() == str(os.getpid())
    finally:
        holder.wait(timeout=30)
    assert not lock.exists()


# ------------------------------------------------------------------------------ preparations

PREPARE = ("import sys\nfrom cmm.data.prepare import prepare_dataset\n"
           "print(prepare_dataset(sys.argv[1], progress=False).folder)")


def test_two_concurrent_prepares_build_one_artefact(data_spec, tmp_path):
    env = {**os.environ, "CMM_CACHE_DIR": str(tmp_path / "cache")}
    procs = [subprocess.Popen([sys.executable, "-c", PREPARE, str(data_spec)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    folders = {out.strip().splitlines()[-1] for out, _ in outs}
    prepared = tmp_path / "cache" / "prepared"
    assert len(folders) == 1 and [p.name for p in prepared.iterdir()] == [Path(*folders).name]
    assert (Path(*folders) / "meta.json").is_file()
    waited = [err for _, err in outs if "waiting for the preparation of" in err]
    assert len(waited) <= 1  # the first to get the lock never waits (the other does when early)


def test_prepare_removes_temporaries_of_dead_processes_only(data_spec, tmp_path):
    from cmm.data.prepare import prepare_dataset

    dead = subprocess.Popen(["true"])
    dead.wait()
    alive = subprocess.Popen(["sleep", "120"])
    root = tmp_path / "prepared"
    try:
        stale = root / f".tiny-btcusdt-0123456789abcdef.k2j4h5g6.{owner_tag(dead.pid)}.tmp"
        busy = root / f".tiny-btcusdt-0123456789abcdef.a1b2c3d4.{owner_tag(alive.pid)}.tmp"
        stale_file = root / f".other.json.zz9yy8xx.{owner_tag(dead.pid)}.tmp"
        for d in (stale, busy):
            (d / "part").mkdir(parents=True)
            (d / "part" / "steps.parquet").write_bytes(b"half")
        stale_file.write_text("{")
        ds = prepare_dataset(data_spec, cache_dir=root, progress=False)
        assert not stale.exists() and not stale_file.exists()
        assert (busy / "part" / "steps.parquet").is_file()
        assert sorted(p.name for p in root.iterdir()) == sorted([busy.name, ds.folder.name])
    finally:
        alive.kill()
        alive.wait()


# ---------------------------------------------------------------------------------- cmm run


@pytest.fixture(scope="module")
def concurrent_runs(run_config, env, tmp_path_factory):
    """Two `cmm run` of one run folder, started together: (run folder, results)."""
    root = tmp_path_factory.mktemp("runs")
    procs = [_start_run(run_config, root, env) for _ in range(2)]
    results = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=900)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        results.append((p.pid, p.returncode, err))
    return root / "tiny", results


@pytest.mark.slow
def test_two_concurrent_runs_of_one_folder(concurrent_runs, run_config, env):
    run_dir, results = concurrent_runs
    codes = sorted(rc for _, rc, _ in results)
    assert codes in ([0, 0], [0, 2]), [(rc, err[-3000:]) for _, rc, err in results]
    winner = next(pid for pid, rc, _ in results if rc == 0)
    for _, rc, err in results:
        if rc == 2:  # refused at once, with one line naming the folder and who holds it
            lines = err.strip().splitlines()
            assert len(lines) == 1, lines
            assert str(run_dir) in lines[0] and f"pid {winner}" in lines[0], lines[0]
    # the survivor's folder is complete and consistent: a rerun redoes nothing, same report
    stages = _stages(run_dir)
    assert stages and not any(stages.values())
    before = (run_dir / "report" / "tables.json").read_bytes()
    rerun = subprocess.run([sys.executable, "-m", "cmm", "run", str(run_config), "--root",
                            str(run_dir.parent), "--no-progress"], env=env, capture_output=True,
                           text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    stages = _stages(run_dir)
    assert all(stages.values()), [k for k, v in stages.items() if not v]
    assert (run_dir / "report" / "tables.json").read_bytes() == before
    assert _leftovers(run_dir) == []


def _workers(proc: psutil.Process) -> list[psutil.Process]:
    out = []
    for child in proc.children(recursive=True):
        try:
            if "spawn_main" in " ".join(child.cmdline()):
                out.append(child)
        except psutil.Error:
            pass
    return out


@pytest.mark.slow
def test_kill_during_distill_leaves_no_worker_and_resumes_to_the_same_report(
        concurrent_runs, run_config, env, tmp_path):
    root = tmp_path / "runs"
    proc = _start_run(run_config, root, env)
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 600
    descendants: list[psutil.Process] = []
    workers: list[psutil.Process] = []
    try:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"run ended before its workers were seen: {proc.stderr.read()[-3000:]}")
            if len(_workers(parent)) >= 2:
                time.sleep(1.0)  # the workers are past start-up, fitting students
                workers = _workers(parent)
                if len(workers) >= 2:
                    descendants = parent.children(recursive=True)
                    break
            time.sleep(0.05)
        else:
            pytest.fail("never saw the distill stage's two worker processes")
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert {w.pid for w in workers} <= {p.pid for p in descendants}
    _, alive = psutil.wait_procs(descendants, timeout=10)
    assert alive == [], [(p.pid, p.cmdline()) for p in alive]
    run_dir = root / "tiny"
    assert not (run_dir / "tiny-btcusdt" / "seed0" / "distill" / "stage.json").exists()

    # resumed, the run redoes the experts and gives the report of the concurrent runs' survivor
    done = subprocess.run([sys.executable, "-m", "cmm", "run", str(run_config), "--root",
                           str(root), "--no-progress"], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    stages = _stages(run_dir)
    assert stages["tiny-btcusdt/seed0/probe"] and not stages["tiny-btcusdt/seed0/distill"]
    survivor = concurrent_runs[0]
    assert_same(_tables(run_dir), _tables(survivor))
    assert _leftovers(run_dir) == []
