"""How long one decision of the Quoter takes: window in, orders out, batch 1, one thread.

:func:`time_decisions` times ``repeats`` decisions (after ``warmup``) with
``time.perf_counter_ns``, windows taken in turn from an array and the touch moved with them.
:func:`measure_in_subprocess` runs it in a fresh interpreter whose BLAS and torch are pinned to
one thread before numpy loads (the thread count of an already loaded BLAS cannot be changed
portably): the figure the backtest charges and the artefact stores.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


def summarise_ns(times_ns: np.ndarray) -> dict:
    """p50, p99, mean and min of ``times_ns`` in microseconds, each field named with its unit
    (``p50_us``...: read them with :func:`cmm.metrics.latency_field`), and their count ``n``."""
    t = np.asarray(times_ns, np.float64) / 1e3
    return {"p50_us": float(np.percentile(t, 50)), "p99_us": float(np.percentile(t, 99)),
            "mean_us": float(t.mean()), "min_us": float(t.min()), "n": int(len(t))}


def time_decisions(quoter, windows: np.ndarray, repeats: int = 2000, warmup: int = 200,
                   mid: float = 30000.0) -> np.ndarray:
    """(repeats,) int64 nanoseconds per ``quoter.decide`` call."""
    tick = quoter.instrument.tick_size
    windows = np.ascontiguousarray(windows, np.float32)
    times = np.empty(repeats, np.int64)
    for i in range(warmup + repeats):
        w = windows[i % len(windows)]
        bb = mid + (i % 7) * tick
        t0 = time.perf_counter_ns()
        quoter.decide(w, bb, bb + tick, 0.0)
        dt = time.perf_counter_ns() - t0
        if i >= warmup:
            times[i - warmup] = dt
    return times


def measure_in_subprocess(folder: str | Path, windows: np.ndarray, repeats: int = 2000,
                          warmup: int = 200, gate: str = "hajek") -> dict:
    """One-thread, batch-1 decision latency of the mixture saved in ``folder``."""
    return measure_all_in_subprocess([(folder, gate)], windows, repeats, warmup)[0]


def measure_all_in_subprocess(jobs: list[tuple[str | Path, str]], windows: np.ndarray,
                              repeats: int = 2000, warmup: int = 200) -> list[dict]:
    """:func:`measure_in_subprocess` of each ``(folder, gate)`` in ``jobs``, one after the
    other in one fresh interpreter (which costs more than the measurements)."""
    if not jobs:
        return []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "windows.npy"
        np.save(path, np.ascontiguousarray(windows[: max(1, min(len(windows), 512))],
                                           np.float32))
        from cmm.procs import child_env

        env = child_env(dict(os.environ, **{v: "1" for v in THREAD_VARS}))
        cmd = [sys.executable, "-m", "cmm.moe.latency", str(path), str(repeats), str(warmup)]
        for folder, gate in jobs:
            cmd += [str(folder), gate]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"latency measurement failed: {out.stderr.strip()[-2000:]}")
        results = json.loads(out.stdout.strip().splitlines()[-1])
        if len(results) != len(jobs):
            raise RuntimeError(f"latency measurement: {len(results)} results for {len(jobs)} "
                               "mixtures")
        return results


def _main(argv: list[str]) -> None:
    windows_path, repeats, warmup, *pairs = argv
    from cmm.moe.quoter import Quoter

    windows = np.load(windows_path)
    results = []
    for folder, gate in zip(pairs[::2], pairs[1::2], strict=True):
        quoter = Quoter.load(folder, gate=gate)
        times = time_decisions(quoter, windows, int(repeats), int(warmup))
        results.append({"what": "Quoter.decide: window in, predictions + weights + ladder "
                                "orders out",
                        "batch": 1, "threads": 1, "gate": gate, "warmup": int(warmup),
                        "cpu": platform.processor() or platform.machine(),
                        **summarise_ns(times)})
    print(json.dumps(results))


if __name__ == "__main__":
    from cmm.procs import die_with_parent_from_env

    die_with_parent_from_env()  # a killed run leaves no measurement behind
    _main(sys.argv[1:])
