"""The report's first screen, "The answer" (issue 16): known answers on hand-built tables, then
its place in a whole document and in the README block."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from cmm.backtest.stats import PairedDifference
from cmm.report.answer import (
    ANSWER_HEADERS,
    answer_blocks,
    answer_parts,
    answer_row,
    answer_sentence,
)
from cmm.report.overview import _teacher_pair_blocks
from cmm.report.paired import paired_sentence, verdict_clause
from cmm.report.render import _md
from cmm.report.sections import document as _doc

LABELS = {"cmm": "CMM (Hájek-MoE)", "teacher": "teacher LLM", "fixed": "fixed spread",
          "as": "Avellaneda-Stoikov", "ridge": "ridge (hand features)",
          "lgbm": "LightGBM (hand features)", "oracle": "perfect-forecast ladder",
          "teacher-zero-latency": "teacher LLM at zero latency",
          "cmm-teacher-latency": "CMM at the teacher's latency"}


def _cmp(a: str, b: str, mean: float, low: float, high: float, p: float, n: int = 14,
         **extra) -> dict:
    """A paired comparison as :func:`cmm.report.tables.compare` stores it (the real verdict)."""
    d = PairedDifference(mean=mean, low=low, high=high, p_value=p, n=n, se=1.0,
                         min_detectable=37.4, block=1).to_dict()
    return {"a": a, "b": b, "a_label": LABELS[a], "b_label": LABELS[b],
            "label": f"{LABELS[a]} − {LABELS[b]}", **d, **extra}


def _row(slug: str, epnl: float, latency: float = 0.0) -> dict:
    return {"slug": slug, "label": LABELS[slug], "EPnL": {"mean": epnl, "std": 80.0},
            "PnLMAP": {"mean": -0.3, "std": None}, "MAP": {"mean": 100.0, "std": 1.0},
            "RPT": {"mean": -1.0, "std": None}, "Sharpe": {"mean": -0.4, "std": None},
            "fills": {"mean": 30.0, "std": 2.0}, "latency_ms": {"mean": latency, "std": None}}


def _tables(epnl: dict[str, float] | None = None, pairs: list[dict] | None = None,
            price: list[dict] | None = None, tier: str = "base") -> dict:
    """One market's tables, numbers modelled on docs/results/teacher-days (GOOG)."""
    epnl = epnl or {"cmm": -35.51, "teacher": -39.32, "fixed": -228.7, "as": -65.15,
                    "ridge": -30.42, "lgbm": -37.11, "oracle": 56.25}
    latency = {"cmm": 0.131, "teacher": 16.9}
    main = [_row(s, v, latency.get(s, 0.0)) for s, v in epnl.items()]
    if pairs is None:
        pairs = [_cmp("cmm", "teacher", 3.81, -23.2, 29.7, 0.6),
                 _cmp("cmm", "fixed", 193.2, 120.0, 270.0, 0.0001),
                 _cmp("cmm", "as", 29.64, 5.1, 60.2, 0.01),
                 _cmp("cmm", "ridge", -5.09, -20.1, 9.8, 0.5),
                 _cmp("cmm", "lgbm", 1.6, -30.0, 33.0, 0.9)]
    if price is None:
        price = [_cmp("teacher", "teacher-zero-latency", -0.04, -0.3, 0.2, 0.9,
                      meaning="what the LLM's slowness costs"),
                 _cmp("cmm", "cmm-teacher-latency", 0.9, 0.2, 1.7, 0.002,
                      meaning="what CMM's speed is worth")]
    return {"main": main, "paired": {"main": pairs}, "fee_tier": tier,
            "latency_price": {"rows": [], "paired": price} if price else {}}


def _cells(row: list[str]) -> dict[str, str]:
    """A row by header (the three "CMM − it" columns are told apart by their position)."""
    return {f"{i}:{h}": c for i, (h, c) in enumerate(zip(ANSWER_HEADERS, row))}


# ------------------------------------------------------------------------------ the table row


def test_row_picks_the_best_quoter_and_yardstick_by_mean_epnl():
    row = answer_row("goog", answer_parts(_tables()))
    assert len(row) == len(ANSWER_HEADERS)
    assert row == ["goog", "3.81 [-23.2, 29.7]", "0.6", "not distinguishable with 14 episodes",
                   "129x",  # 16.9 ms / 0.131 ms
                   "Avellaneda-Stoikov", "29.6 [5.1, 60.2]", "better (14 episodes)",
                   "ridge (hand features)", "-5.09 [-20.1, 9.8]",
                   "not distinguishable with 14 episodes",
                   "-0.04 [-0.3, 0.2] (14 episodes)", "0.9 [0.2, 1.7] (better, 14 episodes)"]
    # the other way round: fixed spread above Avellaneda-Stoikov, LightGBM above ridge
    flipped = _tables({"cmm": -1.0, "teacher": -2.0, "fixed": -0.5, "as": -3.0,
                       "ridge": -4.0, "lgbm": -0.2})
    row = answer_row("btc", answer_parts(flipped))
    assert row[5:11] == ["fixed spread", "193 [120, 270]", "better (14 episodes)",
                         "LightGBM (hand features)", "1.6 [-30, 33]",
                         "not distinguishable with 14 episodes"]
    # the oracle is not a rule-based quoter, however high its EPnL
    assert "perfect-forecast ladder" not in row


# --------------------------------------------------------------------------------- the sentence


def test_sentence_follows_the_verdicts_and_gives_the_p():
    text = answer_sentence("goog", answer_parts(_tables()))
    assert text == (
        "goog: CMM and its teacher are not distinguishable with 14 episodes (Δ 3.81 "
        "[-23.2, 29.7], p 0.6) at 129x lower latency; CMM is better than the best rule-based "
        "quoter Avellaneda-Stoikov (Δ 29.6 [5.1, 60.2], p 0.01, 14 episodes); CMM and the best "
        "yardstick "
        "ridge (hand features) are not distinguishable with 14 episodes (Δ -5.09 [-20.1, "
        "9.8], p 0.5); what the LLM's slowness costs: teacher LLM and teacher LLM at zero "
        "latency are not distinguishable with 14 episodes (Δ -0.04 [-0.3, 0.2], p 0.9); what "
        "CMM's speed is worth: CMM (Hájek-MoE) is better than CMM at the teacher's latency "
        "(Δ 0.9 [0.2, 1.7], p 0.002, 14 episodes).")


def test_an_interval_off_zero_without_the_test_says_why():
    """Bitstamp's CMM − teacher: the interval excludes 0, the Wilcoxon p is 0.08: not
    distinguishable, and every sentence and table says the p."""
    off = _cmp("cmm", "teacher", -0.171, -0.325, -0.0311, 0.08, n=57)
    assert off["verdict"] == "not distinguishable with 57 episodes"
    worse = _cmp("cmm", "ridge", -5.0, -9.0, -1.0, 0.003)
    t = _tables(pairs=[off, _cmp("cmm", "as", 1.0, -2.0, 4.0, 0.4), worse])
    text = answer_sentence("btc", answer_parts(t))
    assert text.startswith(
        "btc: CMM and its teacher are not distinguishable with 57 episodes (Δ -0.171 [-0.325, "
        "-0.0311]; the interval excludes 0 but the Wilcoxon test does not reject (p 0.08)) at "
        "129x lower latency; CMM and the best rule-based quoter Avellaneda-Stoikov are not "
        "distinguishable with 14 episodes (Δ 1 [-2, 4], p 0.4); CMM is worse than the best "
        "yardstick ridge (hand features) (Δ -5 [-9, -1], p 0.003, 14 episodes);")
    assert text.count("better") == 1  # only CMM's speed (its verdict says so)
    row = answer_row("btc", answer_parts(t))
    assert row[1:4] == ["-0.171 [-0.325, -0.0311]", "0.08",
                        "not distinguishable with 57 episodes"]
    assert row[10] == "worse (14 episodes)"
    # a rival's verdict cell carries the p where its interval is off 0
    t = _tables(pairs=[off, {**off, "b": "as", "b_label": LABELS["as"]}])
    assert answer_row("btc", answer_parts(t))[7] == \
        "not distinguishable with 57 episodes (Wilcoxon p 0.08)"
    # the long clause of the per-market sentences, and the grouped sentence under a table
    clause = verdict_clause({**off, "a_label": "CMM", "b_label": "the teacher"})
    assert clause == ("CMM and the teacher are not distinguishable with 57 episodes (Δ -0.171 "
                      "[-0.325, -0.0311]; minimum detectable difference 37.4; the interval "
                      "excludes 0 but the Wilcoxon test does not reject (p 0.08))")
    plain = _cmp("cmm", "as", 1.0, -2.0, 4.0, 0.4, n=57)
    sentence = paired_sentence([plain, off])
    assert "(p 0.08)" in sentence and "and each of" not in sentence  # not grouped away
    # the overview's teacher table: the Wilcoxon p beside the verdict
    (_, table) = _teacher_pair_blocks([{"slug": "btc", "dataset": "btc"}],
                                      {"btc": _tables(pairs=[off])})
    assert table.headers[5:9] == ["Δ EPnL [95 %]", "Wilcoxon p", "min. detectable Δ",
                                  "CMM against the teacher"]
    assert table.rows[0][5:9] == ["-0.171 [-0.325, -0.0311]", "0.08", "37.4",
                                  "not distinguishable with 57 episodes"]
    assert table.rows[0][-1] == "129x"


# ------------------------------------------------------------------------------ missing parts


def test_missing_yardsticks_and_latency_price_give_dashes():
    t = _tables({"cmm": -35.51, "teacher": -39.32, "as": -65.15},
                pairs=[_cmp("cmm", "teacher", 3.81, -23.2, 29.7, 0.6),
                       _cmp("cmm", "as", 29.64, 5.1, 60.2, 0.01)], price=[])
    a = answer_parts(t)
    row = answer_row("goog", a)
    assert row[5:8] == ["Avellaneda-Stoikov", "29.6 [5.1, 60.2]", "better (14 episodes)"]
    assert row[8:] == ["–"] * 5
    text = answer_sentence("goog", a)
    # one quoter ran: no "best"; no yardstick and no price of latency: those parts left out
    assert "CMM is better than the rule-based quoter Avellaneda-Stoikov (Δ 29.6" in text
    assert "yardstick" not in text and "slowness" not in text and text.endswith(", p 0.01, 14 episodes).")
    # a yardstick that ran but has no paired comparison: named, no Δ, left out of the sentence
    t["main"].append(_row("ridge", -1.0))
    row = answer_row("goog", answer_parts(t))
    assert row[8:11] == ["ridge (hand features)", "–", "–"]
    assert "ridge" not in answer_sentence("goog", answer_parts(t))
    # one price of latency only
    t["latency_price"] = {"paired": [_cmp("cmm", "cmm-teacher-latency", 0.9, 0.2, 1.7, 0.002,
                                          meaning="what CMM's speed is worth")]}
    assert answer_row("goog", answer_parts(t))[-2:] == ["–",
                                                        "0.9 [0.2, 1.7] (better, 14 episodes)"]


def test_no_row_without_cmm_or_teacher():
    no_teacher = _tables({"cmm": -1.0, "as": -2.0})
    missing = _tables()
    missing["main"][1] = {"slug": "teacher", "label": "teacher LLM", "missing": True}
    assert answer_parts(no_teacher) is None and answer_parts(missing) is None
    manifest = {"datasets": [{"slug": "a", "dataset": "A"}, {"slug": "b", "dataset": "B"}]}
    blocks = answer_blocks(manifest, {"a": no_teacher, "b": _tables(tier="vip")})
    assert [b.kind for b in blocks] == ["h2", "table", "p"]
    assert [r[0] for r in blocks[1].rows] == ["B"] and blocks[2].text.startswith("B: CMM")
    assert "net PnL per test episode at the vip fee tier" in blocks[1].text
    assert answer_blocks({"datasets": manifest["datasets"][:1]}, {"a": no_teacher}) == []


# ------------------------------------------------------------------------- in the whole report


def _manifest(slugs: list[str]) -> dict:
    d = {"sessions": 1, "hours": 6.33, "dt_ms": 1000, "instrument": {},
         "split_counts": {"train": 10, "validation": 3, "test": 3},
         "regime_counts": {"test": [1, 1, 1]},
         "episodes": {"start_ns": [0, 1], "volatile": [], "volatility": [0.0, 0.0]}}
    return {"name": "hand", "seeds": [0], "policies": [], "tables": {"main": []},
            "datasets": [{**d, "slug": s, "dataset": f"market {s}"} for s in slugs],
            "config": {"report": {"title": "Hand-made", "dpi": 40},
                       "teacher": {"backbone": {"name": "smollm2-135m"}}}}


def test_the_answer_opens_the_report_and_the_readme_block(tmp_path):
    manifest = _manifest(["goog", "btc"])
    tables = {s: {**_tables(tier="vip"), "latency": [], "prediction": []}
              for s in ("goog", "btc")}
    fig = tmp_path / "figures"
    fig.mkdir()
    md = _md(_doc(tmp_path, manifest, tables, fig), Path("figures"))
    answer, datasets = md.index("## The answer\n"), md.index("## Datasets\n")
    assert md.index("Aggregation: test episodes") < answer < datasets
    assert md.index("\n## ") + 1 == answer  # the first section of the document
    first = md[answer:datasets]
    assert "*per market, net PnL per test episode at the vip fee tier;" in first
    assert ("| market goog | 3.81 [-23.2, 29.7] | 0.6 | not distinguishable with 14 episodes "
            "| 129x | Avellaneda-Stoikov | 29.6 [5.1, 60.2] | better (14 episodes) |") in first
    assert "\nmarket btc: CMM and its teacher are not distinguishable" in first
    assert md.count("## The answer") == 1
    # scripts/readme_results.py: the answer first, after the provenance, one level down
    spec = importlib.util.spec_from_file_location(
        "readme_results", Path(__file__).parents[1] / "scripts" / "readme_results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    block = mod.results_block(md, "docs/results/hand/report/figures")
    assert block.startswith("Run **hand**")
    assert block.index("### The answer\n") < block.index("### Datasets\n")
    assert "\nmarket goog: CMM and its teacher" in block
