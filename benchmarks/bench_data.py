"""Data-layer throughput: raw Binance capture -> canonical events, ours vs hftbacktest's own
converter, then (when available) events -> grid snapshots, then full trading days at 100 ms
(benchmarks/bench_days.py: prepare time, peak RSS, window-view memory).

Both raw-to-events pipelines do the same work: gzip decompression, parsing every line, and
hftbacktest's latency and event-order corrections (``convert`` runs them itself; ours is
``read_binance`` + ``finalize_events``). Each is timed best of 3 after one warm-up run, so numba
compile time is excluded; hftbacktest's progress prints are suppressed. Events/s counts the
rows of the final, ordered array (identical for both on futures files).

    python benchmarks/bench_data.py [--file PATH] [--repeat 3] [--raw-only] [--skip-days]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cmm.config import Instrument
from cmm.data.events import EVENT_TYPE_MASK, LOCAL_EVENT, TRADE_EVENT, finalize_events
from cmm.data.readers.binance import read_binance
from cmm.io import default_data_dir

DEFAULT_FILE = "binance/usdm/btcusdt_20240808.gz"


def best_of(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    """Best wall time of ``repeat`` runs after one warm-up run; the last result."""
    result = fn()  # warm-up: numba compilation, page cache, imports
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def traced_peak(fn: Callable[[], object]) -> int:
    """Peak bytes allocated (Python objects and numpy buffers) during one untimed run."""
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def max_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024  # Linux reports KiB


def instrument_for(path: Path, tick_size: float | None) -> Instrument:
    """The instrument of the built-in dataset listing ``path``, else one with ``tick_size``."""
    if tick_size is None:
        try:
            from cmm.data.spec import builtin_datasets

            for spec in builtin_datasets().values():
                if any(p.resolve() == path.resolve() for p in spec.file_paths()):
                    return spec.instrument
        except Exception:  # noqa: BLE001 - the registry is optional here
            pass
        tick_size = 0.1
    return Instrument(tick_size=tick_size, lot_size=tick_size)


def hftbacktest_run(path: Path) -> Callable[[], np.ndarray]:
    from hftbacktest.data.utils import binancefutures

    def run():
        with contextlib.redirect_stdout(io.StringIO()):
            return binancefutures.convert(str(path))

    return run


def ours_run(path: Path, instrument: Instrument) -> Callable[[], np.ndarray]:
    def run():
        raw, _ = read_binance(path, instrument)
        return finalize_events(raw)

    return run


def interleaved_times(runs: dict[str, Callable[[], object]],
                      repeat: int) -> tuple[dict[str, list[float]], dict[str, object]]:
    """Wall times of ``repeat`` rounds after one warm-up round, each round running every
    pipeline once in turn, so that a change in machine load affects them alike; and each
    pipeline's last result."""
    results = {name: fn() for name, fn in runs.items()}  # warm-up
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeat):
        for name, fn in runs.items():
            results[name] = None  # free the previous result before the next run
            t0 = time.perf_counter()
            results[name] = fn()
            times[name].append(time.perf_counter() - t0)
    return times, results


def best_of_interleaved(runs: dict[str, Callable[[], object]],
                        repeat: int) -> dict[str, tuple[float, object]]:
    """Like :func:`best_of` for several pipelines, their timed runs alternating (see
    :func:`interleaved_times`)."""
    times, results = interleaved_times(runs, repeat)
    return {name: (min(times[name]), results[name]) for name in runs}


def bench_raw_to_events(path: Path, instrument: Instrument, repeat: int,
                        skip_hftbacktest: bool = False
                        ) -> tuple[np.ndarray, dict[str, Callable[[], np.ndarray]]]:
    """Figures (1) and (2): raw capture -> finalized events, hftbacktest's converter and ours,
    interleaved. Prints the ratio of the best times, and the median and range of the
    per-round ratios (each round runs both back to back). Returns our events and the
    pipelines."""
    runs = {"ours": ours_run(path, instrument)}
    if not skip_hftbacktest:
        runs = {"theirs": hftbacktest_run(path), **runs}
    times, results = interleaved_times(runs, repeat)
    theirs_rate = None
    if "theirs" in times:
        t_theirs, theirs = min(times["theirs"]), results.pop("theirs")
        theirs_rate = len(theirs) / t_theirs
        print(f"(1) hftbacktest binancefutures.convert: {t_theirs:.3f} s, {len(theirs):,} events, "
              f"{theirs_rate:,.0f} events/s")
        del theirs
    t_ours, events = min(times["ours"]), results["ours"]
    ours_rate = len(events) / t_ours
    print(f"(2) cmm read_binance + finalize_events: {t_ours:.3f} s, {len(events):,} events, "
          f"{ours_rate:,.0f} events/s")
    if theirs_rate is not None:
        print(f"    ratio ours/theirs (events/s): {ours_rate / theirs_rate:.2f}x")
        rounds = sorted(a / b for a, b in zip(times["theirs"], times["ours"]))
        print(f"    per-round ratios ({len(rounds)} rounds, interleaved): median "
              f"{float(np.median(rounds)):.2f}x, range {rounds[0]:.2f}x-{rounds[-1]:.2f}x")
    return events, runs


# --------------------------------------------------------------------------------------------
# HOOK: events -> grid snapshots (cmm.data.grid.build_snapshots)


def bench_snapshots(events: np.ndarray, instrument: Instrument, repeat: int = 3,
                    dt_ms: int = 100, levels: int = 10, band: float = 0.2) -> None:
    """Time ``build_snapshots`` on finalized events, set up as the preparation step does
    (local view, first step after the first event, price band around the median book price)."""
    try:
        from cmm.data.grid import build_snapshots
    except ImportError:
        print("snapshot benchmark: cmm.data.grid not available")
        return
    local = events[(events["ev"] & LOCAL_EVENT) != 0]
    dt_ns = dt_ms * 1_000_000
    start = (int(local["local_ts"][0]) // dt_ns + 1) * dt_ns
    n_steps = (int(local["local_ts"][-1]) - start) // dt_ns + 1
    kind = local["ev"] & EVENT_TYPE_MASK
    priced = (local["px"] > 0) & (local["qty"] > 0) & (kind != TRADE_EVENT)
    ref = float(np.median(local["px"][priced]))

    def run():
        return build_snapshots(local, start, dt_ns, n_steps, levels, instrument.tick_size,
                               ref * (1 - band), ref * (1 + band))

    seconds, out = best_of(run, repeat)
    print(f"snapshots (cmm.data.grid.build_snapshots): {seconds:.3f} s, "
          f"{len(events) / seconds:,.0f} events/s ({len(events):,} events -> {n_steps:,} steps "
          f"x {levels} levels, dt {dt_ms} ms)")
    return out


# --------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--file", type=Path, default=default_data_dir() / DEFAULT_FILE,
                        help=f"a Binance capture (default: <data dir>/{DEFAULT_FILE})")
    parser.add_argument("--repeat", type=int, default=3, help="timed runs (best is kept)")
    parser.add_argument("--tick-size", type=float, default=None,
                        help="for the snapshot benchmark (default: from the dataset registry)")
    parser.add_argument("--skip-hftbacktest", action="store_true",
                        help="ours only (e.g. for spot files, which hftbacktest's futures "
                             "converter cannot read)")
    parser.add_argument("--raw-only", action="store_true",
                        help="only the raw-to-events comparison, (1) and (2)")
    parser.add_argument("--skip-days", action="store_true",
                        help="leave out the full-day prepare figures (benchmarks/bench_days.py)")
    args = parser.parse_args(argv)
    path: Path = args.file
    instrument = instrument_for(path, args.tick_size)
    print(f"file: {path} ({path.stat().st_size / 1e6:.1f} MB compressed)")

    events, runs = bench_raw_to_events(path, instrument, args.repeat, args.skip_hftbacktest)
    if args.raw_only:
        return 0

    print(f"(3) peak memory: process RSS high-water mark {max_rss_bytes() / 2**20:,.0f} MiB "
          "(both pipelines, 1 + repeat runs each)")
    peak_ours = traced_peak(runs["ours"])
    line = f"    traced peak allocation of one run: cmm {peak_ours / 2**20:,.0f} MiB"
    if "theirs" in runs:
        peak_theirs = traced_peak(runs["theirs"])
        line += (f", hftbacktest {peak_theirs / 2**20:,.0f} MiB (mostly its 100M-row buffer, "
                 "allocated but largely never touched)")
    print(line)

    bench_snapshots(events, instrument, args.repeat)
    if not args.skip_days:
        # Full trading days at 100 ms: prepare time, peak RSS, window-view memory.
        sys.path.insert(0, str(Path(__file__).parent))
        import bench_days

        bench_days.main([])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
