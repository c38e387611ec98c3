"""The report's teacher side: learning curves (figure and sentence), the prediction table's
verdict against the yardsticks, the probe's stability beside its assignment."""

from __future__ import annotations

import json
from pathlib import Path

from cmm.report import figures as FIG
from cmm.report.teacher import (
    assignment_cell,
    learning_sentence,
    teacher_fit_groups,
    teacher_verdict,
)
from cmm.report.teacher import learning_blocks as _learning_blocks
from cmm.report.teacher import prediction_blocks as _prediction_blocks


def _check(step: int, val: float, train: float | None = 1.0) -> dict:
    return {"step": step, "epoch": step / 100, "train_loss": None if step == 0 else train,
            "val_loss": val, "val_mse_std": {"mid": val, "spread": val, "volume": val},
            "seconds": step * 0.1}


def _fit(vals: list[float], stopped_by: str, every: int = 100, **extra) -> dict:
    history = [_check(i * every, v, None if i == 0 else v * 0.9) for i, v in enumerate(vals)]
    best = min(history, key=lambda h: h["val_loss"])
    return {"history": history, "best": best, "stopped_by": stopped_by,
            "steps": history[-1]["step"], **extra}


# ------------------------------------------------------------------------- learning sentence


def test_sentence_plateaued_when_the_best_is_old():
    fit = _fit([2.0, 1.0, 0.8, 0.81, 0.83, 0.85, 0.86], "early_stopping")
    text = learning_sentence("Teacher LLM, seed 0", fit)
    assert text.startswith("Teacher LLM, seed 0: 600 optimizer steps over 6 epochs, 7 "
                           "validation checks, the best (the checkpoint kept) at step 200 "
                           "with validation loss 0.8 (last check 0.86)")
    assert "stopped by early stopping" in text
    assert text.endswith("its validation loss had plateaued.")
    assert "still improving" not in text and "safety cap" not in text
    assert ". " not in text  # one sentence


def test_sentence_plateaued_when_recent_best_but_last_check_far_above():
    # the best is among the last three checks, but the last one is 5 % above it
    fit = _fit([2.0, 1.5, 1.0, 1.05], "epochs")
    text = learning_sentence("Teacher LLM, seed 1", fit)
    assert "stopped by the end of its planned epochs" in text
    assert text.endswith("had plateaued.")


def test_sentence_still_improving_at_the_end():
    fit = _fit([2.0, 1.5, 1.2, 1.0, 0.9], "max_steps")
    text = learning_sentence("Teacher LLM, seed 0", fit)
    assert "the best (the checkpoint kept) at step 400 with validation loss 0.9" in text
    assert "stopped by its step limit (max_steps)" in text
    assert text.endswith("its validation loss was still improving when it stopped.")


def test_sentence_within_one_percent_counts_as_still_improving():
    fit = _fit([2.0, 1.2, 1.0, 1.005], "epochs")  # best 2nd-last, last 0.5 % above it
    assert learning_sentence("T", fit).endswith("still improving when it stopped.")


def test_sentence_says_the_time_budget_bound():
    fit = _fit([2.0, 1.4, 1.1, 1.0], "time_budget", planned_steps=5000)
    text = learning_sentence("Teacher LLM, seed 0", fit)
    assert ("stopped by the time budget: the safety cap (teacher.max_train_seconds) bound "
            "and cut the fit short at 300 of 5,000 planned steps") in text
    assert text.endswith("was still improving when it stopped.")


def test_sentence_without_checks():
    assert learning_sentence("T", {"history": [], "stopped_by": "epochs"}) == \
        "T: no validation checks recorded."


# ---------------------------------------------------------------------------- figure, blocks


def _teacher_folder(folder: Path, fit: dict) -> Path:
    folder.mkdir(parents=True)
    (folder / "teacher.json").write_text(json.dumps({"schema_version": 1, "fit": fit}))
    return folder


def _is_png(path: Path) -> bool:
    return path.is_file() and path.stat().st_size > 1000 and \
        path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_learning_curve_figure_is_written(tmp_path):
    fit = _fit([2.0, 1.0, 0.8, 0.82], "early_stopping")
    rnd = _fit([30.0, 9.0, 3.0, 2.5], "time_budget")  # over 10x range: log axis
    out = FIG.learning_curves({"teacher LLM": fit, "random-init": rnd}, tmp_path / "lc.png",
                              "curves", dpi=50)
    assert out == tmp_path / "lc.png" and _is_png(out)
    empty = FIG.learning_curves({"t": {"history": []}}, tmp_path / "empty.png", "none", dpi=50)
    assert _is_png(empty)


def test_learning_blocks_find_seed_and_shared_teacher_folders(tmp_path):
    run = tmp_path / "run"
    _teacher_folder(run / "btc" / "seed0" / "teacher", _fit([2.0, 1.0, 0.9], "epochs"))
    _teacher_folder(run / "btc" / "seed0" / "teacher-random",
                    _fit([3.0, 2.0, 1.9, 1.95, 2.0, 2.1], "early_stopping"))
    _teacher_folder(run / "btc" / "teacher-seed7" / "teacher",
                    _fit([2.0, 1.0, 0.95], "time_budget"))
    (run / "btc" / "seed1" / "teacher").mkdir(parents=True)  # not fitted: no teacher.json
    per_seed = {"seeds": [0, 1], "config": {"teacher": {}}}  # one teacher per run seed
    shared = {"seeds": [0, 1], "config": {"teacher": {"seeds": [7]}}}  # teacher.seeds: [7]
    assert [(who, list(fits)) for who, fits in teacher_fit_groups(run, "btc", per_seed)] == [
        ("seed 0", ["teacher LLM", "teacher LLM (random-init backbone)"])]
    assert [(who, list(fits)) for who, fits in teacher_fit_groups(run, "btc", shared)] == [
        ("teacher seed 7", ["teacher LLM"])]

    figs = tmp_path / "figures"
    figs.mkdir()
    d = {"slug": "btc", "dataset": "BTC"}
    blocks = (_learning_blocks(run, per_seed, d, figs, {"dpi": 50})
              + _learning_blocks(run, shared, d, figs, {"dpi": 50})[1:])
    assert [b.kind for b in blocks] == ["h3", "img", "p", "img", "p"]
    assert blocks[0].text == "Teacher learning curves"
    assert blocks[1].path == figs / "btc-learning-seed0.png" and _is_png(blocks[1].path)
    assert blocks[3].path == figs / "btc-learning-teacherseed7.png" and _is_png(blocks[3].path)
    seed0 = blocks[2].text
    assert seed0.startswith("Teacher LLM, seed 0: 200 optimizer steps")
    assert "Teacher LLM (random-init backbone), seed 0: 500 optimizer steps" in seed0
    assert "still improving when it stopped" in seed0 and "had plateaued" in seed0
    assert "the safety cap (teacher.max_train_seconds) bound" in blocks[4].text
    assert _learning_blocks(run, per_seed, {"slug": "eth", "dataset": "ETH"}, figs, {}) == []


# -------------------------------------------------------------------- prediction verdict


def _row(model: str, label: str, **r2: float | None) -> dict:
    return {"model": model, "label": label,
            **{f"r2_{k}": {"mean": v, "std": None, "n": 0 if v is None else 1}
               for k, v in r2.items()}}


def _rows(teacher: dict, ridge: dict, lgbm: dict) -> list[dict]:
    return [_row("teacher", "teacher LLM", **teacher),
            _row("teacher-random", "teacher LLM (random-init backbone)",
                 mid=-0.1, spread=0.0, volume=0.0),
            _row("train-mean", "train mean", mid=-0.01, spread=-0.02, volume=-0.03),
            _row("zero/last", "last value (zero/last)", mid=-1.0, spread=0.1, volume=0.05),
            _row("ridge", "ridge (hand features)", **ridge),
            _row("lightgbm", "LightGBM (hand features)", **lgbm)]


def test_verdict_when_the_teacher_wins():
    rows = _rows(dict(mid=0.05, spread=0.4, volume=0.3), dict(mid=0.01, spread=0.32, volume=0.2),
                 dict(mid=0.02, spread=0.3, volume=0.25))
    assert teacher_verdict(rows) == (
        "Test R² on mid the teacher LLM is best (0.05), above ridge (0.01) and LightGBM "
        "(0.02); on spread the teacher LLM is best (0.4), above ridge (0.32) and LightGBM "
        "(0.3); on volume the teacher LLM is best (0.3), above ridge (0.2) and LightGBM "
        "(0.25).")


def test_verdict_when_ridge_wins_and_mixed():
    rows = _rows(dict(mid=0.015, spread=0.28, volume=None),
                 dict(mid=0.03, spread=0.32, volume=0.2),
                 dict(mid=0.01, spread=0.3, volume=0.25))
    text = teacher_verdict(rows)
    assert text == (
        "Test R² on mid ridge (hand features) is best (0.03) and the teacher LLM (0.015) is "
        "below ridge (0.03) but above LightGBM (0.01); on spread ridge (hand features) is "
        "best (0.32) and the teacher LLM (0.28) is below ridge (0.32) and LightGBM (0.3); on "
        "volume no R² for the teacher LLM (the target is constant on the test split, or the "
        "row is missing).")
    assert text.endswith(".") and ". " not in text  # one sentence


def test_verdict_tie_and_no_teacher():
    rows = _rows(dict(mid=0.2, spread=0.2, volume=0.2), dict(mid=0.2, spread=0.1, volume=0.1),
                 dict(mid=0.1, spread=0.1, volume=0.1))
    assert teacher_verdict(rows).startswith(
        "Test R² on mid the teacher LLM is best (0.2, tied with ridge (hand features)), level "
        "with ridge (0.2) but above LightGBM (0.1);")
    assert teacher_verdict(rows[1:]) == ""


def test_prediction_blocks_keep_the_train_mean_sentence_and_add_the_verdict():
    rows = _rows(dict(mid=0.05, spread=-0.1, volume=0.3), dict(mid=0.01, spread=0.32, volume=0.2),
                 dict(mid=0.02, spread=0.3, volume=0.25))
    blocks = _prediction_blocks(rows)
    assert [b.kind for b in blocks] == ["h3", "table", "p", "p"]
    assert "below the train mean's R² (worse than a constant)" in blocks[2].text
    assert blocks[3].text == teacher_verdict(rows)
    assert "on spread ridge (hand features) is best (0.32) and the teacher LLM (-0.1) is below " \
           "ridge (0.32) and LightGBM (0.3)" in blocks[3].text


# --------------------------------------------------------------------------- probe stability


def test_assignment_cell_shows_stability_only_when_recorded():
    result = {"assignment": {"mid": "shallow", "spread": "middle", "volume": "deep"}}
    assert assignment_cell(result) == "mid → shallow, spread → middle, volume → deep"
    result |= {"stability": 0.84, "task_stability": {"mid": 0.9, "spread": 0.875, "volume": 1.0}}
    assert assignment_cell(result) == (
        "mid → shallow, spread → middle, volume → deep (bootstrap stability: whole assignment "
        "84%, mid 90%, spread 88%, volume 100%)")


# ------------------------------------------------------------------- in the dataset section


def _section(tmp_path: Path, note: str | None) -> list:
    from cmm.report.sections import _dataset_blocks

    run = tmp_path / "run"
    _teacher_folder(run / "btc" / "seed0" / "teacher", _fit([2.0, 1.0, 0.9], "epochs"))
    figs = tmp_path / "figures"
    figs.mkdir(exist_ok=True)
    manifest = {"seeds": [0], "policies": [], "tables": {"main": []}, "config": {}}
    d = {"slug": "btc", "dataset": "BTC", "dt_ms": 100, "instrument": {},
         "episodes": {"start_ns": [1, 2], "volatile": [], "volatility": [0.0, 0.0]}}
    t = {"main": [], "latency": [], "teacher_seeds_note": note,
         "prediction": _rows(dict(mid=0.05, spread=0.4, volume=0.3),
                             dict(mid=0.01, spread=0.32, volume=0.2),
                             dict(mid=0.02, spread=0.3, volume=0.25))}
    return _dataset_blocks(run, manifest, d, t, figs, {"dpi": 40})


def test_dataset_section_has_note_verdict_and_learning_curves(tmp_path):
    note = "One teacher per market (seed 0), distilled by student seeds 0, 1 and 2."
    blocks = _section(tmp_path, note)
    texts = [b.text for b in blocks]
    i = texts.index("Prediction quality (test split)")
    assert texts[i + 3].startswith("Test R² on mid the teacher LLM is best")
    assert texts[i + 4] == note
    assert texts[i + 5] == "Teacher learning curves"
    assert blocks[i + 6].kind == "img" and _is_png(blocks[i + 6].path)
    assert texts[i + 7].startswith("Teacher LLM, seed 0: 200 optimizer steps")
    plain = _section(tmp_path / "none", None)
    assert not any("One teacher per market" in b.text for b in plain)
    assert [b.text for b in plain].count("Teacher learning curves") == 1


def test_a_flat_curve_has_plateaued_and_the_variant_is_named():
    from cmm.report.teacher import learning_sentence, what_trains

    flat = [{"step": 13 * i, "val_loss": 0.5710 - 1e-5 * (i % 2), "train_loss": 0.7,
             "epoch": i / 4} for i in range(8)]
    fit = {"history": flat, "best": flat[7], "stopped_by": "early_stopping", "steps": 91,
           "precision": "bf16", "device": "cpu",
           "settings": {"finetune": "none", "depth": 6, "level_skip": True},
           "backbone": {"name": "smollm2-135m", "init": "pretrained", "num_blocks": 6}}
    text = learning_sentence("Teacher LLM", fit)
    assert "had plateaued" in text
    assert what_trains(fit) == ("smollm2-135m (pretrained), its first 6 blocks, frozen backbone "
                                "(patch projection and heads train), with the level skip (a "
                                "ridge on the window's level, held fixed); bf16 on cpu")
    assert text.startswith("Teacher LLM (smollm2-135m (pretrained), its first 6 blocks")
