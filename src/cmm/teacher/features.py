"""The teacher's per-layer features ``h_l(x)``, cached for the students.

For every window of every split: the pooled output of every block (N, L, d) float16 and the
teacher's predictions (N, 3) float32 in the data's units, with the sample ids and regimes to
align them. One safetensors file per split under ``<teacher>/features/``; its metadata names the
teacher weights' hash and the data's cache key, so features of another teacher or other data
are refused (``StaleArtefactError``), never used.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from cmm.errors import InputError
from cmm.io import atomic_path, reading, sha256_file, write_json
from cmm.teacher.data import TeacherDataset
from cmm.teacher.fit import ProgressFn, _noop, predict_windows
from cmm.teacher.model import TeacherModel
from cmm.teacher import FEATURES_DIR, FEATURES_INDEX_FILE, WEIGHTS_FILE
from cmm.teacher.store import StaleArtefactError
from cmm.vocabulary import SPLITS

SCHEMA_VERSION = 1


@dataclass
class TeacherFeatures:
    """One split's cached features. hidden: (N, L, d) float16; pred: (N, 3) float32 in units;
    pred_std: (N, 3) standardised; sample: (N,) int64; regime: (N,) int8."""

    hidden: np.ndarray
    pred: np.ndarray
    pred_std: np.ndarray
    sample: np.ndarray
    regime: np.ndarray
    meta: dict


def _sample_ids(dataset: TeacherDataset, split: str, n: int) -> np.ndarray:
    samples = getattr(dataset, "samples", None)
    if samples is not None and "sample" in samples.columns:
        import polars as pl

        ids = samples.filter(pl.col("split") == split)["sample"].to_numpy().astype(np.int64)
        if len(ids) == n:
            return ids
    return np.arange(n, dtype=np.int64)


def extract_features(model: TeacherModel, dataset: TeacherDataset, teacher_dir: str | Path,
                     batch_size: int = 256, on_progress: ProgressFn = _noop) -> dict:
    """Write ``features/<split>.safetensors`` for every split; return the index written."""
    teacher_dir = Path(teacher_dir)
    weights_hash = sha256_file(teacher_dir / WEIGHTS_FILE)
    out_dir = teacher_dir / FEATURES_DIR
    index = {"schema_version": SCHEMA_VERSION, "teacher_weights_sha256": weights_hash,
             "data_cache_key": dataset.cache_key, "dataset": dataset.name,
             "num_blocks": model.num_blocks, "width": model.width,
             "pooling": model.config.pooling, "dtype": "float16", "splits": {}}
    for split in SPLITS:
        windows = dataset.windows(split)
        pred_std, hidden = predict_windows(model, windows, batch_size, hidden=True,
                                           on_progress=on_progress, stage=f"features {split}")
        pred = model.to_units_np(pred_std)
        tensors = {
            "hidden": torch.from_numpy(hidden),
            "pred": torch.from_numpy(pred),
            "pred_std": torch.from_numpy(pred_std),
            "sample": torch.from_numpy(_sample_ids(dataset, split, len(windows))),
            "regime": torch.from_numpy(np.asarray(dataset.regimes(split), np.int8)),
        }
        meta = {k: str(v) for k, v in index.items() if k != "splits"}
        meta["split"] = split
        path = out_dir / f"{split}.safetensors"
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)
        index["splits"][split] = {"file": path.name, "windows": len(windows),
                                  "bytes": path.stat().st_size}
    write_json(out_dir / FEATURES_INDEX_FILE, index)
    return index


def load_features(teacher_dir: str | Path, split: str, dataset: TeacherDataset | None = None
                  ) -> TeacherFeatures:
    """Read one split's features; refuse them if the teacher or the data changed since."""
    teacher_dir = Path(teacher_dir)
    path = teacher_dir / FEATURES_DIR / f"{split}.safetensors"
    if split not in SPLITS:
        raise InputError("unknown split", field="split", expected=", ".join(SPLITS), got=split)
    if not path.is_file():
        raise InputError("no teacher features here; run `cmm teacher features` first", file=path)
    with reading(path), safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata() or {})
        arrays = {k: f.get_tensor(k).numpy() for k in f.keys()}  # noqa: SIM118
    if meta.get("schema_version") != str(SCHEMA_VERSION):
        raise StaleArtefactError(f"{path}: features schema {meta.get('schema_version')}, expected "
                                 f"{SCHEMA_VERSION}; run `cmm teacher features` again")
    weights = teacher_dir / WEIGHTS_FILE
    if weights.is_file() and meta.get("teacher_weights_sha256") != sha256_file(weights):
        raise StaleArtefactError(f"{path}: made by another fit of the teacher; run "
                                 "`cmm teacher features` again")
    if dataset is not None and meta.get("data_cache_key") != dataset.cache_key:
        raise StaleArtefactError(f"{path}: made from data {meta.get('data_cache_key')}, not "
                                 f"{dataset.cache_key}; run `cmm teacher features` again")
    return TeacherFeatures(hidden=arrays["hidden"], pred=arrays["pred"],
                           pred_std=arrays["pred_std"], sample=arrays["sample"],
                           regime=arrays["regime"], meta=meta)


def read_index(teacher_dir: str | Path) -> dict:
    path = Path(teacher_dir) / FEATURES_DIR / FEATURES_INDEX_FILE
    if not path.is_file():
        raise InputError("no teacher features here; run `cmm teacher features` first", file=path)
    return json.loads(path.read_text())
