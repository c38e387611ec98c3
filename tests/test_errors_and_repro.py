"""One error path, the run configuration checked up front, reproducible reruns (issue 13).

Every user-reachable failure of ``cmm`` is one line on stderr and exit status 2, with no
traceback and no partial artefact: a configuration that cannot finish (unknown policy, missing
data, an empty split) before its first stage or before the first model reads the data; OS errors
(a read-only run folder, a full disk: the path and the errno's name); truncated artefacts (the
file). Anything else is a bug: its traceback and a line asking for a report, exit status 1.
Two runs of configs/tiny.yaml give byte-identical tables (slow).

Read-only folders and full disks are real where this process may mount a small tmpfs (root on
Linux); elsewhere they are simulated by patching, in a child interpreter, the call that fails.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DATA = {"name": "tiny-btcusdt", "format": "binance",
        "instrument": {"tick_size": 0.1, "lot_size": 0.001, "maker_fee": 0.0002,
                       "taker_fee": 0.0005},
        "grid": {"dt_ms": 100, "levels": 10}}
# Three minutes of real data, small everything; the data stage takes seconds.
SMALL = {"seeds": [0], "data": {"features": {"window": 16, "horizon": 5, "vol_window": 300}},
         "backtest": {"episode_s": 10},
         "robustness": {"flash_crash": {"fall_s": 1.5, "hold_s": 1, "recover_s": 3,
                                        "start_fraction": 0.2}}}

# A child interpreter that makes one OS call fail as a read-only folder or a full disk would,
# for machines where no tmpfs can be mounted, then runs the CLI.
DRIVER = """
import errno, os, sys
kind, root = sys.argv[1], sys.argv[2]
if kind == "erofs":
    real = os.mkdir
    def mkdir(path, *a, **k):
        if str(path).startswith(root):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real(path, *a, **k)
    os.mkdir = mkdir
elif kind == "enospc":
    import numpy as np
    real = np.savez
    def savez(file, *a, **k):  # as np.savez fails on a full disk: no file name
        if str(file).startswith(root):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(file, *a, **k)
    np.savez = savez
elif kind == "bug":
    import cmm.cli
    @cmm.cli.app.command("boom")
    def boom():
        {}["missing"]
from cmm.cli import main
sys.argv = ["cmm", *sys.argv[3:]]
main()
"""


def _env(cache: Path) -> dict:
    return {**os.environ, "CMM_CACHE_DIR": str(cache), "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}


def cmm(*args, cache: Path, cwd: Path | None = None, timeout: int = 600):
    return subprocess.run([sys.executable, "-m", "cmm", *map(str, args)], capture_output=True,
                          text=True, cwd=cwd, env=_env(cache), timeout=timeout)


def driven(kind: str, root: Path, *args, cache: Path, cwd: Path | None = None):
    return subprocess.run([sys.executable, "-c", DRIVER, kind, str(root), *map(str, args)],
                          capture_output=True, text=True, cwd=cwd, env=_env(cache), timeout=600)


def one_line(r) -> str:
    """The one error line of a failed command (exit 2, no traceback)."""
    assert r.returncode == 2, (r.returncode, r.stdout[-2000:], r.stderr[-4000:])
    assert "Traceback" not in r.stderr, r.stderr[-4000:]
    lines = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr[-4000:]
    return lines[0]


def line_of(path: Path, text: str) -> int:
    return next(i for i, x in enumerate(path.read_text().splitlines(), 1) if text in x)


def temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if p.name.endswith(".tmp")]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    """One data cache for the fast cases (the tiny dataset is prepared once)."""
    return tmp_path_factory.mktemp("cache")


@pytest.fixture
def config(tmp_path, data_dir):
    """``config(name, **fields)``: a run configuration beside a spec of the tiny capture."""
    spec = {**DATA, "files": [str(data_dir / "binance/usdm/btcusdt_20240718.gz")]}
    (tmp_path / "data.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))

    def make(name: str, text: str | None = None, **fields) -> Path:
        path = tmp_path / f"{name}.yaml"
        if text is None:
            text = yaml.safe_dump({"name": name, "datasets": ["data.yaml"], **SMALL, **fields},
                                  sort_keys=False)
        path.write_text(text)
        return path

    return make


def _mount(path: Path, size: str, read_only: bool = False) -> bool:
    """A small tmpfs at ``path`` (True), or False where this process may not mount one."""
    path.mkdir(parents=True, exist_ok=True)
    if (not sys.platform.startswith("linux") or os.geteuid() != 0 or not shutil.which("mount")
            or os.environ.get("CMM_TEST_NO_TMPFS")):  # (to test the simulations)
        return False
    opts = f"size={size}" + (",ro" if read_only else "")
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(path)],
                       capture_output=True, text=True)
    return r.returncode == 0


@pytest.fixture
def tmpfs(tmp_path):
    """``tmpfs(name, size, read_only)``: a mounted tmpfs folder, or None (unmounted after)."""
    mounted: list[Path] = []

    def make(name: str, size: str, read_only: bool = False) -> Path | None:
        path = tmp_path / name
        if _mount(path, size, read_only):
            mounted.append(path)
            return path
        return None

    yield make
    for path in mounted:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


# ------------------------------------------------------------- the configuration, up front


def test_unknown_baseline_fails_before_the_first_stage(config, cache, tmp_path):
    path = config("badpol", text="name: badpol\ndatasets: [data.yaml]\nbaselines:\n"
                                 "  - fixed\n  - nope\n  - as\n")
    r = cmm("run", path, "--root", tmp_path / "runs", "--no-progress", cache=cache)
    line = one_line(r)
    assert f"{path}:{line_of(path, 'nope')}" in line and "field 'baselines.1'" in line
    assert "unknown policy 'nope'" in line and "fixed" in line
    assert not (tmp_path / "runs").exists()  # no run folder, no empty backtest/nope/
    assert "start" not in r.stdout


def test_policy_settings_are_checked_against_the_policy(config, cache, tmp_path):
    path = config("badset", policy_settings={"fixed": {"spread_tiks": 3}})
    line = one_line(cmm("run", path, "--root", tmp_path / "runs", cache=cache))
    assert f"{path}:{line_of(path, 'spread_tiks')}" in line
    assert "policy_settings.fixed.spread_tiks" in line and "unknown field" in line
    path = config("nopolicy", policy_settings={"fixd": {"spread_ticks": 3}})
    line = one_line(cmm("run", path, "--root", tmp_path / "runs", cache=cache))
    assert f"{path}:{line_of(path, 'fixd')}" in line and "does not backtest" in line
    assert not (tmp_path / "runs").exists()


def test_datasets_resolve_and_their_files_exist(config, cache, tmp_path):
    path = config("nodata", text="name: nodata\ndatasets:\n  - data.yaml\n  - no-such-market\n")
    line = one_line(cmm("run", path, "--root", tmp_path / "runs", cache=cache))
    assert f"{path}:4" in line and "datasets.1" in line and "unknown dataset" in line
    (tmp_path / "gone-data.yaml").write_text(yaml.safe_dump({**DATA, "name": "gone",
                                                             "files": ["missing.gz"]}))
    path = config("gone", text="name: gone\ndatasets: [gone-data.yaml]\n")
    line = one_line(cmm("run", path, "--root", tmp_path / "runs", cache=cache))
    assert f"{path}:2" in line and "missing.gz" in line and "not found" in line
    assert not (tmp_path / "runs").exists()


def test_validation_zero_fails_up_front(config, cache, tmp_path):
    path = config("val0", data={"splits": {"train": 0.8, "validation": 0.0, "test": 0.2}})
    line = one_line(cmm("run", path, "--root", tmp_path / "runs", cache=cache))
    assert f"{path}:{line_of(path, 'validation:')}" in line
    assert "data.splits.validation" in line and "got 0.0" in line
    assert not (tmp_path / "runs").exists()


def test_flash_crash_longer_than_an_episode_fails_up_front(config, cache, tmp_path):
    path = config("crash", robustness={"flash_crash": {"fall_s": 20}})
    line = one_line(cmm("run", path, "--root", tmp_path / "runs", cache=cache))
    assert f"{path}:" in line and "robustness.flash_crash" in line and "episode" in line
    assert not (tmp_path / "runs").exists()


def test_long_horizon_empty_split_fails_after_preparation(config, cache, tmp_path):
    """The split sizes are known once the data is prepared: the error comes before any model
    stage, says which split is empty and which settings to change."""
    path = config("horizon", data={"features": {"window": 16, "horizon": 400,
                                                "vol_window": 300}})
    r = cmm("run", path, "--root", tmp_path / "runs", "--no-progress", cache=cache)
    line = one_line(r)
    assert f"{path}:{line_of(path, 'horizon:')}" in line and "data.features.horizon" in line
    assert "no validation" in line and "purge gap of 416 steps" in line
    assert "data.splits.validation" in line
    run = tmp_path / "runs" / "horizon" / "tiny-btcusdt"
    assert (run / "data" / "stage.json").is_file()  # the data stage is complete...
    assert not (run / "seed0").exists() and not (run / "crash").exists()  # ...nothing else ran


def test_teacher_fit_on_an_empty_validation_split_is_one_error(prepared_small):
    from dataclasses import dataclass

    from cmm.config import TeacherConfig
    from cmm.errors import InputError
    from cmm.teacher.fit import fit_teacher

    @dataclass
    class NoValidation:  # what `cmm teacher fit` sees on data prepared with validation: 0
        ds: object
        name: str = "no-validation"

        def windows(self, split):
            w = self.ds.windows("train")
            return w[:0] if split == "validation" else w

        def targets(self, split):
            y = self.ds.targets("train")
            return y[:0] if split == "validation" else y

    with pytest.raises(InputError, match="no validation windows.*data.splits.validation"):
        fit_teacher(NoValidation(prepared_small), TeacherConfig())


# ------------------------------------------------------------------------------ OS errors


def test_read_only_run_folder_is_one_line(config, cache, tmp_path, tmpfs):
    path = config("ok")
    ro = tmpfs("ro", "1m", read_only=True)
    if ro is not None:
        r = cmm("run", path, "--root", ro, "--no-progress", cache=cache)
        target = ro
    else:  # simulated: every mkdir under the root fails as on a read-only file system
        target = tmp_path / "ro"
        r = driven("erofs", target, "run", path, "--root", target, "--no-progress",
                   cache=cache)
    line = one_line(r)
    assert str(target) in line and "(EROFS)" in line and "read-only file system" in line


def test_full_disk_is_one_line_naming_the_path(config, cache, tmp_path, tmpfs):
    path = config("full")
    full = tmpfs("full", "300k")
    if full is not None:  # the crash stage's copy of the data does not fit
        r = cmm("run", path, "--root", full, "--no-progress", cache=cache)
        root = full
    else:  # simulated: np.savez fails as on a full disk (an OSError that names no file)
        root = tmp_path / "full"
        r = driven("enospc", root, "run", path, "--root", root, "--no-progress", cache=cache)
    line = one_line(r)
    assert "(ENOSPC)" in line and "no space left on device" in line
    assert f"{root}/full/tiny-btcusdt/crash" in line  # the artefact being written
    crash = root / "full" / "tiny-btcusdt" / "crash"
    assert not (crash / "stage.json").exists() and not any(crash.rglob("*"))
    assert temporaries(root) == []  # no half-written file left behind


@pytest.mark.parametrize("writer", ["savez", "safetensors", "parquet", "text"])
def test_disk_full_inside_a_writer_names_the_file(tmp_path, tmpfs, monkeypatch, writer):
    """np.savez raises an OSError without a file name; safetensors and polars raise their own
    exceptions ("... (os error 28)"): atomic_path turns each into an OSError naming the
    artefact, which the CLI prints as one line."""
    import polars as pl
    import safetensors.numpy
    from safetensors import SafetensorError

    from cmm.errors import describe_os_error
    from cmm.io import atomic_path

    folder = tmpfs("tiny", "64k")
    if folder is None:  # simulated: the writers fail as they do on a full disk
        folder = tmp_path / "tiny"
        text = "Error while serializing: I/O error: No space left on device (os error 28)"

        def fail(exc):
            def raiser(*a, **k):
                raise exc
            return raiser

        monkeypatch.setattr(np, "savez", fail(OSError(errno.ENOSPC, "No space left on device")))
        monkeypatch.setattr(safetensors.numpy, "save_file", fail(SafetensorError(text)))
        monkeypatch.setattr(pl.DataFrame, "write_parquet", fail(pl.exceptions.ComputeError(
            "parquet: underlying IO error: No space left on device (os error 28)")))
        monkeypatch.setattr(Path, "write_text", fail(OSError(errno.ENOSPC, "No space left")))
    big = np.random.default_rng(0).normal(size=200_000)
    target = folder / f"artefact.{writer}"
    with pytest.raises(OSError) as info:
        with atomic_path(target) as tmp:
            if writer == "savez":
                with open(tmp, "wb") as f:  # as the run writes weights.npz
                    np.savez(f, data=big)
            elif writer == "safetensors":
                safetensors.numpy.save_file({"x": big}, str(tmp))
            elif writer == "parquet":
                pl.DataFrame({"x": big}).write_parquet(tmp)
            else:
                tmp.write_text("x" * 1_000_000)
    assert info.value.errno == errno.ENOSPC and info.value.filename == str(target)
    line = describe_os_error(info.value)
    assert line.startswith(f"{target}: ") and "(ENOSPC)" in line and "\n" not in line
    assert not target.exists() and temporaries(folder) == []


def test_a_bug_shows_its_traceback_and_asks_for_a_report(cache, tmp_path):
    r = driven("bug", tmp_path, "boom", cache=cache)
    assert r.returncode == 1
    assert "Traceback" in r.stderr and "KeyError: 'missing'" in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("internal error: this is a bug in cmm") and "issue tracker" in last


# ----------------------------------------------------------------------- truncated files


@pytest.fixture(scope="module")
def prepared_small(data_dir, tmp_path_factory):
    from cmm.config import DataConfig
    from cmm.data.prepare import prepare_dataset

    root = tmp_path_factory.mktemp("small-data")
    spec = {**DATA, "files": [str(data_dir / "binance/usdm/btcusdt_20240718.gz")]}
    (root / "data.yaml").write_text(yaml.safe_dump(spec))
    config = DataConfig.model_validate(SMALL["data"])
    return prepare_dataset(root / "data.yaml", config, cache_dir=root / "cache", progress=False)


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def test_truncated_files_are_one_error_naming_them(prepared_small, tmp_path):
    """Each reader of an artefact: a truncated file is a CmmError naming it, on one line."""
    import polars as pl
    import safetensors.numpy

    from cmm.errors import CmmError
    from cmm.io import load_safetensors, read_artefact_meta, read_parquet

    parquet = tmp_path / "samples.parquet"
    shutil.copyfile(prepared_small.folder / "samples.parquet", parquet)
    tensors = tmp_path / "x.safetensors"
    safetensors.numpy.save_file({"x": np.arange(10_000.0)}, str(tensors))
    meta = tmp_path / "thing.json"
    meta.write_text(json.dumps({"kind": "thing", "schema_version": 1, "pad": list(range(99))}))
    for path in (parquet, tensors, meta):
        _truncate(path)
    cases = [(parquet, lambda: read_parquet(parquet)),
             (tensors, lambda: load_safetensors(tensors)),
             (meta, lambda: read_artefact_meta(tmp_path, "thing.json", "x.safetensors",
                                               kind="thing", schema_version=1,
                                               command="make it"))]
    for path, read in cases:
        with pytest.raises(CmmError) as info:
            read()
        assert str(path) in str(info.value) and "\n" not in str(info.value), info.value
    # the prepared dataset's own reader: a copy of the folder with one file cut short
    from cmm.data.prepare import PreparedDataset

    copy = tmp_path / "prepared"
    shutil.copytree(prepared_small.folder, copy)
    _truncate(copy / "samples.parquet")
    with pytest.raises(CmmError, match="samples.parquet"):
        PreparedDataset(copy)
    assert pl.read_parquet(prepared_small.folder / "samples.parquet").height > 0  # untouched


# ------------------------------------------------------------------------ reproducibility


@pytest.fixture(scope="module")
def tiny_twice(tmp_path_factory) -> list[Path]:
    """configs/tiny.yaml run twice, each in its own run folder and data cache: everything
    computed twice."""
    runs = []
    for i in (1, 2):
        root, cache = tmp_path_factory.mktemp(f"tiny{i}"), tmp_path_factory.mktemp(f"cache{i}")
        r = cmm("run", ROOT / "configs" / "tiny.yaml", "--root", root, "--no-progress",
                cache=cache)
        assert r.returncode == 0, r.stderr[-4000:]
        runs.append((root / "tiny", cache))
    return runs


@pytest.mark.slow
def test_tiny_twice_gives_identical_tables(tiny_twice):
    (a, _), (b, _) = tiny_twice
    first, second = (p / "report" / "tables.json" for p in (a, b))
    assert first.read_bytes() == second.read_bytes()
    tables = json.loads(first.read_text())
    assert tables["missing"] == []
    main = tables["tables"]["binance-usdm-btcusdt"]["main"]
    assert {r["slug"] for r in main} >= {"teacher", "cmm", "fixed", "as", "oracle"}


@pytest.mark.slow
def test_rerun_of_the_backtests_charges_the_stored_latencies(tiny_twice, tmp_path):
    """Without fixed latencies, the replays charge what was measured once per fitted model
    (the teacher's latency.json, each mixture's mixture.json): backtests redone give the
    same rows."""
    run, cache = tiny_twice[1]
    config = yaml.safe_load((ROOT / "configs" / "tiny.yaml").read_text())
    # the learned models' latencies measured (stored with each fitted model); the yardsticks
    # are refitted, and so re-timed, whenever their backtest stage is redone: theirs stay fixed
    config["policy_settings"] = {k: v for k, v in config["policy_settings"].items()
                                 if k in ("ridge", "lgbm")}
    path = tmp_path / "measured.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    args = ("run", path, "--root", run.parent, "--no-progress")
    r = cmm(*args, cache=cache)  # the backtests, with the measured latencies
    assert r.returncode == 0, r.stderr[-4000:]
    stages = {s["stage"]: s["cached"] for s in
              json.loads((run / "manifest.json").read_text())["stages"]}
    assert stages["binance-usdm-btcusdt/seed0/moe"] and \
        not stages["binance-usdm-btcusdt/seed0/backtest/cmm"]
    first = (run / "report" / "tables.json").read_bytes()
    r = cmm(*args, "--force", "*/backtest/*", "--force", "*/crash/*", cache=cache)
    assert r.returncode == 0, r.stderr[-4000:]
    stages = {s["stage"]: s["cached"] for s in
              json.loads((run / "manifest.json").read_text())["stages"]}
    assert not stages["binance-usdm-btcusdt/seed0/backtest/kd"]  # redone...
    assert (run / "report" / "tables.json").read_bytes() == first  # ...the same rows
    seed = run / "binance-usdm-btcusdt" / "seed0"
    charged = {p.parent.name: json.loads(p.read_text())["latency_ns"]
               for p in (seed / "backtest").glob("*/metrics.json")}
    assert charged["teacher"] == json.loads(
        (seed / "teacher" / "latency.json").read_text())["charged_ns"]
    mix = json.loads((seed / "moe" / "kd" / "mixture.json").read_text())
    assert charged["kd"] == int(mix["latency_by_gate"]["mean"]["p50_us"] * 1e3)
    mix = json.loads((seed / "moe" / "cmm" / "mixture.json").read_text())
    assert charged["cmm-router"] == int(mix["latency_by_gate"]["router"]["p50_us"] * 1e3)


@pytest.mark.slow
def test_truncated_artefact_in_a_run_is_one_line(tiny_twice):
    run, cache = tiny_twice[0]
    records = (run / "binance-usdm-btcusdt" / "seed-independent" / "backtest" / "fixed"
               / "records.parquet")
    _truncate(records)
    r = cmm("run", ROOT / "configs" / "tiny.yaml", "--root", run.parent, "--report-only",
            cache=cache)
    line = one_line(r)
    assert str(records) in line and ("truncated" in line or "corrupt" in line)
