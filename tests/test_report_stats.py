"""The report's paired comparisons, prediction table, price of latency and seed-independent
backtests: known answers of the sentence rule and the pairing, then the tiny pipeline of
tests/tiny.py (the session's ``tiny_run``, marked slow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from cmm.backtest.stats import PairedDifference, paired_difference
from cmm.report.paired import paired_sentence, verdict_clause
from cmm.report.tables import PolicyResult, compare, paired_episodes

DS = "tiny-btcusdt"
BASELINES = ["teacher", "kd", "truth", "fixed", "as", "ridge", "lgbm", "oracle"]
SEED_INDEPENDENT = ["fixed", "as", "ridge", "lgbm", "oracle"]


def _pd(low: float, high: float, n: int = 12, p_value: float = 0.01) -> dict:
    p = PairedDifference(mean=(low + high) / 2, low=low, high=high, p_value=p_value, n=n,
                         se=0.1, min_detectable=0.28, block=1)
    return {**p.to_dict(), "a_label": "CMM", "b_label": "fixed spread"}


# ------------------------------------------------------------------------------ known answers


def test_sentence_says_better_or_worse_only_where_the_interval_excludes_zero():
    assert verdict_clause(_pd(0.1, 0.5)) == "CMM is better than fixed spread (Δ 0.3 [0.1, 0.5])"
    assert verdict_clause(_pd(-0.5, -0.1)) == \
        "CMM is worse than fixed spread (Δ -0.3 [-0.5, -0.1])"
    text = verdict_clause(_pd(-0.2, 0.4, n=7))
    assert text == ("CMM and fixed spread are not distinguishable with 7 episodes (Δ 0.1 "
                    "[-0.2, 0.4]; minimum detectable difference 0.28)")
    assert "better" not in text and "worse" not in text
    # an interval that excludes 0 while the Wilcoxon test does not reject (few episodes)
    assert verdict_clause(_pd(0.1, 0.5, n=6, p_value=0.31)).startswith(
        "CMM and fixed spread are not distinguishable with 6 episodes")
    # an interval touching 0 is not "better"
    assert "not distinguishable with 12 episodes" in verdict_clause(_pd(0.0, 0.4))
    sentence = paired_sentence([_pd(0.1, 0.5), {**_pd(-0.2, 0.4), "b_label": "teacher LLM"}])
    assert sentence.startswith("Paired over the same test episodes")
    assert "CMM is better than fixed spread (Δ 0.3 [0.1, 0.5])" in sentence
    assert "CMM and teacher LLM are not distinguishable with 12 episodes" in sentence
    # the comparisons of one policy that are not distinguishable: one clause
    sentence = paired_sentence([{**_pd(-0.2, 0.4), "b_label": "teacher LLM"},
                                _pd(-0.5, -0.1), {**_pd(-0.1, 0.1), "min_detectable": 0.5}])
    assert ("CMM and each of teacher LLM and fixed spread: not distinguishable with 12 "
            "episodes (minimum detectable differences 0.28 to 0.5); CMM is worse than fixed "
            "spread (Δ -0.3 [-0.5, -0.1]).") in sentence
    assert paired_sentence([]) == ""


def _frame(pnl, sessions=None, episodes=None) -> pl.DataFrame:
    n = len(pnl)
    return pl.DataFrame({"episode": episodes or list(range(n)),
                         "session": sessions or [0] * n, "pnl": [float(x) for x in pnl],
                         "map": [1.0] * n, "fills": [1] * n, "max_drawdown": [0.0] * n,
                         "volume": [1.0] * n})


def test_pairing_matches_episodes_per_seed_and_reuses_a_seed_independent_replay():
    cmm = PolicyResult("cmm", "CMM", [_frame([1, 2, 3, 4]), _frame([2, 3, 4])],
                       latency_ms=[0.1, 0.1], seeds=[0, 1])
    # episode 3 only replayed by seed 0's CMM; the fixed spread ran once for every seed
    fixed = PolicyResult("fixed", "fixed spread", [_frame([0, 0, 1, 1])], latency_ms=[0.0],
                         shared=True)
    a, b, strata = paired_episodes(cmm, fixed)
    assert a.tolist() == [1, 2, 3, 4, 2, 3, 4] and b.tolist() == [0, 0, 1, 1, 0, 0, 1]
    assert strata.tolist() == [0, 0, 0, 0, 1, 1, 1]
    got = compare(cmm, fixed)
    want = paired_difference(a, b, strata).to_dict()
    assert got["mean"] == pytest.approx(np.mean(a - b)) == pytest.approx(want["mean"])
    assert (got["low"], got["high"], got["n"]) == (want["low"], want["high"], 7)
    assert got["label"] == "CMM − fixed spread" and got == compare(cmm, fixed)  # seeded
    assert got["verdict"] == "better"  # every difference is > 0
    # the other way round: flipped, and a subset of episodes
    back = compare(fixed, cmm, episodes=[0, 1])
    # every difference < 0, but 4 episodes cannot reject at 5 % (exact Wilcoxon p = 2/16)
    assert back["n"] == 4 and back["high"] < 0
    assert back["verdict"] == "not distinguishable with 4 episodes"
    # matched by session and episode, not by position
    other = PolicyResult("x", "x", [_frame([5, 6], sessions=[0, 0], episodes=[3, 0])],
                         latency_ms=[0.0], seeds=[0])
    a, b, _ = paired_episodes(cmm, other)
    assert a.tolist() == [1, 4] and b.tolist() == [6, 5]
    assert compare(cmm, None) is None
    assert compare(cmm, PolicyResult("y", "y", [_frame([1])], seeds=[0])) is None  # 1 pair


def test_gross_epnl_when_the_backtest_records_it():
    f = _frame([1.0, 3.0]).with_columns(pl.Series("gross_pnl", [2.0, 4.0]))
    m = PolicyResult("cmm", "CMM", [f], latency_ms=[0.1], seeds=[0]).metrics()
    assert m["gross_EPnL"].mean == pytest.approx(3.0) and m["EPnL"].mean == pytest.approx(2.0)
    assert "gross_EPnL" not in PolicyResult("a", "a", [_frame([1, 2])], seeds=[0]).metrics()


def test_rl_sim_gap_table_when_present_and_silent_when_absent(tmp_path):
    from cmm.report.sections import _rl_gap_blocks
    from cmm.report.tables import _rl_sim_gap

    manifest = {"seeds": [0, 1], "config": {"rl": ["ppo"]}}
    policies = {"ppo": {"slug": "ppo", "label": "PPO", "source": "registry", "name": "ppo"},
                "fixed": {"slug": "fixed", "label": "fixed", "source": "registry",
                          "name": "fixed"}}
    d = {"slug": "m"}
    assert _rl_sim_gap(tmp_path, manifest, d, policies) == [] and _rl_gap_blocks([]) == []
    folder = tmp_path / "m" / "seed1" / "rl" / "ppo"
    folder.mkdir(parents=True)
    paired = paired_difference([1.0, 2.0, 3.0], [1.5, 2.5, 2.0]).to_dict()
    (folder / "sim_gap.json").write_text(json.dumps(
        {"split": "validation", "episodes": 3, "sim_pnl_mean": 2.0, "hbt_pnl_mean": 2.0,
         "paired": paired}))
    rows = _rl_sim_gap(tmp_path, manifest, d, policies)
    assert [(r["slug"], r["seed"], r["episodes"]) for r in rows] == [("ppo", 1, 3)]
    blocks = _rl_gap_blocks(rows)
    assert blocks[0].text == "RL: training simulator against hftbacktest"
    assert "the same validation episodes" in blocks[1].text
    assert blocks[1].rows[0][:3] == ["PPO", "1", "3"] and blocks[1].rows[0][-1] == \
        paired["verdict"]
    # the RL stage's own reading of the verdict, where it writes one; no comparison: "–"
    rows[0]["reading"] = "the simulator is optimistic"
    rows.append({**rows[0], "seed": 0, "paired": {}, "reading": None})
    body = _rl_gap_blocks(rows)[1].rows
    assert body[0][-1] == "the simulator is optimistic" and body[1][-3:] == ["–", "–", "–"]


# -------------------------------------------------------------------------- the tiny pipeline


def _tables(run: Path) -> dict:
    return json.loads((run / "report" / "tables.json").read_text())["tables"][DS]


@pytest.mark.slow  # reads the session's tiny run
def test_report_pairs_cmm_with_the_teacher_and_every_baseline(tiny_run):
    t = _tables(tiny_run)
    main = {p["b"]: p for p in t["paired"]["main"]}
    assert set(main) == set(BASELINES) and all(p["a"] == "cmm" for p in main.values())
    for p in main.values():
        assert p["n"] == 3 and p["block"] == 1  # three 10 s episodes, one seed
        assert p["low"] <= p["mean"] <= p["high"] and p["min_detectable"] >= 0
        want = ("better" if p["low"] > 0 else "worse" if p["high"] < 0
                else "not distinguishable with 3 episodes")
        assert p["verdict"] == want
    assert {p["a"] for p in t["paired"]["ablations"]} == {"no_task"}
    assert {p["a"] for p in t["paired"]["gates"]} == {"cmm-mean", "cmm-router", "cmm-regime"}
    assert [(p["a"], p["b"]) for p in t["paired"]["backbone"]] == [("teacher-random",
                                                                    "teacher")]
    assert {p["b"] for p in t["paired"]["crash"]} == set(BASELINES)
    md = (tiny_run / "report.md").read_text()
    assert "Differences smaller than the ± spreads" not in md
    assert "| comparison (a − b) | mean Δ | 95 % interval | Wilcoxon p | min. detectable Δ" in md
    assert "Paired over the same test episodes" in md
    sentence = paired_sentence(t["paired"]["main"])
    assert sentence in md
    label = {r["slug"]: r["label"] for r in t["main"]}
    for b, p in main.items():
        if p["verdict"] in ("better", "worse"):
            assert f"CMM (Hájek-MoE) is {p['verdict']} than {label[b]} (Δ" in sentence
        else:
            assert label[b] in sentence and "not distinguishable with 3 episodes" in sentence
    assert "minimum detectable difference" in md


@pytest.mark.slow  # reads the session's tiny run
def test_paired_results_are_deterministic(tiny_run, tmp_path):
    from cmm.report import build_report

    paths = build_report(tiny_run, tmp_path / "again")
    assert paths["tables"].read_bytes() == (tiny_run / "report" / "tables.json").read_bytes()


@pytest.mark.slow  # reads the session's tiny run
def test_prediction_table_has_the_yardsticks(tiny_run):
    rows = {r["model"]: r for r in _tables(tiny_run)["prediction"]}
    for model in ("teacher", "teacher-random", "train-mean", "zero/last", "ridge", "lightgbm",
                  "cmm"):
        assert model in rows, model
        for t in ("mid", "spread", "volume"):  # the tiny test split's spread is constant
            assert rows[model][f"r2_{t}"]["n"] == (0 if t == "spread" else 1), (model, t)
        assert rows[model]["direction3_f1"]["n"] == 1, model
    md = (tiny_run / "report.md").read_text()
    assert ("| model | R² mid | R² spread | R² volume | mid up/flat/down accuracy | "
            "mid up/flat/down macro-F1 |") in md
    for label in ("train mean", "last value (zero/last)", "ridge (hand features)",
                  "LightGBM (hand features)", "teacher LLM (random-init backbone)"):
        assert f"| {label} |" in md, label
    assert "Highest test R² per target: mid: " in md


@pytest.mark.slow  # reads the session's tiny run
def test_price_of_latency_has_its_four_rows(tiny_run):
    lp = _tables(tiny_run)["latency_price"]
    rows = {r["slug"]: r for r in lp["rows"]}
    assert list(rows) == ["teacher-zero-latency", "teacher", "cmm", "cmm-teacher-latency"]
    lat = {s: r["latency_ms"]["mean"] for s, r in rows.items()}
    assert lat == {"teacher-zero-latency": 0, "teacher": pytest.approx(50.0),
                   "cmm": pytest.approx(0.2), "cmm-teacher-latency": pytest.approx(50.0)}
    for r in rows.values():
        assert 0 <= r["skipped"] <= r["decisions"] and r["decisions"] > 0
    assert rows["teacher-zero-latency"]["skipped"] == 0
    assert [(p["a"], p["b"]) for p in lp["paired"]] == [
        ("teacher", "teacher-zero-latency"), ("cmm", "cmm-teacher-latency"),
        ("cmm-teacher-latency", "teacher")]
    md = (tiny_run / "report.md").read_text()
    assert "### Price of latency" in md and "skipped while busy: teacher LLM at zero latency" in md
    for label in ("teacher LLM at zero latency", "CMM at the teacher's latency"):
        assert f"| {label} |" in md
    assert "what the LLM's slowness costs" in md and "what CMM's speed is worth" in md


@pytest.mark.slow  # reads the session's tiny run
def test_seed_independent_policies_are_replayed_once_per_dataset(tiny_run):
    manifest = json.loads((tiny_run / "manifest.json").read_text())
    stages = {s["stage"] for s in manifest["stages"]}
    seeded = {p["slug"]: p.get("seeded", True) for p in manifest["policies"]}
    for slug in SEED_INDEPENDENT:
        assert not seeded[slug], slug
        folder = tiny_run / DS / "seed-independent" / "backtest" / slug
        assert (folder / "episodes.csv").is_file(), slug
        assert "seed" not in json.loads((folder / "stage.json").read_text())["inputs"]
        assert f"{DS}/seed-independent/backtest/{slug}" in stages
        assert f"{DS}/seed-independent/crash/{slug}" in stages
        assert not any(s.endswith(f"/backtest/{slug}") and "/seed0/" in s for s in stages)
        assert not (tiny_run / DS / "seed0" / "backtest" / slug).exists()
    for slug in ("teacher", "cmm", "kd"):
        assert seeded[slug] and f"{DS}/seed0/backtest/{slug}" in stages
    main = {r["slug"]: r for r in _tables(tiny_run)["main"]}
    assert all(main[s]["seeded"] is False and main[s]["EPnL"]["n"] == 3
               for s in SEED_INDEPENDENT)


def _backtest(folder: Path, frame: pl.DataFrame, latency_ns: int = 0) -> None:
    folder.mkdir(parents=True)
    frame.write_csv(folder / "episodes.csv")
    (folder / "metrics.json").write_text(json.dumps({"latency_ns": latency_ns}))
    (folder / "stage.json").write_text("{}")


def test_tables_pair_seeds_with_one_replay_and_add_the_base_tier(tmp_path):
    """Two seeds of CMM, one replay of the fixed spread, a run at another fee tier: the paired
    rows use both seeds against the one replay, ``report.bootstrap_block`` reaches the
    bootstrap, and the base tier gets its own main table from ``pnl_base``."""
    from cmm.report.tables import build_tables

    def frame(pnl, base):
        return _frame(pnl).with_columns(pl.Series("pnl_base", [float(x) for x in base]),
                                        pl.Series("gross_pnl", [x + 1.0 for x in pnl]))

    _backtest(tmp_path / "m" / "seed0" / "backtest" / "cmm", frame([1, 2, 3], [2, 3, 4]), 20_000)
    _backtest(tmp_path / "m" / "seed1" / "backtest" / "cmm", frame([2, 3, 4], [3, 4, 5]), 20_000)
    _backtest(tmp_path / "m" / "seed-independent" / "backtest" / "fixed",
              frame([0, 0, 0], [9, 9, 9]))
    manifest = {"seeds": [0, 1], "datasets": [{"slug": "m", "episodes": {"volatile": [2]}}],
                "policies": [{"slug": "cmm", "label": "CMM", "source": "mixture", "name": "cmm"},
                             {"slug": "fixed", "label": "fixed spread", "source": "registry",
                              "name": "fixed", "seeded": False}],
                "tables": {"main": ["cmm", "fixed"], "robustness": ["cmm", "fixed"]},
                "config": {"backtest": {"fee_tier": "vip"}, "report": {"bootstrap_block": 2}}}
    t = build_tables(tmp_path, manifest)["m"]
    main = {r["slug"]: r for r in t["main"]}
    assert main["cmm"]["EPnL"]["n"] == 6 and main["fixed"]["EPnL"]["n"] == 3
    assert main["fixed"]["seeded"] is False and main["cmm"]["gross_EPnL"]["mean"] == 3.5
    (p,) = t["paired"]["main"]
    assert (p["a"], p["b"], p["n"], p["block"], p["mean"]) == ("cmm", "fixed", 6, 2, 2.5)
    assert p["verdict"] == "better"
    (v,) = t["paired"]["volatile"]
    assert v["n"] == 2 and v["mean"] == 3.5  # episode 2 of each seed
    assert t["fee_tier"] == "vip"
    base = {r["slug"]: r for r in t["main_base"]}
    assert base["cmm"]["EPnL"]["mean"] == 3.5 and base["fixed"]["EPnL"]["mean"] == 9.0
    (pb,) = t["paired"]["main_base"]
    assert pb["mean"] == -5.5 and pb["verdict"] == "worse"


def test_prediction_sentence_names_models_below_the_train_mean():
    from cmm.report.teacher import _below_train_mean

    def row(model, label, **r2):
        return {"model": model, "label": label,
                **{f"r2_{k}": {"mean": v} for k, v in r2.items()}}

    rows = [row("teacher", "teacher LLM", mid=-0.02, spread=0.3, volume=-0.5),
            row("train-mean", "train mean", mid=-0.01, spread=-0.06, volume=-0.4),
            row("ridge", "ridge (hand features)", mid=0.01, spread=0.4, volume=0.1)]
    assert _below_train_mean(rows) == ("; below the train mean's R² (worse than a constant): "
                                       "mid: teacher LLM; volume: teacher LLM")
    assert _below_train_mean(rows[1:]) == "; every model beats the train mean on every target"
    assert _below_train_mean(rows[:1]) == ""  # no train-mean row: nothing to say
