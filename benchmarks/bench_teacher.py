"""Teacher benchmark: training windows/s and feature-extraction windows/s of SmolLM2-135M on
real windows, for the settings that matter on a CPU, then batch-1 decision latency.

    .venv/bin/python benchmarks/bench_teacher.py [--dataset NAME] [--dt-ms 1000]
        [--train-steps 12] [--feature-windows 1024] [--depth 0]

Training: optimizer steps of the real fit loop (``cmm.teacher.fit``: windows cut from the view,
forward, loss, backward through the frozen backbone into the patch projection, AdamW), timed
after four warm-up steps. Features: ``predict_windows(hidden=True)``, what the features stage
runs (every block's pooled output). Rows: fp32 at the old default batch (32) against the
default precision (``auto``: bf16 autocast where the CPU has AMX / AVX512-BF16) at batch 32,
64 and 128. The machine's cores may be shared with other work: the figures are then lower
bounds on the rates.
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def train_rate(ds, cfg, steps: int) -> float:
    """Training windows/s over ``steps`` optimizer steps of the fit loop."""
    import numpy as np

    from cmm.teacher.backbone import load_backbone
    from cmm.teacher.device import resolve_device
    from cmm.teacher.fit import FitResult, _fit_data, _Loop, _noop
    from cmm.teacher.model import build_teacher

    device = resolve_device(cfg.device)
    data = _fit_data(ds, cfg)
    model = build_teacher(load_backbone(cfg.backbone), data.x_train.shape[1],
                          data.x_train.shape[2], cfg, data.mean, data.std).to(device)
    loop = _Loop(model, data, cfg, device, FitResult(model), _noop)
    rng = np.random.default_rng(0)
    batches = [np.sort(rng.choice(len(data.x_train), cfg.batch_size, replace=False))
               for _ in range(steps + 4)]
    for idx in batches[:4]:  # oneDNN builds its bf16 kernels for a shape on first use
        loop._one_step(idx)
    t0 = time.perf_counter()
    for idx in batches[4:]:
        loop._one_step(idx)
    return steps * cfg.batch_size / (time.perf_counter() - t0)


def feature_rate(ds, cfg, n: int) -> float:
    from cmm.teacher.backbone import load_backbone
    from cmm.teacher.device import resolve_device
    from cmm.teacher.fit import predict_windows
    from cmm.teacher.model import build_teacher

    x = ds.windows("test")
    model = build_teacher(load_backbone(cfg.backbone), x.shape[1], x.shape[2], cfg)
    model = model.to(resolve_device(cfg.device)).eval()
    windows = x[: min(n, len(x))]
    # warm-up at the batch shape timed (oneDNN builds kernels per shape on first use)
    predict_windows(model, windows[:2 * cfg.infer_batch_size], cfg.infer_batch_size, hidden=True)
    t0 = time.perf_counter()
    predict_windows(model, windows, cfg.infer_batch_size, hidden=True)
    return len(windows) / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="lobster-goog-2012-06-21")
    parser.add_argument("--dt-ms", type=int, default=1000)
    parser.add_argument("--train-steps", type=int, default=16)
    parser.add_argument("--feature-windows", type=int, default=1024)
    parser.add_argument("--depth", type=int, default=0, help="backbone blocks (0: all)")
    parser.add_argument("--device", default="auto", help="auto (a GPU when present), cpu, cuda")
    args = parser.parse_args()

    import torch

    from cmm.config import DataConfig, GridConfig, TeacherConfig
    from cmm.data.prepare import prepare_dataset
    from cmm.teacher.device import cpu_has_bf16, resolve_device
    from cmm.teacher.fit import peak_memory_mib, set_threads
    from cmm.teacher.latency import measure_latency
    from cmm.teacher.model import build_teacher
    from cmm.teacher.backbone import load_backbone

    ds = prepare_dataset(args.dataset, DataConfig(grid=GridConfig(dt_ms=args.dt_ms)),
                         progress=False)
    threads = set_threads(0)
    print(f"dataset {ds.name} at {args.dt_ms} ms: windows {ds.windows('train').shape}; "
          f"torch {torch.__version__}, {threads} threads, CPU bf16 units: {cpu_has_bf16()}, "
          f"depth {args.depth or 'all'}, device {resolve_device(args.device)}")
    print(f"{'precision':<10} {'batch':>5} {'training windows/s':>19} {'feature windows/s':>18}")
    for precision, batch in (("fp32", 32), ("fp32", 128), ("auto", 32), ("auto", 64),
                             ("auto", 128)):
        cfg = TeacherConfig(precision=precision, batch_size=batch, infer_batch_size=256,
                            depth=args.depth, device=args.device)
        tr = train_rate(ds, cfg, args.train_steps)
        fr = feature_rate(ds, cfg, args.feature_windows) if batch == 128 else float("nan")
        print(f"{precision:<10} {batch:>5} {tr:>19.1f} {fr:>18.1f}", flush=True)
    cfg = TeacherConfig(depth=args.depth, device=args.device)
    x = ds.windows("validation")
    model = build_teacher(load_backbone(cfg.backbone), x.shape[1], x.shape[2], cfg)
    model = model.to(resolve_device(cfg.device)).eval()
    latency = measure_latency(model, x[:64], 50, 5)
    for key in ("one_thread", "all_threads"):
        lat = latency[key]
        print(f"latency batch 1, {lat['threads']} thread(s), p50/p99 ms: "
              f"{lat['p50_ms']:.1f} / {lat['p99_ms']:.1f}")
    print(f"peak memory of this process, MiB: {peak_memory_mib():.0f}")


if __name__ == "__main__":
    main()
