"""Full trading days through the data layer: prepare time and peak memory at 100 ms, and the
memory of the shared window view against the stacked copy it replaces.

Each prepare runs in a fresh child process with an empty cache (``CMM_CACHE_DIR`` in a temporary
folder), so its wall time includes reading the raw file, and its peak RSS, taken from the
kernel's accounting of that child alone (``os.wait4``), is the whole job's: interpreter,
imports, numba, polars and numpy. Targets (issue "Full trading days"): <= 60 s and <= 2 GiB each.

    python benchmarks/bench_days.py [--datasets lobster-goog-2012-06-21,bitstamp-btcusd-2015-05-01]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

DEFAULT_DATASETS = ("lobster-goog-2012-06-21", "bitstamp-btcusd-2015-05-01")
DT_MS = 100
TARGET_S, TARGET_RSS = 60.0, 2 * 2**30

# Runs in the child: prepare one dataset at 100 ms into the given cache, print a JSON summary.
_CHILD = """
import json, sys, time
from cmm.config import GridConfig
from cmm.data.prepare import prepare_dataset
from cmm.data.spec import load_dataset_spec
name, dt_ms, cache = sys.argv[1], int(sys.argv[2]), sys.argv[3]
spec = load_dataset_spec(name)
levels = (spec.grid or GridConfig()).levels
spec = spec.model_copy(update={"grid": GridConfig(dt_ms=dt_ms, levels=levels)})
t0 = time.perf_counter()
ds = prepare_dataset(spec, cache_dir=cache, progress=False)
prep_s = time.perf_counter() - t0
w = ds.windows("train")
print(json.dumps({"prepare_s": prep_s, "steps": len(ds.steps),
                  "windows": {s: len(ds.split_samples(s)) for s in ("train", "validation", "test")},
                  "view_bytes": w.nbytes + w.features.nbytes, "copy_bytes": w.copy_nbytes,
                  "shape": list(w.shape)}))
"""


def prepare_in_child(name: str, dt_ms: int) -> dict:
    """Prepare ``name`` at ``dt_ms`` in a fresh process and cache: wall time, and the child's
    own peak RSS from ``os.wait4``."""
    with tempfile.TemporaryDirectory(prefix="cmm-bench-") as cache:
        r, w = os.pipe()
        t0 = time.perf_counter()
        pid = os.fork()
        if pid == 0:  # child: exec the job with stdout on the pipe
            os.close(r)
            os.dup2(w, 1)
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, 2)
            os.execv(sys.executable, [sys.executable, "-c", _CHILD, name, str(dt_ms), cache])
        os.close(w)
        with os.fdopen(r) as pipe:
            out = pipe.read()
        _, status, usage = os.wait4(pid, 0)
        wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"prepare of {name} failed (exit {os.waitstatus_to_exitcode(status)}); "
                         f"run it with `cmm data prepare {name}` to see why")
    result = json.loads(out.strip().splitlines()[-1])
    result.update(wall_s=wall, peak_rss=usage.ru_maxrss * 1024)  # Linux: KiB
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", default=",".join(DEFAULT_DATASETS),
                    help="comma-separated registered dataset names (default: %(default)s)")
    ap.add_argument("--dt-ms", type=int, default=DT_MS, help="grid step (default: %(default)s)")
    args = ap.parse_args(argv)
    for name in args.datasets.split(","):
        r = prepare_in_child(name, args.dt_ms)
        ok = r["wall_s"] <= TARGET_S and r["peak_rss"] <= TARGET_RSS
        print(f"prepare {name} at {args.dt_ms} ms: {r['wall_s']:.1f} s wall "
              f"({r['prepare_s']:.1f} s in prepare_dataset), peak RSS "
              f"{r['peak_rss'] / 2**20:.0f} MiB, {r['steps']:,} steps, windows "
              f"{r['windows']['train']:,}/{r['windows']['validation']:,}/"
              f"{r['windows']['test']:,}  [target <= {TARGET_S:.0f} s, <= "
              f"{TARGET_RSS / 2**30:.0f} GiB: {'met' if ok else 'MISSED'}]")
        n, w, f = r["shape"]
        print(f"  train windows ({n:,} x {w} x {f} float32): shared view "
              f"{r['view_bytes'] / 2**20:.1f} MiB (feature array + start index) against a "
              f"stacked copy of {r['copy_bytes'] / 2**20:.0f} MiB "
              f"({r['copy_bytes'] / max(r['view_bytes'], 1):.0f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
