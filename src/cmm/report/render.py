"""``report.md`` and ``report.html`` of a run folder.

The document is first a list of blocks (headings, paragraphs, tables, figures), then written
twice: Markdown (figures as PNG files beside it) and one self-contained HTML file (figures
embedded as base64, styles inline, nothing fetched). ``tables.json`` holds every number.
"""

from __future__ import annotations

import base64
import html
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from cmm.io import atomic_path, read_parquet, reading, write_json
from cmm.report import figures as FIG
from cmm.pipeline.layout import TEACHER_NAMES, RunLayout, teacher_seed, teacher_seed_list
from cmm.report.tables import TASKS, build_tables, flip, missing_cells
from cmm.vocabulary import SPLITS


@dataclass
class Block:
    kind: str  # h1 h2 h3 p table img
    text: str = ""
    headers: list[str] | None = None
    rows: list[list[str]] | None = None
    path: Path | None = None


def fmt(stat: dict | None, digits: int = 4) -> str:
    if not stat or stat.get("mean") is None:
        return "–"
    m, s = stat["mean"], stat.get("std")
    text = _num(m, digits)
    if s is not None and abs(s) <= 1e-9 * abs(m):
        s = 0.0  # equal values (a deterministic policy over seeds) differ only by rounding
    if s is not None:
        text += f" ± {_num(s, 3)}"
    return text


def _num(x: float, digits: int = 4) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 1e5:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


# ---------------------------------------------------------------------- paired comparisons


def _interval(p: dict) -> str:
    return f"[{_num(p['low'], 3)}, {_num(p['high'], 3)}]"


def _episode_s(manifest: dict, d: dict) -> str:
    """A dataset's episode length: its own (``per_dataset``) where the manifest records one,
    else the run's ("–" where neither is recorded)."""
    got = d.get("episode_s") or ((manifest.get("config") or {}).get("backtest")
                                 or {}).get("episode_s")
    return "–" if got is None else f"{float(got):g} s"


def _delta(p: dict | None) -> str:
    """A comparison's cell: its mean and [low, high] ("–" where there is none)."""
    return "–" if p is None else f"{_num(p['mean'], 3)} {_interval(p)}"


def _p_value(p: dict) -> str:
    return "–" if p.get("p_value") is None else f"{p['p_value']:.3g}"


def _verdict(p: dict) -> str:
    # dicts without a verdict (older tables): the interval alone decides
    return p.get("verdict") or ("better" if p["low"] > 0 else "worse" if p["high"] < 0 else "")


def untested_note(p: dict) -> str:
    """Why a comparison whose interval excludes 0 is still "not distinguishable": the Wilcoxon
    test does not reject. "" where the verdict is better / worse or the interval holds 0 (a
    reader otherwise sees an interval off 0 called not distinguishable, a contradiction)."""
    if _verdict(p) in ("better", "worse") or not (p["low"] > 0 or p["high"] < 0):
        return ""
    if p.get("p_value") is None:
        return "the interval excludes 0 but the Wilcoxon test gives no p-value"
    return f"the interval excludes 0 but the Wilcoxon test does not reject (p {_p_value(p)})"


def verdict_clause(p: dict, with_p: bool = False) -> str:
    """One comparison in words (``p``: :func:`cmm.report.tables.compare` or
    ``PairedDifference.to_dict()`` with ``a_label``, ``b_label``): "better" / "worse" only where
    the 95 % interval of ``a - b`` excludes 0 and the Wilcoxon test agrees (the verdict of
    :class:`cmm.backtest.stats.PairedDifference`), else "not distinguishable with N episodes",
    with the minimum detectable difference (``with_p``: the Wilcoxon p instead, shorter), and
    the p where the interval excludes 0 all the same (:func:`untested_note`)."""
    a, b = p.get("a_label", "a"), p.get("b_label", "b")
    note = untested_note(p)
    delta = f"Δ {_num(p['mean'], 3)} {_interval(p)}"
    if with_p and note:
        delta += f"; {note}"
    elif with_p and p.get("p_value") is not None:  # None: every difference is 0
        delta += f", p {_p_value(p)}"
    verdict = _verdict(p)
    if with_p and verdict in ("better", "worse"):  # the episode count, as "not distinguishable"
        delta += f", {p['n']} episodes"
    if verdict == "better":
        return f"{a} is better than {b} ({delta})"
    if verdict == "worse":
        return f"{a} is worse than {b} ({delta})"
    if not with_p:
        delta += f"; minimum detectable difference {_num(p['min_detectable'], 3)}"
        delta += f"; {note}" if note else ""
    return f"{a} and {b} are not distinguishable with {p['n']} episodes ({delta})"


PAIRED_HEADERS = ["comparison (a − b)", "mean Δ", "95 % interval", "Wilcoxon p",
                  "min. detectable Δ", "episodes", "verdict (a against b)"]


def _paired_rows(pairs: list[dict]) -> list[list[str]]:
    return [[p["label"], _num(p["mean"], 4), _interval(p), _p_value(p),
             _num(p["min_detectable"], 3), str(p["n"]), p["verdict"]] for p in pairs]


def paired_sentence(pairs: list[dict], what: str = "EPnL") -> str:
    """The sentence under a table: every comparison's verdict (see :func:`verdict_clause`);
    the comparisons of one policy that are not distinguishable (same episode count) in one
    clause, with the range of their minimum detectable differences, except those whose
    interval excludes 0: each of those on its own, with its p."""
    if not pairs:
        return ""
    order: list[tuple] = []  # ("one", pair) or ("group", (a label, n)), in table order
    groups: dict[tuple, list[dict]] = {}
    for p in pairs:
        if p.get("verdict") in ("better", "worse") or untested_note(p):
            order.append(("one", p))  # alone: its clause gives the p (see untested_note)
            continue
        key = (p.get("a_label", "a"), p["n"])
        if key not in groups:
            order.append(("group", key))
        groups.setdefault(key, []).append(p)
    out = []
    for kind, item in order:
        group = [item] if kind == "one" else groups[item]
        if len(group) == 1:
            out.append(verdict_clause(group[0]))
            continue
        names = [p.get("b_label", "b") for p in group]
        mde = [p["min_detectable"] for p in group]
        out.append(f"{item[0]} and each of {', '.join(names[:-1])} and {names[-1]}: not "
                   f"distinguishable with {item[1]} episodes (minimum detectable differences "
                   f"{_num(min(mde), 3)} to {_num(max(mde), 3)})")
    block = pairs[0].get("block", 1)
    return (f"Paired over the same test episodes (Δ = per-episode {what} difference, 95 % "
            f"bootstrap interval, seeds as strata, blocks of {block} episode"
            f"{'s' if block != 1 else ''}): " + "; ".join(out) + ".")


def _paired_blocks(pairs: list[dict], caption: str, what: str = "EPnL") -> list[Block]:
    if not pairs:
        return []
    return [Block("table", caption + "; minimum detectable Δ: the true difference found with "
                                     "80 % power at the 5 % level", PAIRED_HEADERS,
                  _paired_rows(pairs)),
            Block("p", paired_sentence(pairs, what))]


def _vs_cmm(pairs: list[dict], slug: str) -> str:
    """The verdict of the row ``slug`` against its table's reference: CMM (pairs "CMM − row"
    or "row − CMM"), or the pretrained teacher for the random-init control ("" if none)."""
    for p in pairs:
        if p["b"] == slug and p["a"] == "cmm":
            return flip(p["verdict"])
        if p["a"] == slug and p["b"] in ("cmm", "teacher"):
            return p["verdict"]
    return ""



# --------------------------------------------------------------------------- the first screen

RULE_BASED = ("fixed", "as")  # fixed spread, Avellaneda-Stoikov
YARDSTICKS = ("ridge", "lgbm")
# (a, b) of the price-of-latency comparisons the first screen shows, with their column
LATENCY_PRICE = ((("teacher", "teacher-zero-latency"), "LLM's slowness costs: teacher − "
                  "teacher at zero latency, Δ [95 %]"),
                 (("cmm", "cmm-teacher-latency"), "CMM's speed is worth: CMM − CMM at the "
                  "teacher's latency, Δ [95 %]"))
ANSWER_HEADERS = ["market", "CMM − teacher, Δ [95 %]", "Wilcoxon p", "CMM against the teacher",
                  "speed-up", "best rule-based quoter", "CMM − it, Δ [95 %]",
                  "CMM against it", "best yardstick", "CMM − it, Δ [95 %]", "CMM against it",
                  *(h for _, h in LATENCY_PRICE)]


def best_of(t: dict, slugs: tuple[str, ...]) -> dict | None:
    """The main-table row among ``slugs`` with the highest mean test EPnL (None: none ran)."""
    rows = [r for r in t.get("main", []) if r["slug"] in slugs and not r.get("missing")
            and (r.get("EPnL") or {}).get("mean") is not None]
    return max(rows, key=lambda r: r["EPnL"]["mean"], default=None)


def answer_parts(t: dict) -> dict | None:
    """What the first screen says of one market, from its tables: CMM against its teacher
    (and the latency ratio), against the best rule-based quoter and the best yardstick, and
    the price of latency. None where CMM or the teacher did not run."""
    main = {r["slug"]: r for r in t.get("main", []) if not r.get("missing")}
    c, te = main.get("cmm"), main.get("teacher")
    if not c or not te:
        return None
    rivals = {}
    for role, slugs in (("rule", RULE_BASED), ("yard", YARDSTICKS)):
        row = best_of(t, slugs)
        ran = sum(s in main for s in slugs)
        rivals[role] = (row, None if row is None else _pair(t, "cmm", row["slug"]), ran)
    lp = (t.get("latency_price") or {}).get("paired", [])
    price = [next((p for p in lp if (p["a"], p["b"]) == ab), None) for ab, _ in LATENCY_PRICE]
    return {"teacher": _pair(t, "cmm", "teacher"), "speedup": _speedup(c, te),
            **rivals, "price": price}


def _verdict_cell(p: dict | None, with_p: bool = True) -> str:
    """A verdict with the episodes behind it ("not distinguishable" names them already) and,
    ``with_p``, the p of an interval off 0 that the Wilcoxon test does not confirm."""
    if p is None:
        return "–"
    if p["verdict"] in ("better", "worse"):
        return f"{p['verdict']} ({p['n']} episodes)"
    return p["verdict"] + (f" (Wilcoxon p {_p_value(p)})" if with_p and untested_note(p) else "")


def _marked(p: dict | None) -> str:
    """A price-of-latency cell: Δ [interval], the episodes, and better / worse where so."""
    if p is None:
        return "–"
    mark = f"{p['verdict']}, " if p["verdict"] in ("better", "worse") else ""
    return f"{_delta(p)} ({mark}{p['n']} episodes)"


def answer_row(market: str, a: dict) -> list[str]:
    """One market's row of the first-screen table (see :data:`ANSWER_HEADERS`)."""
    pt = a["teacher"]
    # the teacher's p has its own column; the rivals' verdicts carry it where needed
    row = [market, _delta(pt), "–" if pt is None else _p_value(pt),
           _verdict_cell(pt, with_p=False), _times(a["speedup"])]
    for role in ("rule", "yard"):
        best, pair, _ = a[role]
        row += ["–" if best is None else best["label"], _delta(pair), _verdict_cell(pair)]
    return row + [_marked(p) for p in a["price"]]


def answer_sentence(market: str, a: dict) -> str:
    """One sentence of one market, from the numbers of its row only: "better" / "worse" only
    where the verdict says so (:func:`verdict_clause`, with the Wilcoxon p); a part whose
    comparison is missing is left out."""
    parts = []
    r = a["speedup"]
    lat = ("" if r is None else f" at {_times(r)} lower latency" if r >= 1
           else f" at {_times(1 / r)} higher latency")
    if a["teacher"] is not None:
        parts.append(verdict_clause({**a["teacher"], "a_label": "CMM",
                                     "b_label": "its teacher"}, with_p=True) + lat)
    elif lat:
        parts.append(f"CMM decides{lat} than its teacher")
    for role, what in (("rule", "rule-based quoter"), ("yard", "yardstick")):
        best, pair, ran = a[role]
        if pair is not None:
            who = f"the {'best ' if ran > 1 else ''}{what} {best['label']}"
            parts.append(verdict_clause({**pair, "a_label": "CMM", "b_label": who},
                                        with_p=True))
    parts += [f"{p['meaning']}: {verdict_clause(p, with_p=True)}" for p in a["price"]
              if p is not None]
    return f"{market}: " + "; ".join(parts) + "."


def answer_blocks(manifest: dict, tables: dict) -> list[Block]:
    """The report's first screen: per market, CMM against its teacher, the best rule-based
    quoter and the best yardstick, and the price of latency, in one table and one sentence
    each (no section where no market has both CMM and the teacher)."""
    rows, sentences, tiers = [], [], []
    for d in manifest["datasets"]:
        t = tables.get(d["slug"]) or {}
        a = answer_parts(t)
        if a is None:
            continue
        rows.append(answer_row(d["dataset"], a))
        sentences.append(answer_sentence(d["dataset"], a))
        tiers.append(t.get("fee_tier", "base"))
    if not rows:
        return []
    tier = (f"the {tiers[0]} fee tier" if len(set(tiers)) == 1 else
            "each market's headline fee tier (" + ", ".join(
                f"{r[0]}: {x}" for r, x in zip(rows, tiers)) + ")")
    cap = (f"per market, net PnL per test episode at {tier}; Δ: per-episode difference, paired "
           "over the same test episodes, mean with its 95 % block-bootstrap interval; better / "
           "worse only where that interval excludes 0 and the Wilcoxon p is below 0.05 (an "
           "interval off 0 with a larger p: not distinguishable, its p beside it); speed-up: "
           "teacher latency / CMM latency; best rule-based quoter: the higher mean test EPnL of "
           "fixed spread and Avellaneda-Stoikov; best yardstick: of ridge and LightGBM; the "
           "last two columns: the price of latency, (better) / (worse) as above; N episodes: "
           "the pairs behind each Δ, test episodes of all seeds pooled (a shared teacher's "
           "and a seed-independent policy's episodes are the same market periods in every "
           "seed); –: not run")
    return [Block("h2", "The answer"), Block("table", cap, ANSWER_HEADERS, rows),
            *(Block("p", s) for s in sentences)]


# ------------------------------------------------------------------------------ the document


def _doc(run_dir: Path, manifest: dict, tables: dict, fig_dir: Path) -> list[Block]:
    cfg = manifest["config"]
    rep = cfg["report"]
    git = manifest.get("git", {})
    rev = git.get("commit", "unknown") + (" (with uncommitted changes)" if git.get("dirty")
                                          else "")
    mach = manifest.get("machine", {})
    B: list[Block] = [Block("h1", rep["title"])]
    B.append(Block("p", f"Run **{manifest['name']}**, started {manifest.get('started', '?')}, "
                        f"produced by `{manifest.get('command', '?')}` at git revision "
                        f"`{rev}` on {mach.get('platform', '?')} ({mach.get('cores', '?')} "
                        f"cores, Python {mach.get('python', '?')}). Seeds: "
                        f"{', '.join(map(str, manifest['seeds']))}. Teacher backbone: "
                        f"`{cfg['teacher']['backbone']['name']}`."))
    B.append(Block("p", "Aggregation: test episodes of all seeds pooled; EPnL, MAP, max "
                        "drawdown are mean ± std over those episodes; PnLMAP (EPnL/MAP), RPT "
                        "(PnL per fill) and Sharpe (mean/std of episode PnL, not annualised) "
                        "are computed per seed, then mean ± std over seeds; latency is the "
                        "decision time each policy was charged in the replay (its orders reach "
                        "the exchange that much later). PnL in the quote currency, fees and the "
                        "closing trade included. The oracle (perfect-forecast ladder) quotes "
                        "the true future through the ladder: a check, not a competitor. "
                        "Policies whose fit does not use the seed (fixed spread, "
                        "Avellaneda-Stoikov, the oracle, ridge, LightGBM) are replayed once "
                        "per market; their episodes count once. Comparisons are paired: two "
                        "policies' net PnL on the same test episodes, the mean difference with "
                        "a 95 % block-bootstrap interval (seeds as strata) and a Wilcoxon "
                        "p-value; a policy is called better or worse only where that interval "
                        "excludes 0 and the Wilcoxon test rejects at the 5 % level."))
    for s in manifest.get("skipped", []):
        B.append(Block("p", f"Left out: **{s['policy']}**, {s['reason']}."))
    B += answer_blocks(manifest, tables)  # the first screen: what the run found
    B.append(Block("h2", "Datasets"))
    B.append(Block("table", "", ["dataset", "sessions", "hours", "grid", "train / val / test "
                                 "windows", "test regimes (low/mid/high)", "test episodes",
                                 "episode", "volatile episodes"],
                   [[d["dataset"], str(d["sessions"]), f"{d['hours']:.2f}", f"{d['dt_ms']} ms",
                     " / ".join(str(d["split_counts"][s]) for s in SPLITS),
                     "/".join(map(str, d["regime_counts"]["test"])),
                     str(len(d["episodes"]["start_ns"])), _episode_s(manifest, d),
                     str(len(d["episodes"]["volatile"]))]
                    for d in manifest["datasets"]]))
    if len(manifest["datasets"]) > 1:
        B += _overview_blocks(run_dir, manifest, tables)
    for d in manifest["datasets"]:
        B += _dataset_blocks(run_dir, manifest, d, tables[d["slug"]], fig_dir, rep)
    gaps = missing_cells(tables)
    if gaps:
        B.append(Block("h2", "Missing results"))
        B.append(Block("p", "; ".join(gaps)))
    stages = manifest.get("stages", {})
    if stages:
        B.append(Block("h2", "Stages"))
        total = sum(v["seconds"] for v in stages)
        B.append(Block("p", f"{len(stages)} stages, {total / 60:.1f} min of stage time in all "
                            f"({sum(v['cached'] for v in stages)} of them done by an earlier "
                            f"invocation of the run and skipped by this one)."))
        B.append(Block("table", "seconds each stage took when it ran (cached: run by an "
                                "earlier invocation, skipped by this one)",
                       ["stage", "seconds", "cached"],
                       [[v["stage"], f"{v['seconds']:.1f}", "yes" if v["cached"] else ""]
                        for v in stages]))
    return B


def epnl_ranks(tables: dict, slugs: list[str]) -> dict[str, list[int]]:
    """Per market, each policy's rank by mean test EPnL (1 = best) among ``slugs`` present
    there; the oracle is a check of the ladder, not a competitor, so it takes no rank."""
    ranks: dict[str, list[int]] = {s: [] for s in slugs}
    for t in tables.values():
        main = {r["slug"]: (r.get("EPnL") or {}).get("mean") for r in t["main"]
                if not r.get("missing")}
        scored = sorted((-m, s) for s, m in main.items()
                        if s in ranks and s != "oracle" and m is not None)
        for i, (_, s) in enumerate(scored):
            ranks[s].append(i + 1)
    return ranks


def _across(tables: dict, ds: list[dict], key: str, metric: str = "EPnL",
            slugs: list[str] | None = None, paired: str | None = None
            ) -> tuple[list[str], list[list[str]]]:
    """Rows of table ``key`` (its policies, in the first market's order) with ``metric`` in one
    column per market; with ``paired`` (a key of the market's paired comparisons), each cell
    marked "(better)" / "(worse)" where its paired comparison with CMM's row says so."""
    order: list[str] = []
    labels: dict[str, str] = {}
    for d in ds:
        for r in tables[d["slug"]].get(key, []):
            if r["slug"] not in labels:
                order.append(r["slug"])
                labels[r["slug"]] = r["label"]
    rows = []
    for s in (slugs if slugs is not None else order):
        if s not in labels:
            continue
        row = [labels[s]]
        for d in ds:
            r = next((r for r in tables[d["slug"]].get(key, []) if r["slug"] == s), None)
            cell = "(not run)" if r is None or r.get("missing") else fmt(r.get(metric))
            if paired and r is not None and not r.get("missing"):
                v = _vs_cmm(tables[d["slug"]].get("paired", {}).get(paired, []), s)
                if v in ("better", "worse"):
                    cell += f" ({v})"
            row.append(cell)
        rows.append(row)
    return ["policy"] + [d["dataset"] for d in ds], rows


MARKS = ("(better) / (worse): against CMM's row (for the teacher control: against the "
         "pretrained teacher) by the paired per-episode difference, whose 95 % interval "
         "excludes 0 and whose Wilcoxon p is below 0.05; unmarked: not distinguishable")


def _overview_blocks(run_dir: Path, manifest: dict, tables: dict) -> list[Block]:
    """Every market side by side: EPnL per market and mean rank, CMM against its teacher, then
    the ablations, mixture controls, backbone control, robustness and probe in one table each."""
    ds = manifest["datasets"]
    first = tables[ds[0]["slug"]]["main"]
    slugs = [r["slug"] for r in first]
    ranks = epnl_ranks({d["slug"]: tables[d["slug"]] for d in ds}, slugs)
    headers, rows = _across(tables, ds, "main", slugs=slugs, paired="main")
    for row, s in zip(rows, slugs):
        row.append("–" if not ranks[s] else f"{np.mean(ranks[s]):.2g}")
    n_rank = sum(1 for s in slugs if s != "oracle")
    B = [Block("h2", "Overview across markets"),
         Block("table", f"test EPnL per market (quote currency per episode, mean ± std over "
                        f"episodes and seeds) and the mean rank by EPnL over the markets (1 = "
                        f"best of {n_rank}; the oracle is a check and takes no rank); "
                        f"{MARKS}", headers + ["mean rank"], rows)]

    B += _teacher_pair_blocks(ds, tables)
    for key, title, caption in (
            ("ablations", "Ablations", "test EPnL of CMM and of CMM without one decomposition"),
            ("gates", "Mixture controls", "test EPnL of the same experts under each gate"),
            ("backbone", "Pretrained vs random-init backbone",
             "test EPnL of the teacher on a pretrained and on a randomly initialised backbone")):
        if any(tables[d["slug"]].get(key) for d in ds):
            headers, rows = _across(tables, ds, key, paired=key)
            B.append(Block("h3", title))
            B.append(Block("table", f"{caption}; {MARKS}", headers, rows))
    if any(tables[d["slug"]].get("robustness") for d in ds):
        for metric, title, caption in (
                ("EPnL_volatile", "Robustness: the most volatile episodes",
                 "test EPnL over the most volatile third of test episodes"),
                ("EPnL_crash", "Robustness: flash crash",
                 "test EPnL with a synthetic flash crash in every test episode")):
            headers, rows = _across(tables, ds, "robustness", metric,
                                    paired="volatile" if metric == "EPnL_volatile" else "crash")
            if any(c != "–" for row in rows for c in row[1:]):
                B.append(Block("h3", title))
                B.append(Block("table", f"{caption}; {MARKS}", headers, rows))
    probe_rows = [[d["dataset"]] + row for d in ds
                  for row, _ in _probe_rows(run_dir, manifest, d)]
    if probe_rows:
        B.append(Block("h3", "Fluorescent probe"))
        B.append(Block("table", "task → layer group of the teacher per market and seed; the "
                                "paper found shallow → mid-price, middle → spread, deep → volume",
                       ["market", "seed", "assignment", "paper's pattern"], probe_rows))
    return B


def _pair(t: dict, a: str, b: str, key: str = "main") -> dict | None:
    """The paired comparison ``a - b`` of a market's tables (``key``: which list), or None."""
    return next((p for p in (t.get("paired") or {}).get(key, [])
                 if p["a"] == a and p["b"] == b), None)


def _speedup(c: dict, te: dict) -> float | None:
    """Teacher latency / CMM latency of their main-table rows (None: either unknown or 0)."""
    lc, lt = (c.get("latency_ms") or {}).get("mean"), (te.get("latency_ms") or {}).get("mean")
    return lt / lc if lc and lt else None


def _times(ratio: float | None) -> str:
    if ratio is None:
        return "–"
    return f"{ratio:,.0f}x" if ratio >= 10 else f"{ratio:.2g}x"


def _teacher_pair_blocks(ds: list[dict], tables: dict) -> list[Block]:
    """The overview's "CMM against its teacher": EPnL, PnLMAP, the paired Δ with its interval
    and Wilcoxon p, the verdict, and both latencies, one row per market with both rows."""
    rows = []
    for d in ds:
        t = tables[d["slug"]]
        main = {r["slug"]: r for r in t["main"] if not r.get("missing")}
        c, te = main.get("cmm"), main.get("teacher")
        if not c or not te:
            continue
        pd_ = _pair(t, "cmm", "teacher")
        rows.append([d["dataset"], fmt(c["EPnL"]), fmt(te["EPnL"]), fmt(c["PnLMAP"]),
                     fmt(te["PnLMAP"]), _delta(pd_), "–" if pd_ is None else _p_value(pd_),
                     "–" if pd_ is None else _num(pd_["min_detectable"], 3),
                     "–" if pd_ is None else pd_["verdict"],
                     fmt(c["latency_ms"], 3), fmt(te["latency_ms"], 3),
                     _times(_speedup(c, te))])
    if not rows:
        return []
    return [Block("h3", "CMM against its teacher"),
            Block("table", "the student mixture and the LLM it was distilled from, each "
                           "quoting with its own decision latency; Δ: CMM − teacher per "
                           "episode, paired, with its 95 % interval; better / worse only where "
                           "the interval excludes 0 and the Wilcoxon p is below 0.05 (an "
                           "interval off 0 with a larger p stays not distinguishable)",
                  ["market", "CMM EPnL", "teacher EPnL", "CMM PnLMAP", "teacher PnLMAP",
                   "Δ EPnL [95 %]", "Wilcoxon p", "min. detectable Δ",
                   "CMM against the teacher", "CMM latency (ms)", "teacher latency (ms)",
                   "speed-up"], rows)]


def _metric_row(r: dict, extra: list[str] = ()) -> list[str]:
    if r.get("missing"):
        return [r["label"]] + ["(not run)"] * (6 + len(extra))
    cells = [r["label"], fmt(r["EPnL"]), fmt(r["MAP"]), fmt(r["PnLMAP"]), fmt(r["RPT"]),
             fmt(r["Sharpe"], 3), fmt(r["latency_ms"], 3)]
    return cells + [fmt(r.get(k)) for k in extra]


METRIC_HEADERS = ["policy", "EPnL", "MAP (base)", "PnLMAP", "RPT", "Sharpe", "latency (ms)"]
PAIRED_CAPTIONS = {
    "main": "CMM against each policy of the main table: per-episode EPnL of CMM minus the "
            "policy's",
    "ablations": "each ablation against CMM: its per-episode EPnL minus CMM's",
    "gates": "each gate control against the Hájek-MoE gate: its per-episode EPnL minus CMM's",
    "backbone": "the random-init control against the pretrained backbone: per-episode EPnL "
                "of the control minus the pretrained one's",
    "volatile": "CMM against each policy over the volatile episodes only",
    "crash": "CMM against each policy through the flash crash",
}


def _dataset_blocks(run_dir: Path, manifest: dict, d: dict, t: dict, fig_dir: Path,
                    rep: dict) -> list[Block]:
    slug = d["slug"]
    n_ep = len(d["episodes"]["start_ns"])
    paired = t.get("paired", {})
    B = [Block("h2", f"{d['dataset']}")]
    B.append(Block("h3", "Main table"))
    gross = any(r.get("gross_EPnL") for r in t["main"] if not r.get("missing"))
    shared = [r["label"] for r in t["main"] if r.get("seeded") is False]
    tier = t.get("fee_tier", "base")
    cap = f"{n_ep} test episodes per seed; net PnL at the {tier} fee tier"
    if shared and len(manifest["seeds"]) > 1:
        cap += (f"; replayed once, their episodes counted once: {', '.join(shared)} (their fit "
                "does not use the seed)")
    if gross:
        cap += "; gross EPnL: before fees (maker fees and the closing taker fee)"
    B.append(Block("table", cap, METRIC_HEADERS + ["fills"] + (["gross EPnL"] if gross else []),
                   [_metric_row(r, ["fills"] + (["gross_EPnL"] if gross else []))
                    for r in t["main"]]))
    summary = _summary(t)
    if summary:
        B.append(Block("p", summary))
    B += _paired_blocks(paired.get("main", []), PAIRED_CAPTIONS["main"])
    if t.get("main_base"):
        B.append(Block("h3", "Main table at the base fee tier"))
        B.append(Block("table", f"the same replays, net PnL recomputed at the base tier from "
                                f"their fills (fills do not depend on fees); the main table "
                                f"above is at the {tier} tier",
                       METRIC_HEADERS + ["fills"],
                       [_metric_row(r, ["fills"]) for r in t["main_base"]]))
        B += _paired_blocks(paired.get("main_base", []), PAIRED_CAPTIONS["main"]
                            + ", at the base tier")
    r2 = [f"R² {k}" for k in TASKS]
    for key, title, caption in (
            ("ablations", "Ablations", "CMM against CMM without one of its decompositions; "
                                       "R²: test-split prediction quality"),
            ("gates", "Mixture controls", "the same experts under each gate"),
            ("backbone", "Pretrained vs random-init backbone",
             "the teacher (and what is distilled from it) with a pretrained and a randomly "
             "initialised backbone of the same shape")):
        if t.get(key):
            B.append(Block("h3", title))
            rows = []
            for r in t[key]:
                row = _metric_row(r)
                row += [fmt(r.get(f"r2_{k}"), 3) for k in TASKS] if not r.get("missing") \
                    else ["–"] * 3
                rows.append(row)
            B.append(Block("table", caption, METRIC_HEADERS + r2, rows))
            B += _paired_blocks(paired.get(key, []), PAIRED_CAPTIONS[key])
    if t.get("robustness"):
        B.append(Block("h3", "Robustness"))
        crash = d.get("crash")
        cap = (f"volatile: the {len(d['episodes']['volatile'])} most volatile of {n_ep} test "
               "episodes (realised volatility of the mid)")
        headers = ["policy", "EPnL (all)", "EPnL (volatile)", "PnLMAP (volatile)"]
        if crash:
            s = crash["settings"]
            cap += (f"; flash crash: in every test episode, from {s['start_fraction']:.0%} of it, "
                    f"the whole book and every trade shifted down {s['drop_pct']:g}% over "
                    f"{s['fall_s']:g} s, held {s['hold_s']:g} s, recovered over "
                    f"{s['recover_s']:g} s")
            headers += ["EPnL (crash)", "PnLMAP (crash)", "MAP (crash)", "max DD (crash)"]
        rows = []
        for r in t["robustness"]:
            row = [r["label"], fmt(r["EPnL"]), fmt(r["EPnL_volatile"]), fmt(r["PnLMAP_volatile"])]
            if crash:
                row += [fmt(r.get("EPnL_crash")), fmt(r.get("PnLMAP_crash")),
                        fmt(r.get("MAP_crash")), fmt(r.get("max_drawdown_crash"))]
            rows.append(row)
        B.append(Block("table", cap, headers, rows))
        B += _paired_blocks(paired.get("volatile", []), PAIRED_CAPTIONS["volatile"])
        B += _paired_blocks(paired.get("crash", []), PAIRED_CAPTIONS["crash"])
    B += _latency_price_blocks(manifest, d, t)
    B.append(Block("h3", "Decision latency"))
    B.append(Block("table", "charged per decision in the replay; teacher: all-threads median; "
                            "mixtures: one-thread median of Quoter.decide",
                   ["policy", "latency (ms)", "speed-up vs teacher"],
                   [[r["label"], fmt(r["latency_ms"], 3),
                     "–" if r["speedup_vs_teacher"] is None else f"{r['speedup_vs_teacher']:.3g}x"]
                    for r in t["latency"]]))
    B.append(Block("img", "Decision latency", path=FIG.latency_bars(
        t["latency"], fig_dir / f"{slug}-latency.png", f"{d['dataset']}: decision latency",
        rep["dpi"])))
    B += _prediction_blocks(t.get("prediction", []))
    if t.get("teacher_seeds_note"):
        B.append(Block("p", t["teacher_seeds_note"]))
    B += _learning_blocks(run_dir, manifest, d, fig_dir, rep)
    B += _rl_gap_blocks(t.get("rl_sim_gap", []))
    B += _probe_blocks(run_dir, manifest, d, fig_dir)
    B += _figure_blocks(run_dir, manifest, d, t, fig_dir, rep)
    return B


def _latency_price_blocks(manifest: dict, d: dict, t: dict) -> list[Block]:
    """The price of latency: the teacher at zero and at its measured latency, CMM at its own
    and at the teacher's; the decisions each skipped while busy; the three differences."""
    lp = t.get("latency_price") or {}
    if not lp.get("rows"):
        return []
    bt = manifest["config"].get("backtest", {})
    step = d["dt_ms"] * int(bt.get("decision_every", 1))
    busy = bt.get("skip_while_busy", True)
    skipped = "; ".join(f"{r['label']} {r['skipped']:,} of {r['decisions']:,}"
                        for r in lp["rows"])
    cap = (f"decisions every {step:g} ms (the data grid"
           f"{'' if int(bt.get('decision_every', 1)) == 1 else ', every n-th step'}); "
           + ("a policy still busy with its last decision skips the next ones "
              "(backtest.skip_while_busy on); skipped while busy: " + skipped if busy else
              "backtest.skip_while_busy off: every decision is acted on, late"))
    rows = [[r["label"], fmt(r["latency_ms"], 3), fmt(r["EPnL"]), fmt(r["PnLMAP"]),
             f"{r['skipped']:,} of {r['decisions']:,}"] for r in lp["rows"]]
    B = [Block("h3", "Price of latency"),
         Block("table", cap, ["policy", "latency (ms)", "EPnL", "PnLMAP",
                              "decisions skipped (busy)"], rows)]
    pairs = lp.get("paired", [])
    if pairs:
        B.append(Block("table", "what each difference reads; Δ: per-episode EPnL of a minus b",
                       ["reads", *PAIRED_HEADERS],
                       [[p["meaning"], *row] for p, row in zip(pairs, _paired_rows(pairs))]))
        B.append(Block("p", paired_sentence(pairs)))
    return B


def _prediction_blocks(rows: list[dict]) -> list[Block]:
    """The prediction table and which model predicts best per target (numbers only)."""
    if not rows:
        return []
    headers = ["model"] + [f"R² {k}" for k in TASKS] + ["mid up/flat/down accuracy",
                                                         "mid up/flat/down macro-F1"]
    body = [[r["label"]] + [fmt(r.get(f"r2_{k}"), 3) for k in TASKS]
            + [fmt(r.get("direction3_acc"), 3), fmt(r.get("direction3_f1"), 3)] for r in rows]

    def best(key):
        """(best mean, the rows that share it, in table order) or None."""
        have = [(r[key]["mean"], r["label"]) for r in rows
                if (r.get(key) or {}).get("mean") is not None]
        if not have:
            return None
        top = max(v for v, _ in have)
        tied = [name for v, name in have if abs(v - top) <= 1e-12 * max(1.0, abs(top))]
        return top, " and ".join(tied) + (" (tied)" if len(tied) > 1 else "")

    parts = []
    for k in TASKS:
        b = best(f"r2_{k}")
        parts.append(f"{k}: {b[1]} (R² {_num(b[0], 3)})" if b else
                     f"{k}: no R² (the target is constant on the test split)")
    f1 = best("direction3_f1")
    text = "Highest test R² per target: " + "; ".join(parts)
    if f1:
        text += f"; best up/flat/down macro-F1 of the mid: {f1[1]} ({_num(f1[0], 3)})"
    text += _below_train_mean(rows)
    B = [Block("h3", "Prediction quality (test split)"),
         Block("table", "R² per target on the test split, and the mid's direction in three "
                        "classes (up / flat / down beyond a quarter tick), mean ± std over "
                        "seeds; teacher and yardstick rows from the teacher's evaluation, CMM "
                        "from its backtest, the distillation baselines from the mixture stage "
                        "(R² only)", headers, body)]
    if text:
        B.append(Block("p", text + " (from the numbers only; these are not tested for "
                                   "significance)."))
    verdict = teacher_verdict(rows)
    if verdict:
        B.append(Block("p", verdict))
    return B


def _r2(row: dict | None, task: str) -> float | None:
    return None if row is None else (row.get(f"r2_{task}") or {}).get("mean")


R2_TIE = 5e-4


def _against_yardsticks(tv: float, yard: list[tuple[str, float]]) -> str:
    """The teacher's R² ``tv`` against each yardstick ``(name, R²)``: "above ridge (0.1) and
    LightGBM (0.2)", "above ridge (0.1) but below LightGBM (0.4)", ..."""
    groups: dict[str, list[str]] = {}
    for name, v in yard:
        # within 5e-4 of R^2 is a tie: the table shows 3 digits, and "0.771 below 0.771" says
        # nothing a reader can use
        rel = "above" if tv > v + R2_TIE else "below" if tv < v - R2_TIE else "level with"
        groups.setdefault(rel, []).append(f"{name} ({_num(v, 3)})")
    parts = [f"{rel} {' and '.join(names)}" for rel, names in groups.items()]
    return " but ".join(parts)


def teacher_verdict(rows: list[dict]) -> str:
    """One sentence: per target, the model with the best test R² and where the teacher LLM
    stands against the two fitted yardsticks, ridge and LightGBM ("" without a teacher row)."""
    by = {r.get("model"): r for r in rows}
    te = by.get("teacher")
    if te is None:
        return ""
    parts = []
    for k in TASKS:
        have = [(_r2(r, k), r["label"]) for r in rows if _r2(r, k) is not None]
        tv = _r2(te, k)
        if not have or tv is None:
            parts.append(f"on {k} no R² for the teacher LLM (the target is constant on the "
                         "test split, or the row is missing)")
            continue
        top = max(v for v, _ in have)
        yard = [(name, _r2(by.get(m), k)) for m, name in (("ridge", "ridge"),
                                                          ("lightgbm", "LightGBM"))]
        yard = [(name, v) for name, v in yard if v is not None]
        against = _against_yardsticks(tv, yard)
        if tv >= top - 1e-12 * max(1.0, abs(top)):
            others = [name for v, name in have if name != te["label"]
                      and abs(v - top) <= 1e-12 * max(1.0, abs(top))]
            tie = f", tied with {' and '.join(others)}" if others else ""
            parts.append(f"on {k} the teacher LLM is best ({_num(tv, 3)}{tie})"
                         + (f", {against}" if against else ""))
        else:
            best = next(name for v, name in have if v == top)
            parts.append(f"on {k} {best} is best ({_num(top, 3)}) and the teacher LLM "
                         f"({_num(tv, 3)}) is {against or 'below it'}")
    return "Test R² " + "; ".join(parts) + "."


def _below_train_mean(rows: list[dict]) -> str:
    """A clause naming, per target, the models whose test R² is below the training mean's: they
    predict worse than a constant (the split is chronological, so the mean can drift)."""
    base = next((r for r in rows if r.get("model") == "train-mean"), None)
    if base is None:
        return ""
    parts = []
    for k in TASKS:
        ref = (base.get(f"r2_{k}") or {}).get("mean")
        if ref is None:
            continue
        under = [r["label"] for r in rows if r is not base
                 and (r.get(f"r2_{k}") or {}).get("mean") is not None
                 and r[f"r2_{k}"]["mean"] < ref]
        if under:
            parts.append(f"{k}: {', '.join(under)}")
    if not parts:
        return "; every model beats the train mean on every target"
    return "; below the train mean's R² (worse than a constant): " + "; ".join(parts)


def _rl_gap_blocks(rows: list[dict]) -> list[Block]:
    """RL: the same episodes in the training simulator and in hftbacktest (when recorded)."""
    if not rows:
        return []
    body = []
    for r in rows:
        p = r.get("paired") or {}
        have = all(p.get(k) is not None for k in ("mean", "low", "high"))
        body.append([r["label"], str(r["seed"]), str(r.get("episodes", "–")),
                     "–" if r.get("sim_pnl_mean") is None else _num(r["sim_pnl_mean"]),
                     "–" if r.get("hbt_pnl_mean") is None else _num(r["hbt_pnl_mean"]),
                     f"{_num(p['mean'], 3)} {_interval(p)}" if have else "–",
                     "–" if p.get("min_detectable") is None else _num(p["min_detectable"], 3),
                     r.get("reading") or p.get("verdict", "–")])
    splits = sorted({r["split"] for r in rows if r.get("split")})
    return [Block("h3", "RL: training simulator against hftbacktest"),
            Block("table", f"the same {' and '.join(splits) or 'held-out'} episodes replayed "
                           "in cmm's RL training simulator and in hftbacktest (the RL stage's "
                           "sim_gap.json); Δ: simulator − hftbacktest per episode, paired, "
                           "with its 95 % interval",
                  ["policy", "seed", "episodes", "sim EPnL", "hftbacktest EPnL",
                   "Δ [95 %]", "min. detectable Δ", "verdict"], body)]


def _summary(t: dict) -> str:
    """CMM against the teacher and against the best competitor, in words (numbers only; the
    verdicts from the paired comparisons)."""
    main = {r["slug"]: r for r in t["main"] if not r.get("missing")}
    if "cmm" not in main:
        return ""

    def mean(r, k):
        return (r.get(k) or {}).get("mean")

    c = main["cmm"]
    parts = []
    te = main.get("teacher")
    if te and mean(c, "EPnL") is not None and mean(te, "EPnL") is not None:
        pd_ = _pair(t, "cmm", "teacher")
        text = f"CMM's EPnL {fmt(c['EPnL'])}, the teacher's {fmt(te['EPnL'])}"
        if pd_ is not None:
            text += f": {verdict_clause({**pd_, 'a_label': 'CMM', 'b_label': 'the teacher'})}"
        parts.append(text)
        if mean(c, "PnLMAP") is not None and mean(te, "PnLMAP") is not None:
            parts.append(f"PnLMAP {fmt(c['PnLMAP'])} against {fmt(te['PnLMAP'])}")
        lc, lt = mean(c, "latency_ms"), mean(te, "latency_ms")
        if lc and lt:
            parts.append(f"at {_times(lt / lc)} lower decision latency ({_num(lc, 3)} ms against "
                         f"{_num(lt, 3)} ms)")
    rivals = [r for s, r in main.items() if s not in ("cmm", "oracle")
              and mean(r, "EPnL") is not None]
    if rivals and mean(c, "EPnL") is not None:
        rank = 1 + sum(mean(r, "EPnL") > mean(c, "EPnL") for r in rivals)
        best = max(rivals, key=lambda r: mean(r, "EPnL"))
        parts.append(f"CMM ranks {rank} of {len(rivals) + 1} by mean EPnL (oracle excluded; "
                     f"best other: {best['label']}, {fmt(best['EPnL'])})")
    return "; ".join(parts) + "." if parts else ""


def _probe_rows(run_dir: Path, manifest: dict, d: dict) -> list[tuple[list[str], Path]]:
    """Per seed with a probe: [seed, assignment, whether the paper's pattern holds], folder."""
    layout = RunLayout.of_manifest(run_dir, manifest)
    out = []
    for seed in manifest["seeds"]:
        p = layout.probe(d["slug"], seed)
        if not (p / "probe.json").is_file():
            continue
        probe = json.loads((p / "probe.json").read_text())
        pattern = probe.get("paper_pattern", {})
        verdict = ("n/a" if not pattern.get("applicable") else
                   "holds" if pattern.get("holds") else "does not hold")
        out.append(([str(seed), assignment_cell(probe["all"]), verdict], p))
    return out


def assignment_cell(result: dict) -> str:
    """A probe's task → layer group assignment, with its bootstrap stability beside it where
    the probe recorded one (share of resamples giving the whole assignment, and per task the
    same group)."""
    text = ", ".join(f"{k} → {v}" for k, v in result["assignment"].items())
    if result.get("stability") is None:
        return text
    per_task = result.get("task_stability") or {}
    tasks = "".join(f", {k} {v:.0%}" for k, v in per_task.items())
    return f"{text} (bootstrap stability: whole assignment {result['stability']:.0%}{tasks})"


def _probe_blocks(run_dir: Path, manifest: dict, d: dict, fig_dir: Path) -> list[Block]:
    B = []
    found = _probe_rows(run_dir, manifest, d)
    rows = [row for row, _ in found]
    first = found[0][1] if found else None
    if rows:
        B.append(Block("h3", "Fluorescent probe"))
        B.append(Block("table", "task → layer group of the teacher; the paper found shallow → "
                                "mid-price, middle → spread, deep → volume",
                       ["seed", "assignment", "paper's pattern"], rows))
        if (first / "probe.png").is_file():
            dst = fig_dir / f"{d['slug']}-probe.png"
            shutil.copyfile(first / "probe.png", dst)
            B.append(Block("img", "Probe specialisation map S[l, k] (first seed)", path=dst))
    return B


# ----------------------------------------------------------------- teacher learning curves

RANDOM_TEACHER = "teacher LLM (random-init backbone)"
# (the teacher's name in the layout, the report's label); the random-init teacher is
# teacher-random or, when CMM is distilled from it too, control/teacher
TEACHER_FITS = tuple(zip(TEACHER_NAMES, ("teacher LLM", RANDOM_TEACHER, RANDOM_TEACHER),
                         strict=True))
STOPS = {"early_stopping": "early stopping (validation loss no longer improving)",
         "epochs": "the end of its planned epochs", "max_steps": "its step limit (max_steps)"}


def _fit_of(folder: Path) -> dict | None:
    """The ``fit`` of a teacher folder's ``teacher.json``, with the teacher's ``settings`` and
    ``backbone`` beside it (None: no fitted teacher, or no recorded checks)."""
    from cmm.teacher.store import META_FILE

    path = folder / META_FILE
    if not path.is_file():
        return None
    meta = json.loads(path.read_text())
    fit = meta.get("fit") or {}
    if not fit.get("history"):
        return None
    return {**fit, "settings": meta.get("settings") or {}, "backbone": meta.get("backbone") or {}}


def what_trains(fit: dict) -> str:
    """The fitted variant in words: backbone and depth, what trains, level skip, precision."""
    s, bb = fit.get("settings") or {}, fit.get("backbone") or {}
    if not s:
        return ""
    depth = s.get("depth") or 0
    blocks = bb.get("num_blocks")
    part = {"none": "frozen backbone (patch projection and heads train)",
            "layernorm": "layer norms train", "lora": "LoRA adapters train",
            "layernorm+lora": "layer norms and LoRA adapters train"}.get(s.get("finetune"),
                                                                         s.get("finetune"))
    used = f"its first {depth} blocks" if depth else f"all {blocks} blocks" if blocks else "all"
    skip = ", with the level skip (a ridge on the window's level, held fixed)" \
        if s.get("level_skip") else ""
    return (f"{bb.get('name', 'backbone')} ({bb.get('init', '?')}), {used}, {part}{skip}; "
            f"{fit.get('precision', 'fp32')} on {fit.get('device', 'cpu')}")


def teacher_fit_groups(run_dir: Path, d_slug: str, manifest: dict
                       ) -> list[tuple[str, dict[str, dict]]]:
    """The dataset's teachers, located by :mod:`cmm.pipeline.layout` (one folder per run seed,
    or one per shared teacher seed with ``teacher.seeds``), in run-seed order: (the folder's
    name in words, {label: fit}) for the teachers found in it with a recorded fit."""
    layout = RunLayout.of_manifest(run_dir, manifest)
    shared = teacher_seed_list(layout.config) is not None
    out, seen = [], set()
    for seed in manifest["seeds"]:
        llm = layout.teacher(d_slug, seed)  # the folder of the LLM names the group
        if llm in seen:
            continue
        seen.add(llm)
        fits: dict[str, dict] = {}
        for name, label in TEACHER_FITS:
            fit = None if label in fits else _fit_of(layout.teacher(d_slug, seed, name))
            if fit:
                fits[label] = fit
        if fits:
            who = (f"teacher seed {teacher_seed(layout.config, seed)}" if shared
                   else f"seed {seed}")
            out.append((who, fits))
    return out


def learning_sentence(label: str, fit: dict) -> str:
    """One sentence on one teacher fit: steps taken, the best check, what stopped it, and
    whether validation loss was still falling at the end (the last check within 1 % of the
    best and the best among the last three checks) or had plateaued."""
    checks = [h for h in fit.get("history") or [] if h.get("val_loss") is not None]
    if not checks:
        return f"{label}: no validation checks recorded."
    best = fit.get("best") or min(checks, key=lambda h: h["val_loss"])
    last, b = checks[-1], best["val_loss"]
    steps = int(fit.get("steps") or last["step"])
    earlier = [h["val_loss"] for h in checks[:-3]]
    falling = (last["val_loss"] - b <= 0.01 * abs(b)
               and best["step"] in [h["step"] for h in checks[-3:]]
               and (not earlier or b < min(earlier) - 1e-3 * abs(b)))  # a flat curve is flat
    trend = "was still improving when it stopped" if falling else "had plateaued"
    epochs = last.get("epoch")
    over = f" over {epochs:.3g} epochs" if isinstance(epochs, (int, float)) else ""
    stop = fit.get("stopped_by", "?")
    if stop == "time_budget":
        planned = fit.get("planned_steps")
        of = f" at {steps:,} of {int(planned):,} planned steps" if planned else ""
        why = ("the time budget: the safety cap (teacher.max_train_seconds) bound and cut the "
               f"fit short{of}")
    else:
        why = STOPS.get(stop, str(stop))
    trains = what_trains(fit)
    label = f"{label} ({trains})" if trains else label
    return (f"{label}: {steps:,} optimizer steps{over}, {len(checks)} validation checks, the "
            f"best (the checkpoint kept) at step {best['step']:,} with validation loss "
            f"{_num(b, 3)} (last check {_num(last['val_loss'], 3)}); stopped by {why}; its "
            f"validation loss {trend}.")


def _learning_blocks(run_dir: Path, manifest: dict, d: dict, fig_dir: Path, rep: dict
                     ) -> list[Block]:
    """Per folder of teachers found (each seed's, or each shared teacher seed's), their train
    and validation loss against step in one figure, and a sentence per teacher."""
    groups = teacher_fit_groups(run_dir, d["slug"], manifest)
    if not groups:
        return []
    B = [Block("h3", "Teacher learning curves")]
    for who, fits in groups:
        name = who.replace(" ", "")
        path = FIG.learning_curves(fits, fig_dir / f"{d['slug']}-learning-{name}.png",
                                   f"{d['dataset']}: teacher learning curves ({who})",
                                   rep.get("dpi", 90))
        B.append(Block("img", f"Teacher train and validation loss against optimizer step, "
                              f"{who} (star: the best checkpoint, the one kept)", path=path))
        B.append(Block("p", " ".join(learning_sentence(f"{label[0].upper()}{label[1:]}, {who}",
                                                       fit) for label, fit in fits.items())))
    return B


def _figure_blocks(run_dir: Path, manifest: dict, d: dict, t: dict, fig_dir: Path,
                   rep: dict) -> list[Block]:
    B = [Block("h3", "Figures")]
    slug = d["slug"]
    seed = manifest["seeds"][0]
    layout = RunLayout.of_manifest(run_dir, manifest)
    unit = "base" if d["instrument"].get("inverse") else "quote"
    want = rep.get("curve_policies") or manifest["tables"]["main"]
    curves = {}
    for p in manifest["policies"]:
        folder = layout.policy_replay(slug, p, seed)
        if p["slug"] in want and (folder / "stage.json").is_file():
            curves[p["label"]] = (read_parquet(folder / "records.parquet"),
                                  pl.read_csv(folder / "episodes.csv"))
    if curves:
        B.append(Block("img", "Equity and inventory over the test episodes", path=
                       FIG.equity_inventory(curves, fig_dir / f"{slug}-equity.png",
                                            f"{d['dataset']}: equity and inventory per "
                                            f"policy (seed {seed})", unit, rep["dpi"])))
    eps = d["episodes"]
    if rep.get("sample_episode") == "first" or not eps["volatile"]:
        sample = 0
    else:
        vol = eps["volatility"]
        sample = max(eps["volatile"], key=lambda e: vol[e])
    cmm = layout.replay(slug, "cmm", seed)
    if (cmm / "stage.json").is_file():
        B.append(Block("img", f"CMM quotes over the mid, test episode {sample}", path=
                       FIG.quotes_over_mid(read_parquet(cmm / "records.parquet"),
                                           read_parquet(cmm / "fills.parquet"), sample,
                                           fig_dir / f"{slug}-quotes.png",
                                           f"{d['dataset']}: CMM quotes, test episode {sample} "
                                           f"(the most volatile)" if rep.get(
                                               "sample_episode") != "first" else
                                           f"{d['dataset']}: CMM quotes, test episode {sample}",
                                           rep["dpi"])))
    crash_cmm = layout.replay(slug, "cmm", seed, "crash")
    if d.get("crash") and (crash_cmm / "stage.json").is_file():
        c = d["crash"]["crashes"][sample] if sample < len(d["crash"]["crashes"]) else \
            d["crash"]["crashes"][0]
        ep = sample if sample < len(d["crash"]["crashes"]) else 0
        B.append(Block("img", "CMM through a flash crash", path=FIG.quotes_over_mid(
            read_parquet(crash_cmm / "records.parquet"),
            read_parquet(crash_cmm / "fills.parquet"), ep, fig_dir / f"{slug}-crash.png",
            f"{d['dataset']}: CMM quotes through a synthetic flash crash (shaded), episode {ep}",
            rep["dpi"], shade=(c["start_ns"], c["end_ns"]))))
    if (cmm / "weights.npz").is_file():
        B.append(Block("img", "Expert weights over time", path=FIG.expert_weights(
            cmm / "weights.npz", fig_dir / f"{slug}-weights.png",
            f"{d['dataset']}: Hájek-MoE weights per task on the test split, background = "
            "volatility regime", rep["dpi"])))
    return B


# ------------------------------------------------------------------------------- writers


def _md(blocks: list[Block], rel: Path) -> str:
    out = []
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append("#" * int(b.kind[1]) + " " + b.text + "\n")
        elif b.kind == "p":
            out.append(b.text + "\n")
        elif b.kind == "table":
            if b.text:
                out.append(f"*{b.text}*\n")
            out.append("| " + " | ".join(b.headers) + " |")
            out.append("|" + "|".join("---" if i == 0 else "---:"
                                      for i in range(len(b.headers))) + "|")
            out += ["| " + " | ".join(c.replace("|", "\\|") for c in r) + " |"
                    for r in b.rows]
            out.append("")
        elif b.kind == "img":
            out.append(f"![{b.text}]({(rel / b.path.name).as_posix()})\n")
    return "\n".join(out) + "\n"


_CSS = """body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}h1{font-size:1.6em}h2{margin-top:2em;
border-bottom:1px solid #ddd;padding-bottom:.2em}table{border-collapse:collapse;margin:.6em 0 1.4em;
font-size:.86em}th,td{border:1px solid #ddd;padding:.25em .6em}td{text-align:right;
font-variant-numeric:tabular-nums}td:first-child,th:first-child{text-align:left}th{background:#f4f4f4}
caption{caption-side:top;text-align:left;font-style:italic;color:#555;padding-bottom:.3em}
img{max-width:100%;border:1px solid #eee;margin:.4em 0}code{background:#f4f4f4;padding:0 .2em}
figure{margin:1em 0}figcaption{color:#555;font-size:.9em}"""


def _inline_md(text: str) -> str:
    """``**bold**`` and ```code``` of the paragraphs, escaped for HTML."""
    import re

    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def _html(blocks: list[Block], title: str) -> str:
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
           f"</title><style>{_CSS}</style></head><body>"]
    for b in blocks:
        if b.kind in ("h1", "h2", "h3"):
            out.append(f"<{b.kind}>{html.escape(b.text)}</{b.kind}>")
        elif b.kind == "p":
            out.append(f"<p>{_inline_md(b.text)}</p>")
        elif b.kind == "table":
            cap = f"<caption>{html.escape(b.text)}</caption>" if b.text else ""
            head = "".join(f"<th>{html.escape(h)}</th>" for h in b.headers)
            body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>"
                           for r in b.rows)
            out.append(f"<table>{cap}<thead><tr>{head}</tr></thead><tbody>{body}</tbody>"
                       "</table>")
        elif b.kind == "img":
            data = base64.b64encode(b.path.read_bytes()).decode()
            out.append(f"<figure><img alt='{html.escape(b.text)}' "
                       f"src='data:image/png;base64,{data}'><figcaption>"
                       f"{html.escape(b.text)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out)


def build_report(run_dir: str | Path, out_dir: str | Path | None = None) -> dict[str, Path]:
    """Write ``report.md``, ``report.html``, ``tables.json`` and ``figures/`` of the run in
    ``run_dir`` (from its ``manifest.json``) to ``out_dir`` (default ``<run>/report``)."""
    run_dir = Path(run_dir)
    where = RunLayout(run_dir, None).manifest  # only the teachers' folders need the config
    with reading(where):
        manifest = json.loads(where.read_text())
    out_dir = Path(out_dir) if out_dir is not None else RunLayout.of_manifest(
        run_dir, manifest).report
    tables = build_tables(run_dir, manifest)
    fig_dir = out_dir / "figures"
    fig_dir.mkdir(parents=True, exist_ok=True)
    blocks = _doc(run_dir, manifest, tables, fig_dir)
    write_json(out_dir / "tables.json", {"schema_version": 1, "tables": tables,
                                         "missing": missing_cells(tables)})
    with atomic_path(out_dir / "report.md") as tmp:
        tmp.write_text(_md(blocks, Path("figures")))
    with atomic_path(out_dir / "report.html") as tmp:
        tmp.write_text(_html(blocks, manifest["config"]["report"]["title"]))
    return {"md": out_dir / "report.md", "html": out_dir / "report.html",
            "tables": out_dir / "tables.json", "figures": fig_dir}


def markdown_for(run_dir: Path, rel: str) -> str:
    """The report's Markdown with its figure links relative to another folder."""
    text = (RunLayout(run_dir, None).report / "report.md").read_text()
    return text.replace("](figures/", f"]({rel}/figures/")
