"""Decision latency, teacher LLM vs CMM: one window in, the ladder's orders out; batch 1, one
thread, in one run.

Paths timed (each ``time.perf_counter_ns`` around one whole decision, after a warm-up):

- ``cmm``: ``Quoter.decide``, the deployed path: fused numba pass over every expert and the
  Hajek gate, then the ladder kernel;
- ``cmm-numpy``: the same arithmetic as a chain of batched numpy calls (batch of 1) + ladder;
- ``cmm-torch``: the torch ``MixtureModel`` (experts one by one, then the gate) + ladder;
- ``teacher``: the teacher LLM's forward pass (``predict``) + the same ladder kernel.

Thread counts are pinned to one (BLAS via the environment before numpy loads, torch with
``set_num_threads``). On a shared, busy machine the p99 measures the scheduler more than the
code (a time slice of another process is milliseconds); ``--realtime`` times the CMM paths a
second time under ``SCHED_FIFO`` (as a latency-critical quoting process would run; Linux, root)
and reports both. The teacher is timed under the default scheduler only. Windows come from the dataset's validation split (random windows of the
same shape when it is not prepared). Without ``--cmm`` an untrained CMM of the default shape is
timed (latency does not depend on the weights' values); without ``--teacher`` the default
SmolLM2 teacher with an unfitted adapter and heads (the same arithmetic as a fitted one).

    python benchmarks/bench_latency.py [--cmm runs/X/distill/cmm] [--teacher runs/X/teacher]
        [--decisions 2000] [--teacher-decisions 1000] [--out runs/bench/latency.json]

Targets (issue 5): CMM p99 <= 500 us; teacher / CMM p50 >= 100.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
             "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

TARGET_P99_US = 500.0
TARGET_RATIO = 100.0


def summarise(times_ns: np.ndarray) -> dict:
    t = np.asarray(times_ns, np.float64) / 1e3
    return {"p50_us": float(np.percentile(t, 50)), "p99_us": float(np.percentile(t, 99)),
            "mean_us": float(t.mean()), "max_us": float(t.max()), "n": int(len(t))}


def timed(decide, windows: np.ndarray, n: int, warmup: int) -> np.ndarray:
    times = np.empty(n, np.int64)
    for i in range(warmup + n):
        w = windows[i % len(windows)]
        t0 = time.perf_counter_ns()
        decide(w, i)
        dt = time.perf_counter_ns() - t0
        if i >= warmup:
            times[i - warmup] = dt
    return times


def load_windows(dataset: str, n: int = 512) -> tuple[np.ndarray, str]:
    try:
        from cmm.data.prepare import prepare_dataset

        ds = prepare_dataset(dataset, progress=False)
        return np.ascontiguousarray(ds.windows("validation")[:n]), f"{dataset} validation"
    except Exception as exc:  # noqa: BLE001 - a benchmark still runs without the data
        print(f"(no prepared {dataset}: {type(exc).__name__}; random windows 64 x 27)")
        rng = np.random.default_rng(0)
        return rng.standard_normal((n, 64, 27)).astype(np.float32), "random"


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--dataset", default="binance-usdm-btcusdt")
    p.add_argument("--cmm", type=Path, default=None, help="a CMM mixture folder (cmm moe)")
    p.add_argument("--teacher", type=Path, default=None, help="a fitted teacher folder")
    p.add_argument("--decisions", type=int, default=2000)
    p.add_argument("--teacher-decisions", type=int, default=1000)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--skip-teacher", action="store_true")
    p.add_argument("--realtime", action="store_true",
                   help="also time the CMM paths under SCHED_FIFO (Linux, needs privileges)")
    p.add_argument("--out", type=Path, default=Path("runs/bench/latency.json"))
    args = p.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    from cmm.moe.artefact import load_torch, save_mixture
    from cmm.moe.mixture import random_mixture
    from cmm.moe.quoter import Quoter

    windows, source = load_windows(args.dataset)
    W, F = windows.shape[1:]
    cmm_dir = args.cmm
    if cmm_dir is None:
        import tempfile

        cmm_dir = Path(tempfile.mkdtemp(prefix="cmm-bench-")) / "cmm"
        model = random_mixture(W, F, num_blocks=30)
        save_mixture(cmm_dir, model, {"data": {"instrument": {"tick_size": 0.1,
                                                             "lot_size": 0.001}}})
    quoter = Quoter.load(cmm_dir)
    torch_model, _ = load_torch(cmm_dir)
    mid = 30000.0
    tick = quoter.instrument.tick_size
    bt, bl, at, al = quoter._buffers()

    def orders(y) -> None:  # the Quoter's own ladder call, for the other paths
        quoter._kernel(quoter._params, quoter._level_weights, float(y[0]), float(y[1]),
                       float(y[2]), math.nan, 0.0, int(mid / tick), int(mid / tick) + 1,
                       bt, bl, at, al)

    def cmm(w, i):
        quoter.decide(w, mid, mid + tick, 0.0)

    fused = quoter.mixture

    def cmm_numpy(w, i):
        y, _ = fused.predict_one_numpy(w)
        orders(y)

    def cmm_torch(w, i):
        with torch.inference_mode():
            out = torch_model(torch.from_numpy(w[None]), None, "hajek")
            y = torch_model.to_units(out.y)[0].numpy()
        orders(y)

    results: dict = {"machine": {"cpu": platform.processor() or platform.machine(),
                                 "python": sys.version.split()[0], "torch": torch.__version__,
                                 "numpy": np.__version__, "threads": 1,
                                 "load_average": os.getloadavg(), "cpus": os.cpu_count()},
                     "windows": source, "cmm_artefact": str(cmm_dir),
                     "cmm_parameters": fused.n_parameters,
                     "cmm_experts": fused.E, "paths": {}}
    paths = (("cmm", cmm, args.decisions), ("cmm-numpy", cmm_numpy, args.decisions),
             ("cmm-torch", cmm_torch, max(1000, args.decisions // 2)))
    for name, fn, n in paths:
        results["paths"][name] = summarise(timed(fn, windows, n, args.warmup))
        print(f"{name:<14} {results['paths'][name]}", flush=True)
    if args.realtime:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(10))
        except (AttributeError, PermissionError, OSError) as exc:
            print(f"(no SCHED_FIFO here: {exc})")
        else:
            try:
                for name, fn, n in paths[:2]:
                    results["paths"][name + " (rt)"] = summarise(timed(fn, windows, n,
                                                                      args.warmup))
                    print(f"{name + ' (rt)':<14} {results['paths'][name + ' (rt)']}",
                          flush=True)
            finally:
                os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))

    if not args.skip_teacher:
        from cmm.config import TeacherConfig
        from cmm.teacher.backbone import load_backbone
        from cmm.teacher.model import build_teacher
        from cmm.teacher.store import load_teacher

        teacher = None
        if args.teacher is not None:
            try:
                teacher = load_teacher(args.teacher)
                label = str(args.teacher)
            except Exception as exc:  # noqa: BLE001 - e.g. fitted by an older teacher version
                print(f"(teacher {args.teacher} not loadable: {exc}; timing the default "
                      "architecture with an unfitted adapter and heads instead)")
        if teacher is None:
            cfg = TeacherConfig()
            teacher = build_teacher(load_backbone(cfg.backbone), W, F, cfg)
            label = f"{cfg.backbone.name} (unfitted adapter and heads: the same arithmetic)"
        teacher.eval()

        def teacher_decide(w, i):
            with torch.inference_mode():
                y = teacher.predict(torch.from_numpy(w[None]))[0].numpy()
            orders(y)

        n_t = args.teacher_decisions
        results["teacher"] = label
        results["teacher_blocks"] = teacher.num_blocks
        results["paths"]["teacher"] = summarise(timed(teacher_decide, windows, n_t,
                                                      min(args.warmup, 10)))
        print(f"{'teacher':<14} {results['paths']['teacher']}", flush=True)
        results["ratio_teacher_cmm_p50"] = (results["paths"]["teacher"]["p50_us"]
                                            / results["paths"]["cmm"]["p50_us"])
    cmm_p99 = results["paths"]["cmm"]["p99_us"]
    rt = results["paths"].get("cmm (rt)")
    results["targets"] = {"cmm_p99_us<=500": cmm_p99 <= TARGET_P99_US,
                          "cmm_p99_us<=500 (rt)": None if rt is None
                          else rt["p99_us"] <= TARGET_P99_US,
                          "teacher/cmm_p50>=100": (results.get("ratio_teacher_cmm_p50", 0.0)
                                                   >= TARGET_RATIO)}
    results["machine"]["load_average_after"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(f"\n{'path':<14} {'p50 us':>12} {'p99 us':>12} {'mean us':>12}  (batch 1, one thread, "
          f"{source})")
    for name, r in results["paths"].items():
        print(f"{name:<14} {r['p50_us']:>12.1f} {r['p99_us']:>12.1f} {r['mean_us']:>12.1f}  "
              f"n={r['n']}")
    if "ratio_teacher_cmm_p50" in results:
        print(f"teacher / cmm p50: {results['ratio_teacher_cmm_p50']:.0f}x")
    print(f"targets: {results['targets']}  (load average {results['machine']['load_average']}"
          f" -> {results['machine']['load_average_after']}; wrote {args.out})")
    return results


if __name__ == "__main__":
    main()
