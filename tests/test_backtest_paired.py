"""Telling policies apart in ``cmm backtest``: a policy latency that makes the replay skip an
exact number of decisions (known answer, on a hand-built book), the paired comparison with the
baseline (episodes matched by session and episode), and the CLI's ``--baseline``.

The busy rule (:mod:`cmm.backtest.engine`, step 2): a decision at ``t`` is skipped when
``t < busy_until``, where ``busy_until = t_last + policy_latency`` and ``t_last`` is the last
decision the policy acted on. With decisions every ``dt`` and latency ``L`` the policy therefore
acts on every ``k``-th decision, ``k = max(1, ceil(L / dt))`` (a decision exactly ``L`` after
the last one is not busy), i.e. on ``ceil(N / k)`` of ``N`` decisions.
"""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest
from test_backtest import CFG, LINEAR, MS, TinyDataset, book
from test_backtest_cli import cmm

from cmm.backtest.runner import run_backtest
from cmm.cli.backtest import episode_values, paired_to_baseline
from cmm.strategy.policy import DecisionPlan, Policy, Quotes

DT_MS = 100
N_DECISIONS = 20  # 100, 200, ..., 2000 ms: one episode of 2 s


class MovingQuotes(Policy):
    """One bid and one ask, the bid a tick lower at each row (cycling every 7 rows, so two
    decisions acted on 1, 2, 3, 4, 10 or 20 rows apart want different bids): every decision
    acted on sends a new bid: the orders' submit times are exactly the decisions acted on."""

    name = "moving-quotes"

    def __init__(self, latency_ns: int):
        super().__init__(None)
        self._latency = latency_ns

    @property
    def latency_ns(self) -> int:
        return self._latency

    def act(self, ds, split: str, plan: DecisionPlan) -> Quotes:
        n = plan.n_rows
        bid = 100.1 - 0.1 * (np.arange(n) % 7)  # 100.1 .. 99.5, below the 100.2 ask
        return Quotes(bid[:, None], np.full((n, 1), 0.01), np.full((n, 1), 100.3),
                      np.full((n, 1), 0.01))


def _busy_run(latency_ms: float, skip: bool = True):
    events = [*book(1, 99.9, 100.2, 5.0), *book(5000, 99.9, 100.2, 5.0)]
    ds = TinyDataset(events, LINEAR, [DT_MS * (i + 1) for i in range(N_DECISIONS)])
    cfg = CFG.model_copy(update={"episode_s": 2.0, "skip_while_busy": skip})
    return run_backtest(ds, MovingQuotes(int(round(latency_ms * MS))), config=cfg)


@pytest.mark.parametrize("latency_ms, every, acted_count", [
    (0, 1, 20), (99, 1, 20), (100, 1, 20), (101, 2, 10), (150, 2, 10), (250, 3, 7),
    (300, 3, 7), (301, 4, 5), (1000, 10, 2), (1999, 20, 1)])
def test_latency_skips_an_exact_number_of_decisions(latency_ms, every, acted_count):
    # the expected numbers, derived from the rule in the module docstring
    assert every == max(1, math.ceil(latency_ms / DT_MS))
    assert acted_count == math.ceil(N_DECISIONS / every)
    res = _busy_run(latency_ms)
    rec = res.records.sort("ts_ns")
    assert len(rec) == N_DECISIONS and res.episodes["decisions"].to_list() == [N_DECISIONS]
    want = [1 if i % every == 0 else 0 for i in range(N_DECISIONS)]
    assert rec["acted"].to_list() == want
    assert int((rec["acted"] == 1).sum()) == acted_count
    assert int((rec["acted"] == 0).sum()) == N_DECISIONS - acted_count
    # a skipped decision quotes nothing; the bids sent are exactly those of the decisions acted on
    acted_ts = rec.filter(pl.col("acted") == 1)["ts_ns"].to_list()
    assert rec.filter(pl.col("acted") == 0)["quote_bid"].is_nan().all()
    bids = res.orders.filter(pl.col("side") == 1).sort("submit_ns")
    assert bids["submit_ns"].to_list() == acted_ts
    # each reaches the exchange after the venue's entry latency plus the policy's own
    lat = CFG.venue_entry_latency_ns + int(round(latency_ms * MS))
    assert (bids["exch_ns"] - bids["submit_ns"]).to_list() == [lat] * acted_count


def test_latency_250ms_pattern_and_no_skip_when_disabled():
    rec = _busy_run(250).records.sort("ts_ns")
    assert rec["acted"].to_list()[:10] == [1, 0, 0, 1, 0, 0, 1, 0, 0, 1]  # quoted, busy, busy, ...
    eager = _busy_run(250, skip=False).records
    assert eager["acted"].to_list() == [1] * N_DECISIONS


# ---------------------------------------------------------------- paired comparison


def _values(pnl, sessions, episodes, gross=None):
    d = {"session": sessions, "episode": episodes, "pnl": pnl}
    if gross is not None:
        d["gross_pnl"] = gross
    return pl.DataFrame(d)


def test_paired_matches_episodes_by_session_and_episode():
    from cmm.backtest.stats import paired_difference

    rng = np.random.default_rng(0)
    base_pnl = rng.normal(size=12)
    delta = 0.5 + 0.1 * rng.normal(size=12)
    sess = np.repeat([0, 1], 6)
    ep = np.arange(12)
    base = _values(base_pnl, sess, ep, gross=base_pnl + 1.0)
    perm = rng.permutation(12)  # the other policy's rows in another order
    other = _values((base_pnl + delta)[perm], sess[perm], ep[perm])
    out = paired_to_baseline({"fixed": base, "oracle": other}, "fixed")
    assert out["fixed"]["is_baseline"] and out["fixed"]["baseline"] == "fixed"
    o = out["oracle"]
    assert o["episodes"] == 12 and o["net"]["n"] == 12
    assert o["net"]["mean"] == pytest.approx(delta.mean())
    assert o["net"]["verdict"] == "better" and o["net"]["low"] > 0
    want = paired_difference(base_pnl + delta, base_pnl, sess).to_dict()
    assert o["net"] == pytest.approx(want)
    assert "gross" not in o  # the other policy has no gross PnL: no gross comparison

    both = paired_to_baseline({"a": base, "b": _values(base_pnl, sess, ep, gross=base_pnl)}, "b")
    assert both["a"]["net"]["p_value"] is None  # identical net PnL: every difference is 0
    assert both["a"]["gross"]["mean"] == pytest.approx(1.0)

    short = paired_to_baseline({"a": base.head(1), "b": base.head(1)}, "b")
    assert short["a"]["net"] is None and "at least 2 episodes" in short["a"]["net_error"]


def test_episode_values_keeps_gross_when_present():
    per = pl.DataFrame({"episode": [0, 1], "session": [0, 0], "start_ns": [0, 1], "pnl": [1.0, 2.0],
                        "map": [0.0, 0.0]})
    assert episode_values(per).columns == ["session", "episode", "start_ns", "pnl"]
    assert "gross_pnl" in episode_values(per.with_columns(gross_pnl=pl.lit(3.0))).columns


# ---------------------------------------------------------------- the CLI


def test_help_explains_baseline():
    r = cmm("backtest", "--help")
    assert r.returncode == 0
    assert "--baseline" in r.stdout and "paired" in r.stdout


def test_baseline_must_be_one_of_the_policies():
    r = cmm("backtest", "--dataset", "binance-usdm-btcusdt", "--policy", "fixed,as",
            "--baseline", "oracle")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "baseline must be one of the policies" in r.stderr and "fixed, as" in r.stderr


def test_several_policies_print_and_store_the_paired_difference(tmp_path, monkeypatch, prepared):
    """On the real capture (60 s episodes: its test split is 4 minutes), in process: net and
    gross EPnL, the difference to the chosen baseline, and the same in each metrics.json."""
    import json

    from typer.testing import CliRunner

    from cmm.cli import app

    prepared("binance-usdm-btcusdt")  # the shared test cache
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("COLUMNS", "200")
    r = CliRunner().invoke(app, ["backtest", "--dataset", "binance-usdm-btcusdt", "--policy",
                                 "fixed,oracle", "--baseline", "oracle", "--episode-s", "60",
                                 "--no-plots"])
    assert r.exit_code == 0, r.output
    for label in ("EPnL net", "EPnL gross", "Δ net vs oracle", "Wilcoxon p", "verdict",
                  "oracle (baseline)", "fixed - oracle, net PnL per episode"):
        assert label in r.output, label
    folder = tmp_path / "runs/backtest"
    fixed = json.loads((folder / "binance-usdm-btcusdt-fixed/metrics.json").read_text())
    oracle = json.loads((folder / "binance-usdm-btcusdt-oracle/metrics.json").read_text())
    assert oracle["paired"]["is_baseline"] and oracle["paired"]["baseline"] == "oracle"
    p = fixed["paired"]
    n = fixed["metrics"]["episodes"]
    assert p["baseline"] == "oracle" and p["episodes"] == n >= 3 and p["net"]["n"] == n
    assert p["net"]["mean"] == pytest.approx(
        fixed["metrics"]["EPnL"] - oracle["metrics"]["EPnL"], abs=1e-9)
    assert p["gross"]["n"] == n
