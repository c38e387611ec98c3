"""The teacher's stages as the CLI runs them: fit (+ evaluate + latency), and features.

Inputs: a prepared dataset. Outputs: a teacher folder (see ``cmm.teacher.store``). Each stage
checks its inputs and can rerun alone.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from cmm.config import TeacherConfig
from cmm.io import RESUME_DIR, atomic_path, write_json
from cmm.teacher.data import TeacherDataset
from cmm.teacher.evaluate import baseline_predictions, evaluate_teacher, metrics_table
from cmm.teacher.fit import ProgressFn, _noop, fit_teacher, peak_memory_mib, predict_windows
from cmm.teacher.latency import measure_latency
from cmm.teacher import LATENCY_FILE, METRICS_FILE
from cmm.teacher.store import save_teacher
from cmm.vocabulary import EVALUATED_SPLITS


def teacher_dir(run_dir: str | Path, config: TeacherConfig) -> Path:
    """``<run>/teacher`` for a pretrained backbone, ``<run>/teacher-random`` for the control."""
    suffix = "-random" if config.backbone.init == "random" else ""
    return Path(run_dir) / f"teacher{suffix}"


def run_fit(dataset: TeacherDataset, config: TeacherConfig, out_dir: str | Path,
            on_progress: ProgressFn = _noop, baselines=None) -> dict:
    """Fit, save, evaluate (validation and test, beside the baselines) and time the teacher.
    Returns the metrics report (also written to ``metrics.json``)."""
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    # resume/ survives a killed stage (the stage runner keeps it); gone once the fit is done
    resume = out_dir / RESUME_DIR
    result = fit_teacher(dataset, config, on_progress, checkpoint_dir=resume)
    shutil.rmtree(resume, ignore_errors=True)
    model = result.model
    meta = {
        "data": {"name": dataset.name, "cache_key": dataset.cache_key,
                 "window": int(model.adapter.window), "n_features": int(model.adapter.n_features),
                 "feature_names": list(dataset.feature_names),
                 "horizon": int(dataset.config.features.horizon)},
        "fit": {"seconds": result.seconds, "stopped_by": result.stopped_by,
                "best": result.best, "history": result.history, "threads": result.threads,
                "steps": result.steps, "planned_steps": result.planned_steps,
                "device": result.device, "precision": result.precision,
                "resumed_from_step": result.resumed_from_step,
                "head_init": result.head_init,
                "train_windows": result.train_windows,
                "trainable_parameters": result.trainable_parameters,
                "peak_memory_mib": result.peak_memory_mib},
    }
    save_teacher(out_dir, model, meta)
    report = evaluate_teacher(model, dataset, config.ridge_alphas, config.infer_batch_size,
                              on_progress, baselines)
    on_progress("latency", 0, 1)
    latency = measure_latency(model, dataset.windows("validation"), config.latency_repeats,
                              config.latency_warmup)
    on_progress("latency", 1, 1)
    write_json(out_dir / LATENCY_FILE, latency)
    report.update({
        "schema_version": 1, "dataset": dataset.name, "data_cache_key": dataset.cache_key,
        "backbone": model.backbone_info, "fit_seconds": result.seconds,
        "stage_seconds": time.perf_counter() - t0, "peak_memory_mib": peak_memory_mib(),
        "stopped_by": result.stopped_by, "latency_ms": {k: latency[k] for k in
                                                        ("one_thread", "all_threads")},
    })
    write_json(out_dir / METRICS_FILE, report)
    return report


def teacher_predict(teacher_dir: Path, ds, windows, batch_size: int, device: str,
                    on_progress=None):
    """(N, 3) predictions in the data's units (float64) of the teacher fitted on ``ds`` and
    saved in ``teacher_dir``, on ``windows`` (a split of ``ds`` or of its crashed copy)."""
    import numpy as np
    import torch

    from cmm.teacher.store import load_teacher

    model = load_teacher(teacher_dir, ds, device=device)
    with torch.inference_mode():
        pred_std, _ = predict_windows(model, windows, batch_size,
                                      on_progress=on_progress or (lambda *a: None),
                                      stage="teacher predictions")
        return model.to_units(torch.from_numpy(pred_std)).numpy().astype(np.float64)


def write_comparison(out: str | Path, reports: dict[str, dict]) -> str:
    """``comparison.md``: teacher(s) vs baselines on validation and test."""
    text = ""
    for split in EVALUATED_SPLITS:
        text += f"### {split}\n\n" + metrics_table(reports, split) + "\n"
    with atomic_path(out) as tmp:
        tmp.write_text(text)
    return text


def shared_baselines(dataset: TeacherDataset, config: TeacherConfig):
    """Baseline predictions once, for several teacher fits on the same data."""
    return baseline_predictions(dataset, config.ridge_alphas)
