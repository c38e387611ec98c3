"""No silent stale or corrupt artefact: every file a stage or the data cache writes is recorded
(size, sha256) and checked before it is trusted; a bad file is named and its owner redone (and,
through the stamps of what each stage read, everything below it, down to the report); a file
that cannot be healed gives a one-line error naming it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cmm.errors import CorruptArtefactError
from cmm.io import file_sha256, sha256_file
from cmm.pipeline.stages import Display, StageRunner, Timings, read_marker
from tiny import assert_same, run_tiny

# ----------------------------------------------------------------------------- helpers


def _overwrite(path: Path, n: int = 4096) -> None:
    """Overwrite ``n`` bytes in the middle of ``path`` with other bytes; the size stays."""
    data = bytearray(path.read_bytes())
    start = max(0, len(data) // 2 - n // 2)
    end = min(len(data), start + n)
    data[start:end] = bytes((b + 1) % 256 for b in data[start:end])
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _one_line(exc: BaseException, name: str) -> None:
    text = str(exc)
    assert "\n" not in text and name in text, text


# ------------------------------------------------------------------------- the data cache


@pytest.fixture
def aapl(tmp_path):
    from cmm.data.prepare import prepare_dataset

    ds = prepare_dataset("lobster-aapl-sample", cache_dir=tmp_path, progress=False)
    return ds, tmp_path


def test_data_cache_records_every_file(aapl):
    ds, _ = aapl
    files = sorted(p.name for p in ds.folder.iterdir() if p.name != "meta.json")
    assert sorted(ds.meta["checksums"]) == files
    for name, rec in ds.meta["checksums"].items():
        path = ds.folder / name
        assert rec == {"size": path.stat().st_size, "sha256": sha256_file(path)}


@pytest.mark.parametrize("damage", ["truncate", "overwrite"])
@pytest.mark.parametrize("name", ["samples.parquet", "events_0.npz", "features.parquet"])
def test_corrupt_data_cache_file_is_rebuilt_with_a_message(aapl, capsys, caplog, damage, name):
    from cmm.data.prepare import prepare_dataset

    ds, cache = aapl
    before = ds.samples
    (_truncate if damage == "truncate" else _overwrite)(ds.folder / name)
    capsys.readouterr()
    healed = prepare_dataset("lobster-aapl-sample", cache_dir=cache, progress=False)
    err = capsys.readouterr().err
    assert healed.folder == ds.folder
    assert f"{ds.folder / name}" in err and "rebuilding" in err, err
    assert any(name in r.getMessage() for r in caplog.records)
    assert sha256_file(ds.folder / name) == ds.meta["checksums"][name]["sha256"]
    assert healed.samples.equals(before)
    assert [p.name for p in cache.iterdir() if p.name.startswith(".")] == []  # no temporaries


def test_corrupt_file_read_directly_is_one_line_naming_it(aapl):
    from cmm.data.prepare import PreparedDataset

    ds, _ = aapl
    _truncate(ds.folder / "samples.parquet")
    with pytest.raises(CorruptArtefactError) as exc:
        PreparedDataset(ds.folder)
    _one_line(exc.value, str(ds.folder / "samples.parquet"))
    assert "truncated" in str(exc.value)


def test_size_kept_overwrite_is_caught_before_first_use(aapl):
    from cmm.data.prepare import PreparedDataset

    ds, _ = aapl
    _overwrite(ds.folder / "events_0.npz")
    reopened = PreparedDataset(ds.folder)  # sizes only on opening: the events are not read yet
    with pytest.raises(CorruptArtefactError) as exc:
        reopened.events(0)
    _one_line(exc.value, "events_0.npz")
    assert "sha256" in str(exc.value)


def test_folder_without_checksums_heals_on_an_unreadable_file(aapl, capsys):
    """A folder written before checksums were recorded: a truncated parquet still gives one
    line naming it, and prepare_dataset rebuilds the folder (now with checksums)."""
    from cmm.data.prepare import PreparedDataset, prepare_dataset

    ds, cache = aapl
    meta = json.loads((ds.folder / "meta.json").read_text())
    del meta["checksums"]
    (ds.folder / "meta.json").write_text(json.dumps(meta))
    _truncate(ds.folder / "steps.parquet")
    with pytest.raises(CorruptArtefactError) as exc:
        PreparedDataset(ds.folder)
    _one_line(exc.value, str(ds.folder / "steps.parquet"))
    assert "cannot read it" in str(exc.value)
    healed = prepare_dataset("lobster-aapl-sample", cache_dir=cache, progress=False)
    assert "steps.parquet" in capsys.readouterr().err
    assert healed.steps.equals(ds.steps) and "checksums" in healed.meta


def test_truncated_safetensors_is_one_line_naming_it(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    from cmm.io import load_safetensors

    path = tmp_path / "x.safetensors"
    save_file({"w": np.arange(4096, dtype=np.float32)}, str(path))
    _truncate(path)
    for framework in ("np", "pt"):
        with pytest.raises(CorruptArtefactError) as exc:
            load_safetensors(path, framework)
        _one_line(exc.value, str(path))


def test_checksum_is_read_once_per_process_while_unchanged(tmp_path, monkeypatch):
    import cmm.io as io

    path = tmp_path / "f"
    path.write_bytes(b"a" * 1000)
    calls = []
    real = io.sha256_file
    monkeypatch.setattr(io, "sha256_file", lambda p: calls.append(p) or real(p))
    first = file_sha256(path)
    assert file_sha256(path) == first and len(calls) == 1
    path.write_bytes(b"b" * 1000)  # same size, new content: hashed again
    assert file_sha256(path) != first and len(calls) == 2


# ------------------------------------------------------------------------ the stage runner


def _runner(force=()):
    return StageRunner(Display(enabled=False), Timings(None), force=force)


def _writer(calls: list, name: str, text: str = "x" * 5000):
    def work(folder, on_progress):
        calls.append(name)
        (folder / "out.bin").write_text(text)
        (folder / "sub").mkdir()
        (folder / "sub" / "more.txt").write_text("y")
        return {}

    return work


def _chain(runner, root: Path, calls: list, only_a: bool = False):
    a = runner.run("a", "ka", root / "a", {"x": 1}, _writer(calls, "a"))
    if only_a:
        return a, None
    b = runner.run("b", "kb", root / "b", {"a": a.key}, _writer(calls, "b"))
    return a, b


def test_marker_records_files_stamp_and_what_it_read(tmp_path):
    a, b = _chain(_runner(), tmp_path, [])
    ma, mb = read_marker(a.folder), read_marker(b.folder)
    assert set(ma["files"]) == {"out.bin", "sub/more.txt"}
    assert ma["files"]["out.bin"] == {"size": 5000,
                                      "sha256": sha256_file(a.folder / "out.bin")}
    assert ma["after"] == {} and mb["after"] == {a.key: ma["stamp"]} and ma["stamp"]


@pytest.mark.parametrize("damage", ["truncate", "overwrite", "delete"])
def test_damaged_stage_is_redone_and_so_is_what_reads_it(tmp_path, caplog, damage):
    calls: list = []
    _chain(_runner(), tmp_path, calls)
    path = tmp_path / "a" / "out.bin"
    {"truncate": _truncate, "overwrite": _overwrite, "delete": Path.unlink}[damage](path)
    calls.clear()
    runner = _runner()
    a, b = _chain(runner, tmp_path, calls)
    assert calls == ["a", "b"] and not a.cached and not b.cached
    assert any(f"redoing a: {path}" in r.getMessage() for r in caplog.records)
    calls.clear()
    _chain(_runner(), tmp_path, calls)
    assert calls == []


def test_forced_stage_redoes_its_dependents(tmp_path):
    calls: list = []
    _chain(_runner(), tmp_path, calls)
    calls.clear()
    _chain(_runner(force=("a",)), tmp_path, calls)
    assert calls == ["a", "b"]


def test_dependent_left_from_before_an_interrupted_rerun_is_redone(tmp_path):
    """A forced rerun of ``a`` killed before ``b`` was redone: the next run (not forced) still
    redoes ``b``, whose marker holds the stamp of the ``a`` it was made from."""
    calls: list = []
    _chain(_runner(), tmp_path, calls)
    _chain(_runner(force=("a",)), tmp_path, calls, only_a=True)
    calls.clear()
    _chain(_runner(), tmp_path, calls)
    assert calls == ["b"]


def test_marker_without_checksums_is_trusted(tmp_path):
    """Folders marked before checksums and stamps were recorded are not redone wholesale."""
    calls: list = []
    a, b = _chain(_runner(), tmp_path, calls)
    for folder in (a.folder, b.folder):
        marker = read_marker(folder)
        for k in ("files", "stamp", "after"):
            del marker[k]
        (folder / "stage.json").write_text(json.dumps(marker))
    calls.clear()
    _chain(_runner(), tmp_path, calls)
    assert calls == []


# ------------------------------------------------------------------------------ cmm run
# On the session's tiny run (tests/tiny.py: latencies fixed, so that a stage redone gives the
# same numbers); damaging tests work on a copy.


def _run(config_path: Path, root: Path, force: tuple[str, ...] = ()) -> Path:
    return run_tiny(config_path, root, force)


@pytest.fixture
def run_copy(tiny_run_copy) -> Path:
    return tiny_run_copy


def _stages(run_dir: Path) -> dict[str, bool]:
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return {s["stage"]: s["cached"] for s in manifest["stages"]}


def _tables(run_dir: Path) -> dict:
    return json.loads((run_dir / "report" / "tables.json").read_text())["tables"]


def _redone(run_dir: Path, report_before: str) -> set[str]:
    """The stages this run did not skip (the report's own line: whether its stamp changed)."""
    redone = {k for k, cached in _stages(run_dir).items() if not cached}
    if read_marker(run_dir / "report")["stamp"] != report_before:
        redone.add("report")
    return redone


def _report_stamp(run_dir: Path) -> str:
    return read_marker(run_dir / "report")["stamp"]


# The shared tiny run and the three reruns below: ~50 s together on 2 busy cores.
@pytest.mark.slow  # reads or reruns the session's tiny run
def test_every_stage_records_its_files(tiny_run):
    for marker_path in tiny_run.rglob("stage.json"):
        marker = json.loads(marker_path.read_text())
        folder = marker_path.parent
        assert marker["stamp"] and isinstance(marker["after"], dict), folder
        for rel, rec in marker["files"].items():
            assert (folder / rel).stat().st_size == rec["size"], folder / rel
            assert file_sha256(folder / rel) == rec["sha256"], folder / rel
    moe = json.loads((tiny_run / "tiny-btcusdt/seed0/moe/stage.json").read_text())
    assert "cmm/mixture.safetensors" in moe["files"]
    keys = {json.loads(m.read_text())["key"] for m in tiny_run.rglob("stage.json")}
    report = json.loads((tiny_run / "report/stage.json").read_text())
    assert set(report["after"]) >= keys - {report["key"]}  # it read every stage


@pytest.mark.slow  # reads or reruns the session's tiny run
def test_corrupt_mixture_redoes_its_stage_and_everything_below(run_copy, tiny_config,
                                                               tiny_run):
    """The issue's case: 4 KiB overwritten inside the mixture (size unchanged), then a forced
    CMM backtest: the mixtures are redone, every backtest that reads them, and the report,
    whose numbers equal those before the damage."""
    seed = "tiny-btcusdt/seed0"
    mixture = run_copy / seed / "moe" / "cmm" / "mixture.safetensors"
    _overwrite(mixture)
    report = _report_stamp(run_copy)
    _run(tiny_config, run_copy.parent, force=("*/backtest/cmm",))
    redone = _redone(run_copy, report)
    manifest = json.loads((run_copy / "manifest.json").read_text())
    mixtures = {p["slug"] for p in manifest["policies"] if p["source"] == "mixture"}
    mixture_readers = {f"{seed}/{table}/{slug}" for slug in mixtures
                       for table in ("backtest", "crash")} & set(_stages(run_copy))
    assert redone == {f"{seed}/moe", "report", *mixture_readers}, redone
    assert f"{seed}/backtest/cmm-router" in redone and f"{seed}/crash/cmm" in redone
    log = (run_copy / "logs" / "run.log").read_text()
    assert f"redoing {seed}/moe: {mixture}: sha256 differs" in log
    assert f"redoing {seed}/backtest/cmm-mean: its input {seed}/moe was redone since" in log
    assert_same(_tables(run_copy), _tables(tiny_run))


@pytest.mark.slow  # reads or reruns the session's tiny run
def test_truncated_backtest_parquet_redoes_it_and_what_reads_it(run_copy, tiny_config,
                                                               tiny_run):
    seed = "tiny-btcusdt/seed-independent"  # the fixed spread does not use the seed
    records = run_copy / seed / "backtest" / "fixed" / "records.parquet"
    _truncate(records)
    report = _report_stamp(run_copy)
    _run(tiny_config, run_copy.parent)
    assert _redone(run_copy, report) == {f"{seed}/backtest/fixed", f"{seed}/crash/fixed", "report"}
    assert f"{records}: " in (run_copy / "logs" / "run.log").read_text()
    assert_same(_tables(run_copy), _tables(tiny_run))


@pytest.mark.slow  # reads or reruns the session's tiny run
def test_force_redoes_the_stages_below_and_the_report(run_copy, tiny_config):
    seed = "tiny-btcusdt/seed-independent"
    report = _report_stamp(run_copy)
    _run(tiny_config, run_copy.parent, force=("*/backtest/fixed",))
    assert _redone(run_copy, report) == {f"{seed}/backtest/fixed", f"{seed}/crash/fixed",
                                         "report"}
    report = _report_stamp(run_copy)
    _run(tiny_config, run_copy.parent)  # and then nothing is left to redo
    assert _redone(run_copy, report) == set()
