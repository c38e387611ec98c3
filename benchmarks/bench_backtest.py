"""Replay throughput: our runner against a bare hftbacktest loop, on the same events and the
same decision times.

The bare loop is hftbacktest's tutorial pattern: at each decision, cancel and post one bid and one
ask around the mid. Ours runs the fixed-spread policy through the full pipeline (ladder of K
levels a side, order reconciliation, fills, own accounting, episode closes that walk the visible
book). Both are compiled on a short slice first, so the timed runs exclude numba compilation.
Acceptance: our wall time <= 1.5x the bare loop's.

    .venv/bin/python benchmarks/bench_backtest.py [--dataset binance-usdm-btcusdt] [--session -1]
        [--episode-s SECONDS]  (default: BacktestConfig's; shorter episodes mean more closes)
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="binance-usdm-btcusdt")
    ap.add_argument("--session", type=int, default=-1, help="session index (default: the last)")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs each; the best is kept")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    ap.add_argument("--episode-s", type=float, default=None,
                    help="episode length (default: BacktestConfig's)")
    args = ap.parse_args()

    from cmm.backtest import engine as E
    from cmm.backtest.runner import replay
    from cmm.config import BacktestConfig, LadderConfig
    from cmm.data.prepare import prepare_dataset
    from cmm.strategy.policy import Predictions

    ds = prepare_dataset(args.dataset, progress=False)
    session = ds.sessions[args.session]
    events = ds.events(session.id)
    inst = ds.spec.instrument
    config, ladder = BacktestConfig(), LadderConfig()
    if args.episode_s is not None:
        config = config.model_copy(update={"episode_s": args.episode_s})
    steps = ds.steps.filter(ds.steps["session"] == session.id)
    dec_ts = steps["ts_ns"].to_numpy().astype(np.int64)  # one decision per grid step
    ep_len = int(config.episode_s * 1e9)
    episode = (dec_ts - dec_ts[0]) // ep_len
    ep_end = dec_ts[0] + (np.arange(episode.max() + 1) + 1) * ep_len
    n = len(dec_ts)
    vol = float(np.quantile(ds.split_samples("train")["y_volume"].to_numpy(), 0.5))
    preds = Predictions(np.zeros(n), np.full(n, 2.0), np.full(n, vol))
    qty = max(inst.lot_size, round(0.01 / inst.lot_size) * inst.lot_size)

    def ours(k: int):
        m = slice(0, k)
        e = episode[m]
        return replay(events, inst, dec_ts[m], e, ep_end[: e.max() + 1], preds, ladder=ladder,
                      config=config, rows=np.arange(k), n_rows=n)

    def bare(k: int):
        hbt = E.build_backtest(events, inst, config, 0)
        start = time.perf_counter()
        E.bare_loop(hbt, dec_ts[:k], 1.0, qty)
        wall = time.perf_counter() - start
        hbt.close()
        return wall

    t = time.perf_counter()
    ours(50)
    bare(50)
    compile_s = time.perf_counter() - t

    ours_runs, bare_runs = [], []
    for _ in range(args.repeat):  # interleaved, so both see the same machine load
        bare_runs.append(bare(n))
        ours_runs.append(ours(n).wall_s)
    ours_s, bare_s = min(ours_runs), min(bare_runs)
    n_ev = len(events)
    out = {"dataset": args.dataset, "session": session.id, "events": n_ev, "decisions": n,
           "decision_interval_ms": ds.config.grid.dt_ms, "ladder_levels": ladder.levels,
           "episode_s": config.episode_s, "episodes": int(episode.max()) + 1,
           "compile_s": round(compile_s, 1),
           "bare_s": round(bare_s, 3), "ours_s": round(ours_s, 3),
           "bare_events_per_s": round(n_ev / bare_s), "ours_events_per_s": round(n_ev / ours_s),
           "ratio_ours_over_bare": round(ours_s / bare_s, 3)}
    print(f"events {n_ev:,}  decisions {n:,} every {ds.config.grid.dt_ms} ms  "
          f"(compile {compile_s:.1f} s, best of {args.repeat})")
    print(f"bare hftbacktest loop : {bare_s:7.3f} s  {n_ev / bare_s:12,.0f} events/s")
    print(f"cmm runner            : {ours_s:7.3f} s  {n_ev / ours_s:12,.0f} events/s")
    print(f"ratio ours/bare       : {ours_s / bare_s:7.3f}  (acceptance <= 1.5)")
    if args.json:
        from cmm.io import write_json

        write_json(args.json, out)
    else:
        print(json.dumps(out))


if __name__ == "__main__":
    main()
