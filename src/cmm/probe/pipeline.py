"""The probe stage: a fitted teacher + its dataset -> ``probe.json`` and ``probe.png``.

Reference windows: up to ``windows_per_regime`` per volatility regime, evenly spaced in time
within the regime, from ``ProbeConfig.splits`` (train and validation by default; never test).
A regime with fewer than ``MIN_WINDOWS_PER_REGIME`` is warned about: its map, and the bootstrap
stability of its assignment, rest on too few windows to mean much.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np

from cmm.config import ProbeConfig
from cmm.io import sha256_file, write_json
from cmm.probe import FIGURE_FILE, PROBE_FILE
from cmm.probe.fluorescent import FluorescentProbe
from cmm.probe.plot import plot_probe
from cmm.vocabulary import REGIMES

SCHEMA_VERSION = 1
# Below this a regime's std_x(y_k) and mean |change|, and so its map, are mostly sampling noise.
MIN_WINDOWS_PER_REGIME = 16
log = logging.getLogger(__name__)


def reference_indices(regimes: np.ndarray, per_regime: int) -> np.ndarray:
    """Up to ``per_regime`` indices per regime value, evenly spaced, in time order."""
    picks = []
    for r in np.unique(regimes):
        idx = np.flatnonzero(regimes == r)
        if len(idx) > per_regime:
            idx = idx[np.linspace(0, len(idx) - 1, per_regime).round().astype(int)]
        picks.append(idx)
    return np.sort(np.concatenate(picks)) if picks else np.zeros(0, int)


def windows_per_regime_used(regimes: np.ndarray) -> dict[str, int]:
    """Reference windows per regime name (every regime, 0 for an absent one), warning about
    each one under ``MIN_WINDOWS_PER_REGIME``."""
    used = {name: int((regimes == r).sum()) for r, name in enumerate(REGIMES)}
    for name, count in used.items():
        if count < MIN_WINDOWS_PER_REGIME:
            log.warning("probe: regime %r has %d reference windows (< %d): its map and the "
                        "stability of its assignment are unreliable", name, count,
                        MIN_WINDOWS_PER_REGIME)
    return used


def run_probe(teacher_dir: str | Path, dataset, config: ProbeConfig, out_dir: str | Path,
              device: str = "cpu", on_progress=None) -> dict:
    from cmm.teacher import WEIGHTS_FILE
    from cmm.teacher.store import load_teacher, read_meta

    t0 = time.perf_counter()
    teacher_dir, out_dir = Path(teacher_dir), Path(out_dir)
    model = load_teacher(teacher_dir, dataset, device=device)
    regimes = np.concatenate([dataset.regimes(s) for s in config.splits])
    idx = reference_indices(regimes, config.windows_per_regime)
    # idx is sorted: each split's picks, cut from its own windows (views stay views).
    bounds = np.cumsum([0] + [len(dataset.regimes(s)) for s in config.splits])
    windows = np.concatenate([dataset.windows(s)[idx[(idx >= lo) & (idx < hi)] - lo]
                              for s, lo, hi in zip(config.splits, bounds[:-1], bounds[1:])])
    used = windows_per_regime_used(regimes[idx])
    probe = FluorescentProbe(alpha=config.alpha, draws=config.draws, groups=config.groups,
                             batch_size=config.batch_size, seed=config.seed,
                             bootstrap=config.bootstrap)
    probe.fit(model, windows, regimes[idx], on_progress=on_progress)
    result = probe.to_dict()
    meta = read_meta(teacher_dir)
    result.update({
        "schema_version": SCHEMA_VERSION, "kind": "cmm.probe",
        "config": config.model_dump(mode="json"), "dataset": dataset.name,
        "data_cache_key": dataset.cache_key, "splits": list(config.splits),
        "windows_per_regime_used": used,
        "teacher": {"dir": str(teacher_dir), "backbone": meta["backbone"],
                    "weights_sha256": sha256_file(teacher_dir / WEIGHTS_FILE)},
        "seconds": time.perf_counter() - t0,
    })
    write_json(out_dir / PROBE_FILE, result)
    title = f"{meta['backbone']['name']} ({meta['backbone']['init']}) on {dataset.name}"
    plot_probe(result, out_dir / FIGURE_FILE, title)
    return result
