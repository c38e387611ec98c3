"""Teachers apart from student seeds (``teacher.seeds``): one teacher fit shared by the run
seeds that distil it, in one folder per teacher seed, recorded in the manifest and said in the
report; unset, one teacher per run seed in the seed's folder, as before."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from cmm.config import RunConfig
from cmm.errors import InputError
from cmm.pipeline.layout import teacher_folder, teacher_folders, teacher_seed, teacher_seeds

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml"


def _config(**update) -> RunConfig:
    from cmm.cli.run import load_run_config

    cfg = load_run_config(TINY)
    return RunConfig.model_validate({**cfg.model_dump(), **update})


def _with_teacher_seeds(seeds, run_seeds=(0, 1), **update) -> RunConfig:
    cfg = _config(**update)
    data = cfg.model_dump()
    data["seeds"] = list(run_seeds)
    data["teacher"]["seeds"] = seeds
    return RunConfig.model_validate(data)


def test_unset_teacher_seeds_keep_one_teacher_per_seed_folder(tmp_path):
    from cmm.pipeline.run import Pipeline, seeded

    cfg = _with_teacher_seeds(None, (0, 1, 2))
    assert teacher_seeds(cfg) == {"0": 0, "1": 1, "2": 2}
    for s in (0, 1, 2):
        assert teacher_folder(tmp_path, "d", s, cfg) == tmp_path / "d" / f"seed{s}" / "teacher"
        assert teacher_folder(tmp_path, "d", s, cfg, "control/teacher") == \
            tmp_path / "d" / f"seed{s}" / "control" / "teacher"
        c = seeded(cfg, s)
        assert c.teacher.seed == c.teacher.backbone.seed == c.distill.train.seed == s
    pipe = Pipeline(cfg, tmp_path, progress=False)
    assert pipe._teacher_ids("d", 1, "teacher") == ("d/seed1/teacher", "d/seed1/features")
    assert pipe._teacher_ids("d", 1, "teacher-random")[0] == "d/seed1/teacher-random"
    assert pipe._teacher_ids("d", 1, "control/teacher") == ("d/seed1/control/teacher",
                                                            "d/seed1/control/features")
    # the manifest's JSON form, and a manifest from before teacher.seeds existed
    as_json = {"seeds": [0, 1], "teacher": {}}
    assert teacher_folder(tmp_path, "d", 1, as_json) == tmp_path / "d" / "seed1" / "teacher"


def test_listed_teacher_seeds_cycle_over_the_run_seeds(tmp_path):
    from cmm.pipeline.run import Pipeline, run_seed, seeded

    cfg = _with_teacher_seeds([7, 3], (0, 1, 2))
    assert teacher_seeds(cfg) == {"0": 7, "1": 3, "2": 7}
    assert teacher_seed(cfg.model_dump(mode="json"), 2) == 7
    assert teacher_folder(tmp_path, "d", 2, cfg) == tmp_path / "d" / "teacher-seed7" / "teacher"
    assert teacher_folders(tmp_path, "d", cfg, "teacher-random") == [
        tmp_path / "d" / "teacher-seed7" / "teacher-random",
        tmp_path / "d" / "teacher-seed3" / "teacher-random"]
    c = seeded(cfg, 2)  # the teacher and its init: teacher seed 7; the rest: run seed 2
    assert (c.teacher.seed, c.teacher.backbone.seed) == (7, 7)
    assert c.probe.seed == c.distill.train.seed == c.moe.seed == run_seed(c) == 2
    assert seeded(cfg, 0).teacher == seeded(cfg, 2).teacher  # one stage key
    pipe = Pipeline(cfg, tmp_path, progress=False)
    assert pipe._teacher_ids("d", 2, "teacher") == ("d/teacher-seed7/teacher",
                                                    "d/teacher-seed7/features")


@pytest.mark.parametrize("seeds, what", [([], "empty"), ([0, 1, 0], "repeats 0")])
def test_teacher_seeds_must_be_distinct_and_non_empty(seeds, what, tmp_path):
    from cmm.pipeline.run import Pipeline

    cfg = _with_teacher_seeds(seeds)
    with pytest.raises(InputError, match=what) as err:
        Pipeline(cfg, tmp_path, base_dir=TINY.parent, progress=False).check()
    assert err.value.field == "teacher.seeds"
    assert not (tmp_path / cfg.name).exists()  # refused before anything is written


def _stage(folder: Path) -> dict:
    return json.loads((folder / "stage.json").read_text())


@pytest.mark.slow
def test_student_seeds_share_one_teacher_fit(tmp_path):
    from cmm.pipeline.run import Pipeline

    cfg = _with_teacher_seeds([0], (0, 1), name="tiny-shared")
    run = Pipeline(cfg, tmp_path, base_dir=TINY.parent, command="cmm run tiny.yaml",
                   progress=False).run()
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["teacher_seeds"] == {"0": 0, "1": 0}
    d = manifest["datasets"][0]["slug"]
    ran = [s["stage"] for s in manifest["stages"]]
    fits = re.compile(rf"{re.escape(d)}/(seed|teacher-seed)\d+(/control)?/teacher")
    teachers = [s for s in ran if fits.fullmatch(s)]  # teacher fits, not their backtests
    assert teachers == [f"{d}/teacher-seed0/teacher"], teachers
    assert f"{d}/teacher-seed0/teacher-random" in ran
    log = (run / "logs" / "run.log").read_text()
    assert log.count(f"start {d}/teacher-seed0/teacher ") == 1  # fitted once
    assert log.count(f"start {d}/teacher-seed0/features ") == 1
    shared = run / d / "teacher-seed0"
    teacher, features = _stage(shared / "teacher"), _stage(shared / "teacher" / "features")
    assert teacher["inputs"]["teacher"]["seed"] == 0
    assert features["inputs"]["teacher"] == teacher["key"]
    for s in (0, 1):
        seed = run / d / f"seed{s}"
        assert not (seed / "teacher").exists() and not (seed / "teacher-random").exists()
        distill = _stage(seed / "distill")
        assert distill["inputs"]["features"] == features["key"]  # both read the one teacher
        assert distill["inputs"]["distill"]["train"]["seed"] == s  # the students are the seed's
        assert _stage(seed / "probe")["inputs"]["teacher"] == teacher["key"]
        assert (seed / "backtest" / "cmm" / "metrics.json").is_file()
    tables = json.loads((run / "report" / "tables.json").read_text())
    t = tables["tables"][d]
    assert t["teacher_seeds_note"] == \
        "One teacher per market (seed 0), distilled by student seeds 0 and 1."
    rows = {r["model"]: r for r in t["prediction"]}
    assert rows["teacher"]["r2_mid"]["n"] == 1  # the one teacher counts once
    assert rows["teacher-random"]["r2_mid"]["n"] == 1
    assert rows["cmm"]["r2_mid"]["n"] == 2  # one mixture per student seed
    assert (run / "report.md").is_file() and (run / "report.html").is_file()
