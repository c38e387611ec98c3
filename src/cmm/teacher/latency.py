"""Per-decision inference time of the teacher, which the backtest charges to its quotes.

One decision = one window (batch 1, numpy) in, three predictions in the data's units out,
timed end to end with ``time.perf_counter_ns`` after a warm-up, once with one torch thread and
once with all of them. Windows are drawn from the given array in turn.
"""

from __future__ import annotations

import os
import platform
import time

import numpy as np
import torch

from cmm.metrics import latency_field
from cmm.teacher.model import TeacherModel


def _time_decisions(model: TeacherModel, windows: np.ndarray, repeats: int, warmup: int
                    ) -> np.ndarray:
    device = next(model.adapter.parameters()).device
    times = np.empty(repeats, np.int64)
    with torch.inference_mode():
        for i in range(warmup + repeats):
            w = windows[i % len(windows)]
            t0 = time.perf_counter_ns()
            x = torch.from_numpy(np.ascontiguousarray(w[None])).to(device)
            y = model.to_units(model(x).y).cpu().numpy()
            if device.type == "cuda":
                torch.cuda.synchronize()
            dt = time.perf_counter_ns() - t0
            if i >= warmup:
                times[i - warmup] = dt
    del y
    return times


def measure_latency(model: TeacherModel, windows: np.ndarray, repeats: int = 200,
                    warmup: int = 10) -> dict:
    """p50/p99/mean decision time in milliseconds on one thread and on all threads, each
    field named with its unit (``p50_ms``, ``p99_ms``, ``mean_ms``: read them with
    :func:`cmm.metrics.latency_field`), and the ``charged_ns`` of :func:`charged_ns`."""
    model.eval()
    before = torch.get_num_threads()
    out: dict = {"batch": 1, "repeats": repeats, "warmup": warmup,
                 "cpu": platform.processor() or platform.machine(),
                 "device": str(next(model.adapter.parameters()).device)}
    all_threads = os.cpu_count() or 1
    try:
        for label, n in (("one_thread", 1), ("all_threads", all_threads)):
            torch.set_num_threads(n)
            t = _time_decisions(model, windows, repeats, warmup) / 1e6
            p50, p99 = float(np.percentile(t, 50)), float(np.percentile(t, 99))
            out[label] = {"threads": n, "p50_ms": p50, "p99_ms": p99,
                          "mean_ms": float(t.mean())}
    finally:
        torch.set_num_threads(before)
    out["charged_ns"] = charged_ns(out)
    return out


def charged_ns(measured: dict) -> int:
    """What the backtest charges the teacher, from :func:`measure_latency`'s answer: the
    all-threads median (the deployment setting), truncated to whole ns. ``measured`` may be an
    older ``latency.json`` (bare ``p50``, :func:`cmm.metrics.latency_field`)."""
    return int(latency_field(measured["all_threads"], "p50", "ms") * 1e6)
