"""A fitted teacher on disk: a folder that describes itself.

``<run>/teacher/`` (or ``teacher-random/`` for the random-init control) holds

- ``teacher.json``: schema version, every setting, the backbone's description, the dataset's
  name and cache key (a stale teacher is detected, never used), target scaling, fit record;
- ``weights.safetensors``: the fitted part only (adapter, heads, tuned norms or LoRA); the
  frozen backbone is reloaded from its own cache;
- ``metrics.json``: teacher and baselines on validation and test;
- ``latency.json``: batch-1 decision time, p50/p99, one thread and all threads;
- ``features/``: pooled block outputs and predictions per split (``cmm teacher features``).

Every file is written atomically.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import save_file

from cmm.config import TeacherConfig
from cmm.errors import InputError, StaleArtefactError  # noqa: F401 (re-exported)
from cmm.io import atomic_path, load_safetensors, write_json
from cmm.teacher import META_FILE, WEIGHTS_FILE
from cmm.teacher.backbone import load_backbone
from cmm.teacher.device import resolve_device
from cmm.teacher.model import TeacherModel, build_teacher

SCHEMA_VERSION = 1


def save_teacher(folder: str | Path, model: TeacherModel, meta: dict) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.contiguous().cpu() for k, v in model.trainable_state().items()}
    with atomic_path(folder / WEIGHTS_FILE) as tmp:
        save_file(state, str(tmp), metadata={"schema_version": str(SCHEMA_VERSION)})
    full = {"schema_version": SCHEMA_VERSION, "kind": "cmm.teacher",
            "settings": model.config.model_dump(mode="json"), "backbone": model.backbone_info,
            "target_mean": model.target_mean.tolist(), "target_std": model.target_std.tolist(),
            **meta}
    write_json(folder / META_FILE, full)
    return folder


def read_meta(folder: str | Path) -> dict:
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise InputError("no fitted teacher here; run `cmm teacher fit` first", file=path)
    meta = json.loads(path.read_text())
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise StaleArtefactError(
            f"{path}: teacher schema version {meta.get('schema_version')}, expected "
            f"{SCHEMA_VERSION}; fit it again with `cmm teacher fit`")
    return meta


def check_data(meta: dict, dataset, where: Path) -> None:
    """Raise if the teacher was fitted on other data than ``dataset``."""
    want = getattr(dataset, "cache_key", None)
    got = meta.get("data", {}).get("cache_key")
    if want is not None and got != want:
        raise StaleArtefactError(
            f"{where}: teacher fitted on data {meta.get('data', {}).get('name')!r} "
            f"(cache key {got}), but the dataset now is {dataset.name!r} (cache key {want}); "
            "fit the teacher again with `cmm teacher fit`")


def load_teacher(folder: str | Path, dataset=None, device: str = "auto") -> TeacherModel:
    """Rebuild a fitted teacher: its backbone from the backbone cache, then its fitted part, on
    ``device`` (``auto``: the GPU when there is one)."""
    folder = Path(folder)
    meta = read_meta(folder)
    if dataset is not None:
        check_data(meta, dataset, folder)
    config = TeacherConfig.model_validate(meta["settings"])
    backbone = load_backbone(config.backbone)
    data = meta["data"]
    model = build_teacher(backbone, data["window"], data["n_features"], config,
                          meta["target_mean"], meta["target_std"])
    state = load_safetensors(folder / WEIGHTS_FILE, "pt")
    missing = [k for k in model.trainable_state() if k not in state]
    if missing:
        raise StaleArtefactError(f"{folder / WEIGHTS_FILE}: missing fitted tensors {missing[:3]}; "
                                 "fit the teacher again")
    model.load_state_dict(state, strict=False)
    return model.to(resolve_device(device)).eval()
