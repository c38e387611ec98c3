"""Wall time of `cmm run` in process against `--executor ray --cpus N`, back to back, per
configuration; then what the stage graph allows with more cores (`cmm run --plan` on the in-process
run's folder: the total of its measured stage times against the longest chain of them).

Each configuration is first run once in process into a throwaway folder, so that the prepared
datasets, the converted weights and numba's compiled kernels are in the cache for both timed runs
(what a second run of a new configuration costs, not a first install). The timed runs write to
fresh folders: every stage runs (nothing is found done).

    .venv/bin/python benchmarks/bench_executors.py [--configs configs/tiny.yaml ...] [--cpus 2]
        [--root /tmp/cmm-bench-executors] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

CMM = [str(Path(sys.executable).parent / "cmm")]


def _run(args: list[str], env: dict) -> float:
    start = time.perf_counter()
    done = subprocess.run([*CMM, *args], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"cmm {' '.join(args)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def _plan(config: str, root: Path) -> dict:
    """What `cmm run --plan` prints, from the same call, for the finished in-process run in
    ``root``: each stage's estimate is then its own measured time there (its stage.json), so
    the total and the critical path are those of the in-process run's stage times."""
    from cmm.cli.run import load_run_config
    from cmm.pipeline.run import Pipeline

    plan = Pipeline(load_run_config(Path(config)), root, base_dir=Path(config).resolve().parent,
                    command="bench", progress=False, config_file=config).plan()
    return {"stages": plan["stages"], "total_s": round(plan["total_s"], 1),
            "critical_s": round(plan["critical_s"], 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["configs/tiny.yaml",
                                                     "configs/grid-tiny.yaml"])
    ap.add_argument("--cpus", type=int, default=2, help="Ray's CPUs (default 2)")
    ap.add_argument("--root", default="/tmp/cmm-bench-executors", help="run folders go here")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1")}
    root = Path(args.root)
    rows = []
    for config in args.configs:
        name = Path(config).stem
        shutil.rmtree(root / name, ignore_errors=True)
        print(f"{config}: warm-up run in process ...", flush=True)
        warm = _run(["run", config, "--root", str(root / name / "warm"), "--no-progress"], env)
        timed = {}
        for label, extra in (("in-process", []),
                             (f"ray --cpus {args.cpus}",
                              ["--executor", "ray", "--cpus", str(args.cpus)])):
            print(f"{config}: {label} ...", flush=True)
            timed[label] = _run(["run", config, "--root", str(root / name / label.split()[0]),
                                 "--no-progress", *extra], env)
        plan = _plan(config, root / name / "in-process")
        rows.append({"config": config, "warm_up_s": round(warm, 1),
                     **{f"{k}_s": round(v, 1) for k, v in timed.items()},
                     "stages": plan["stages"], "stage_total_s": plan["total_s"],
                     "critical_path_s": plan["critical_s"]})
    print(f"\n| configuration | stages | in process | Ray, {args.cpus} CPUs | ratio | "
          "stage time total | critical path | bound on speed-up |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        ip, ray = r["in-process_s"], r[f"ray --cpus {args.cpus}_s"]
        bound = (f"{r['stage_total_s'] / r['critical_path_s']:.1f}x"
                 if r["stage_total_s"] and r["critical_path_s"] else "?")
        print(f"| {r['config']} | {r['stages']} | {ip:.0f} s | {ray:.0f} s | {ray / ip:.2f} | "
              f"{r['stage_total_s']} s | {r['critical_path_s']} s | {bound} |")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
