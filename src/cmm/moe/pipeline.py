"""The mixture stage: fitted experts -> gates fitted on validation -> saved mixtures, the
Quoter's latency, and the table of every variant's per-target error.

Inputs (checked): the experts artefact of ``cmm distill`` (refused if made from other data) and
the prepared dataset. For every variant (CMM, each ablation, each baseline) the gates are fitted
on the validation split with the experts frozen (Hajek-MoE and the controls for variants with
more than one expert per task; a single student needs no gate). Each variant is saved as its
own mixture folder ``<out>/<variant>/`` (``mixture.json`` + ``mixture.safetensors``); the CMM
one, ``<out>/cmm/``, is what the Quoter and the ``cmm`` policy load. Its one-thread, batch-1
decision latency is measured in a fresh process and stored in its ``mixture.json``.

Report: ``evaluation.json`` and ``evaluation.md``: per variant and gate, MSE (target units) and
R^2 of each target on validation (where gates are fitted, so their rows are in-sample for the
gate parameters) and on test (never used for any fit), beside the train mean and the teacher
(its cached features' predictions, when ``run_moe`` is given the teacher's folder).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from cmm.config import MoEConfig
from cmm.distill.pipeline import read_experts
from cmm.distill.train import load_student
from cmm.io import atomic_path, write_json
from cmm.metrics import latency_field, regression_metrics
from cmm.moe import EVALUATION_FILE, EVALUATION_TABLE_FILE
from cmm.moe.artefact import META_FILE, save_mixture
from cmm.moe.latency import measure_all_in_subprocess
from cmm.moe.mixture import MixtureModel, fit_gates
from cmm.vocabulary import EVALUATED_SPLITS, REGIMES, TASKS


def _metrics(pred: np.ndarray, y: np.ndarray) -> dict[str, dict[str, float | None]]:
    # per task MSE and R^2 (cmm.metrics), no direction measures; a task the variant does not
    # predict (NaN in pred) gets NaN
    return regression_metrics(pred, y, direction=False)


def build_mixture(meta: dict, specs, states, variant) -> MixtureModel:
    window, n_features = meta["data"]["window"], meta["data"]["n_features"]
    students = [load_student(s, states[s.name], window, n_features) for s in variant.students]
    return MixtureModel(variant.students, students, variant.routes, meta["y_mean"],
                        meta["y_std"])


def teacher_predictions(teacher_dir: str | Path, dataset) -> dict[str, np.ndarray]:
    """The teacher's predictions on each evaluated split, from the features cached in
    ``teacher_dir`` (the teacher's folder, with ``features/``). A missing or stale features
    file raises (InputError / StaleArtefactError naming it)."""
    from cmm.teacher.features import load_features

    return {split: load_features(teacher_dir, split, dataset).pred
            for split in EVALUATED_SPLITS}


def run_moe(dataset, experts_dir: str | Path, config: MoEConfig, out_dir: str | Path | None = None,
            measure_latency: bool = True, on_progress=None, *,
            teacher_dir: str | Path | None = None) -> dict:
    """Fit the gates of every variant of the experts in ``experts_dir``, save the mixtures
    under ``out_dir`` (default: ``experts_dir``) and write ``evaluation.json`` / ``.md``.
    ``teacher_dir``: the folder of the teacher whose features (``<teacher_dir>/features/``)
    hold its predictions, for the table's teacher rows (read with no fallback: a missing file
    is an error naming it); None: no teacher rows."""
    t0 = time.perf_counter()
    experts_dir = Path(experts_dir)
    out_dir = Path(out_dir) if out_dir is not None else experts_dir
    meta, specs, states, variants = read_experts(experts_dir, dataset)
    teacher = {} if teacher_dir is None else teacher_predictions(teacher_dir, dataset)
    torch.manual_seed(config.seed)
    data = {s: (dataset.windows(s), dataset.targets(s), np.asarray(dataset.regimes(s)))
            for s in EVALUATED_SPLITS}
    rows = _reference_rows(meta, teacher, data)
    mixtures: dict[str, dict] = {}
    for i, variant in enumerate(variants):
        if on_progress:
            on_progress("moe", i, len(variants))
        variant_rows, mixture = _fit_variant(dataset, meta, specs, states, variant, config,
                                             data, out_dir)
        rows += variant_rows
        mixtures[variant.name] = mixture
    latency = None
    if measure_latency and mixtures:
        latency = _measure_latencies(mixtures, data["validation"][0], config)
    report = {"schema_version": 1, "kind": "cmm.moe.evaluation", "dataset": dataset.name,
              "data_cache_key": dataset.cache_key, "experts_dir": str(experts_dir),
              "teacher_dir": None if teacher_dir is None else str(teacher_dir),
              "settings": config.model_dump(mode="json"), "rows": rows, "mixtures": mixtures,
              "parameters": meta["parameters"], "latency": latency,
              "regime_counts": {s: np.bincount(data[s][2].astype(int),
                                               minlength=len(REGIMES)).tolist()
                                for s in EVALUATED_SPLITS},
              "stop_sources": {s["name"]: s["record"]["stop_source"] for s in meta["students"]},
              "seconds": time.perf_counter() - t0}
    write_json(out_dir / EVALUATION_FILE, report)
    with atomic_path(out_dir / EVALUATION_TABLE_FILE) as tmp:
        tmp.write_text(evaluation_table(report))
    return report


def _reference_rows(meta: dict, teacher: dict[str, np.ndarray], data: dict) -> list[dict]:
    """The evaluation's reference rows: the train mean on every evaluated split, and the
    teacher's predictions where given."""
    rows: list[dict] = []
    train_mean = np.asarray(meta["y_mean"])
    for split in EVALUATED_SPLITS:
        y = data[split][1]
        rows.append({"model": "train-mean", "variant": "reference", "gate": "", "split": split,
                     "parameters": 0, "metrics": _metrics(np.tile(train_mean, (len(y), 1)), y)})
    for split, pred in teacher.items():
        rows.append({"model": "teacher", "variant": "reference", "gate": "", "split": split,
                     "parameters": None, "metrics": _metrics(pred, data[split][1])})
    return rows


def _gate_parameters(model: MixtureModel, gate: str) -> int:
    """The parameters of the mixture's gates of kind ``gate`` (one per task)."""
    return sum(p.numel() for k, g in model.gates.items() if k.endswith("/" + gate)
               for p in g.parameters())


def _fit_variant(dataset, meta: dict, specs, states, variant, config: MoEConfig, data: dict,
                 out_dir: Path) -> tuple[list[dict], dict]:
    """One variant: its gates fitted on validation with the experts frozen (a variant with one
    expert per task needs none: the mean), its evaluation rows, and its mixture saved under
    ``out_dir/<variant>``; returns the rows and its entry of the report's ``mixtures``."""
    model = build_mixture(meta, specs, states, variant)
    multi = any(len(r) > 1 for r in model.routes.values())
    gates = tuple(config.gates) if multi else ("mean",)
    model.add_gates(gates, config)
    x_val, y_val, r_val = data["validation"]
    fit_record = fit_gates(model, x_val, y_val, r_val, config) if multi else {}
    params = sum(p.numel() for p in model.students.parameters())
    rows = _variant_rows(model, variant, gates, multi, params, data)
    folder = out_dir / variant.name
    mix_meta = {"variant": variant.name, "variant_kind": variant.kind,
                "data": {**meta["data"], "instrument": _instrument(dataset)},
                "teacher": meta["teacher"], "groups": meta["groups"],
                "assignment": meta["assignment"],
                "settings": {"distill": meta["settings"],
                             "moe": config.model_dump(mode="json")},
                "parameters": {"experts": params,
                               "gates": {g: _gate_parameters(model, g) for g in gates}},
                "gate_fit": fit_record}
    save_mixture(folder, model, mix_meta)
    return rows, {"folder": str(folder), "gates": list(gates), "parameters": params}


def _variant_rows(model: MixtureModel, variant, gates: tuple[str, ...], multi: bool,
                  params: int, data: dict) -> list[dict]:
    """Per gate and evaluated split, the variant's MSE and R² per target (NaN for a target it
    does not predict) and its mean expert weights."""
    rows = []
    for gate in gates:
        for split in EVALUATED_SPLITS:
            x, y, r = data[split]
            pred, weights = model.predict(x, r, gate)
            full = np.full((len(x), len(TASKS)), np.nan)
            full[:, [TASKS.index(t) for t in model.tasks]] = pred
            rows.append({"model": variant.name if not multi else f"{variant.name} ({gate})",
                         "variant": variant.name, "kind": variant.kind,
                         "gate": gate if multi else "", "split": split,
                         "parameters": params, "gate_parameters": _gate_parameters(model, gate),
                         "metrics": _metrics(full, y),
                         "mean_weights": {t: w.mean(axis=0).round(4).tolist()
                                          for t, w in weights.items()}})
    return rows


def _measure_latencies(mixtures: dict[str, dict], x_val: np.ndarray,
                       config: MoEConfig) -> dict | None:
    """Every mixture's decision time with each of its gates, measured once, here, and kept in
    its mixture.json ("latency_by_gate"; "latency": its main gate's): what every backtest of
    it charges, so that a rerun of the backtests reproduces their rows. Returns CMM's (None
    without a ``cmm`` variant)."""
    import json

    jobs = [(m["folder"], g) for m in mixtures.values() for g in m["gates"]]
    measured = measure_all_in_subprocess(jobs, x_val, config.latency_repeats,
                                         config.latency_warmup)
    by_folder: dict[str, dict] = {}
    for (folder, gate), result in zip(jobs, measured, strict=True):
        by_folder.setdefault(folder, {})[gate] = result
    latency = None
    for name, m in mixtures.items():
        by_gate = by_folder[m["folder"]]
        main = "hajek" if "hajek" in by_gate else m["gates"][0]
        path = Path(m["folder"]) / META_FILE
        mix = json.loads(path.read_text())
        mix["latency"], mix["latency_by_gate"] = by_gate[main], by_gate
        write_json(path, mix)
        if name == "cmm":
            latency = by_gate[main]
    return latency


def _instrument(dataset) -> dict:
    inst = getattr(dataset, "instrument", None)
    if inst is None and hasattr(dataset, "spec"):
        inst = dataset.spec.instrument
    if inst is None:  # in-memory datasets (tests): a unit tick and lot
        return {"tick_size": 1.0, "lot_size": 1.0}
    return inst.model_dump(mode="json")


def evaluation_table(report: dict) -> str:
    """Markdown: one row per model, MSE and R^2 per target on validation and test."""
    by_model: dict[str, dict] = {}
    order = {"reference": 0, "cmm": 1, "baseline": 2, "ablation": 3}
    rows = sorted(report["rows"], key=lambda r: order.get(r.get("kind", r["variant"]), 4))
    for r in rows:
        by_model.setdefault(r["model"], {"parameters": r.get("parameters"),
                                         "gate_parameters": r.get("gate_parameters")})
        by_model[r["model"]][r["split"]] = r["metrics"]
    head = ("| model | params | " + " | ".join(
        f"{s[:3]} MSE {t} | {s[:3]} R2 {t}" for s in EVALUATED_SPLITS for t in TASKS) + " |\n")
    head += "|" + "---|" * (2 + 2 * len(EVALUATED_SPLITS) * len(TASKS)) + "\n"
    lines = []
    for name, m in by_model.items():
        p = m["parameters"]
        cells = [name, "" if p is None else (f"{p}+{m['gate_parameters']}"
                                             if m.get("gate_parameters") else str(p))]
        for s in EVALUATED_SPLITS:
            for t in TASKS:
                met = m.get(s, {}).get(t)
                if met is None:
                    cells += ["", ""]
                    continue
                cells += [f"{met['mse']:.4g}", "" if met["r2"] is None else f"{met['r2']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    counts = report.get("regime_counts", {})
    note = ("\nRegime counts (low, mid, high): " +
            ", ".join(f"{s} {c}" for s, c in counts.items()) +
            ". Gates are fitted on validation: their validation rows are in-sample for the "
            "gate parameters; test is never used for fitting.\n")
    lat = report.get("latency")
    if lat:
        note += (f"\nCMM decision latency (Quoter.decide, batch 1, one thread): p50 "
                 f"{latency_field(lat, 'p50', 'us'):.1f} us, p99 "
                 f"{latency_field(lat, 'p99', 'us'):.1f} us over {lat['n']} decisions.\n")
    return head + "\n".join(lines) + "\n" + note
