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
    t = np.asarray(times_ns, np.float64) / 1e3
    return {"unit": "us", "p50": float(np.percentile(t, 50)), "p99": float(np.percentile(t, 99)),
            "mean": float(t.mean()), "min": float(t.min()), "n": int(len(t))}


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
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "windows.npy"
        np.save(path, np.ascontiguousarray(windows[: max(1, min(len(windows), 512))],
                                           np.float32))
        env = dict(os.environ, **{v: "1" for v in THREAD_VARS})
        cmd = [sys.executable, "-m", "cmm.moe.latency", str(folder), str(path), str(repeats),
               str(warmup), gate]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"latency measurement failed: {out.stderr.strip()[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])


def _main(argv: list[str]) -> None:
    folder, windows_path, repeats, warmup, gate = argv
    from cmm.moe.quoter import Quoter

    quoter = Quoter.load(folder, gate=gate)
    windows = np.load(windows_path)
    times = time_decisions(quoter, windows, int(repeats), int(warmup))
    result = {"what": "Quoter.decide: window in, predictions + weights + ladder orders out",
              "batch": 1, "threads": 1, "gate": gate, "warmup": int(warmup),
              "cpu": platform.processor() or platform.machine(), **summarise_ns(times)}
    print(json.dumps(result))


if __name__ == "__main__":
    _main(sys.argv[1:])
