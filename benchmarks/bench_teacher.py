"""Teacher benchmark: fit time and peak memory with the default settings, feature-extraction
throughput (windows/s), and batch-1 decision latency p50/p99 (one thread, all threads).

    .venv/bin/python benchmarks/bench_teacher.py [--dataset NAME] [--teacher DIR]
                                                 [--feature-windows N]

Without ``--teacher`` it fits the default teacher (SmolLM2-135M, ``TeacherConfig()``) into a
temporary run folder first; with it, it times an existing fit. The machine's cores may be
shared with other work: the figures are then upper bounds.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="binance-usdm-btcusdt")
    parser.add_argument("--teacher", default=None, help="an existing teacher folder")
    parser.add_argument("--feature-windows", type=int, default=1024)
    args = parser.parse_args()

    import torch

    from cmm.config import TeacherConfig
    from cmm.teacher.data import load_dataset
    from cmm.teacher.fit import peak_memory_mib, predict_windows, set_threads
    from cmm.teacher.latency import measure_latency
    from cmm.teacher.pipeline import run_fit
    from cmm.teacher.store import load_teacher

    ds = load_dataset(args.dataset)
    cfg = TeacherConfig()
    rows: list[tuple[str, str]] = [("dataset", f"{ds.name} ({ds!r})"),
                                   ("cores", str(os.cpu_count())),
                                   ("torch", torch.__version__)]
    folder = args.teacher
    if folder is None:
        folder = tempfile.mkdtemp(prefix="bench-teacher-")
        t0 = time.perf_counter()
        report = run_fit(ds, cfg, folder)
        rows += [("fit (train + early stopping), s", f"{report['fit_seconds']:.1f}"),
                 ("teacher fit command (+ eval, latency), s", f"{time.perf_counter() - t0:.1f}"),
                 ("stopped by", report["stopped_by"]),
                 ("peak memory, MiB", f"{report['peak_memory_mib']:.0f}")]
    model = load_teacher(folder, ds)
    threads = set_threads(cfg.threads)
    windows = ds.windows("test")[: args.feature_windows]
    predict_windows(model, windows[:32], cfg.infer_batch_size, hidden=True)  # warm-up
    t0 = time.perf_counter()
    predict_windows(model, windows, cfg.infer_batch_size, hidden=True)
    rate = len(windows) / (time.perf_counter() - t0)
    rows.append((f"feature extraction, windows/s ({threads} threads)", f"{rate:.1f}"))
    latency = measure_latency(model, ds.windows("validation"), cfg.latency_repeats,
                              cfg.latency_warmup)  # now, not the value stored by the fit
    for key in ("one_thread", "all_threads"):
        lat = latency[key]
        rows.append((f"latency batch 1, {lat['threads']} thread(s), p50/p99 ms",
                     f"{lat['p50']:.1f} / {lat['p99']:.1f}"))
    rows.append(("peak memory of this process, MiB", f"{peak_memory_mib():.0f}"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        print(f"{k:<{width}}  {v}")
    print(f"teacher folder: {folder}")


if __name__ == "__main__":
    main()
