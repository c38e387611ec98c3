"""The distillation stage: teacher features + probe assignment -> every student, fitted.

Inputs (checked): the prepared dataset; the teacher folder's cached features of the train and
validation splits (``cmm teacher features``), refused if made from other data; the probe's
``probe.json`` (``cmm probe``) for the task -> layer group assignment, refused if made from
another teacher or other data (or ``distill.assignment`` set by hand).

Outputs, written atomically to ``out_dir``: ``experts.safetensors`` (every student's tensors,
``<variant>/<student>/<name>``, and its training-only projections, ``.../P/<name>``) and
``experts.json`` (schema version, settings, data and teacher identity, layer groups and
assignment, target scaling, variants with their routes, each student's specification, parameter
count and fit record). The test split is never read.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from cmm.config import DistillConfig
from cmm.distill import META_FILE, TENSORS_FILE
from cmm.distill.executor import DoneFn, Executor, get_executor
from cmm.distill.plan import SplitArrays, Variant, build_jobs, build_variants, resolve_assignment
from cmm.distill.students import StudentSpec
from cmm.distill.train import StudentResult, train_student
from cmm.errors import InputError, StaleArtefactError
from cmm.io import atomic_path, load_safetensors, read_artefact_meta, sha256_file, write_json
from cmm.probe import PROBE_FILE
from cmm.vocabulary import TASKS

SCHEMA_VERSION = 1
KIND = "cmm.experts"


def read_probe(path: str | Path, teacher_dir: Path, dataset) -> dict:
    path = Path(path)
    if not path.is_file():
        raise InputError("no probe result here; run `cmm probe` first, or set "
                         "distill.assignment", file=path)
    probe = json.loads(path.read_text())
    weights = teacher_dir / "weights.safetensors"
    want = sha256_file(weights) if weights.is_file() else None
    got = probe.get("teacher", {}).get("weights_sha256")
    if want is not None and got is not None and got != want:
        raise StaleArtefactError(f"{path}: probe of another fit of the teacher ({got[:12]}, "
                                 f"teacher now {want[:12]}); run `cmm probe` again")
    if probe.get("data_cache_key") not in (None, dataset.cache_key):
        raise StaleArtefactError(f"{path}: probe made on data {probe.get('data_cache_key')}, "
                                 f"not {dataset.cache_key}; run `cmm probe` again")
    return probe


def load_split(dataset, teacher_dir: Path, split: str) -> tuple[SplitArrays, dict]:
    from cmm.teacher.features import load_features

    feats = load_features(teacher_dir, split, dataset)
    regime = np.asarray(dataset.regimes(split), np.int8)
    if len(feats.regime) != len(regime) or not np.array_equal(feats.regime, regime):
        raise StaleArtefactError(f"{teacher_dir}: features of split {split} do not line up "
                                 "with the dataset's samples; run `cmm teacher features` again")
    arrays = SplitArrays(x=dataset.windows(split), y=dataset.targets(split),
                         teacher=feats.pred.astype(np.float32), hidden=feats.hidden,
                         regime=regime)
    return arrays, feats.meta


def run_distill(dataset, teacher_dir: str | Path, config: DistillConfig, out_dir: str | Path,
                probe_path: str | Path | None = None, executor: Executor | None = None,
                only: tuple[str, ...] | None = None, on_done: DoneFn | None = None) -> dict:
    """Fit every student the config asks for; write the experts artefact; return its meta."""
    from cmm.probe.fluorescent import group_names, layer_groups

    t0 = time.perf_counter()
    teacher_dir, out_dir = Path(teacher_dir), Path(out_dir)
    train, meta_features = load_split(dataset, teacher_dir, "train")
    validation, _ = load_split(dataset, teacher_dir, "validation")
    num_blocks, width = train.hidden.shape[1], train.hidden.shape[2]
    probe = None
    if config.assignment is None:
        probe = read_probe(probe_path or teacher_dir.parent / "probe" / PROBE_FILE,
                           teacher_dir, dataset)
        groups = {k: list(v) for k, v in probe["groups"].items()}
    else:
        n_groups = 3 if num_blocks >= 3 else num_blocks
        groups = dict(zip(group_names(n_groups), layer_groups(num_blocks, n_groups),
                          strict=True))
    assignment = resolve_assignment(config, groups, probe)
    _, window, n_features = train.x.shape
    steps = config.expert.input_steps or window
    variants = build_variants(config, groups, assignment, num_blocks, steps * n_features)
    if only:
        unknown = set(only) - {v.name for v in variants}
        if unknown:
            raise InputError("unknown variant", field="only",
                             expected=", ".join(v.name for v in variants), got=sorted(unknown))
        variants = [v for v in variants if v.name in only or v.name == "cmm"]
    y_mean = train.y.mean(axis=0).astype(np.float32)
    y_std = (train.y.std(axis=0) + 1e-8).astype(np.float32)
    jobs = build_jobs(variants, config, train, validation, y_mean, y_std)
    executor = executor or get_executor(config.executor, config.max_workers,
                                        config.threads_per_worker)
    results: list[StudentResult] = executor.map(train_student, jobs, on_done)
    meta = {
        "schema_version": SCHEMA_VERSION, "kind": KIND,
        "settings": config.model_dump(mode="json"),
        "data": {"name": dataset.name, "cache_key": dataset.cache_key, "window": int(window),
                 "n_features": int(n_features),
                 "feature_names": list(getattr(dataset, "feature_names", [])),
                 "horizon": int(dataset.config.features.horizon)},
        "teacher": {"dir": str(teacher_dir),
                    "weights_sha256": meta_features.get("teacher_weights_sha256"),
                    "num_blocks": int(num_blocks), "width": int(width)},
        "probe": {"path": str(probe_path) if probe is not None else None,
                  "paper_pattern": (probe or {}).get("paper_pattern")},
        "groups": groups, "assignment": assignment,
        "tasks": list(TASKS), "y_mean": y_mean.tolist(), "y_std": y_std.tolist(),
        "variants": {v.name: v.to_json() for v in variants},
        "parameters": {v.name: sum(r.record["parameters"] for r in results
                                   if r.spec.variant == v.name) for v in variants},
        "students": [{**r.spec.to_json(), "record": r.record} for r in results],
        "seconds": time.perf_counter() - t0,
    }
    save_experts(out_dir, results, meta)
    return meta


def save_experts(out_dir: Path, results: list[StudentResult], meta: dict) -> None:
    tensors = {}
    for r in results:
        for k, v in r.state.items():
            tensors[f"{r.spec.name}/{k}"] = np.ascontiguousarray(v)
        for k, v in r.projections.items():
            tensors[f"{r.spec.name}/P/{k}"] = np.ascontiguousarray(v)
    with atomic_path(out_dir / TENSORS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"schema_version": str(SCHEMA_VERSION),
                                               "kind": KIND})
    write_json(out_dir / META_FILE, meta)


def read_experts(folder: str | Path, dataset=None
                 ) -> tuple[dict, dict[str, StudentSpec], dict[str, dict[str, np.ndarray]],
                            list[Variant]]:
    """Meta, specs by name, decision-path state by name (no projections), variants."""
    meta, tensor_path = read_artefact_meta(folder, META_FILE, TENSORS_FILE, kind=KIND,
                                           schema_version=SCHEMA_VERSION, command="cmm distill")
    meta_path = Path(folder) / META_FILE
    if dataset is not None and meta["data"]["cache_key"] != dataset.cache_key:
        raise StaleArtefactError(f"{meta_path}: experts distilled on data "
                                 f"{meta['data']['cache_key']}, not {dataset.cache_key}; run "
                                 "`cmm distill` again")
    tensors = load_safetensors(tensor_path)
    specs = {d["name"]: StudentSpec.from_json(d) for d in meta["students"]}
    states: dict[str, dict[str, np.ndarray]] = {n: {} for n in specs}
    for key, value in tensors.items():
        name, _, param = key.rpartition("/")
        if name in states:
            states[name][param] = value
    variants = []
    for v in meta["variants"].values():
        var = Variant(v["name"], v["kind"], [specs[n] for n in v["students"]],
                      {t: [tuple(r) for r in rs] for t, rs in v["routes"].items()})
        variants.append(var)
    return meta, specs, states, variants
