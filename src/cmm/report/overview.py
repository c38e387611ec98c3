"""The overview across markets: every market side by side, table by table, with each policy's
mean rank by EPnL and CMM against its teacher."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cmm.report.answer import speedup
from cmm.report.blocks import Block, delta_text, fmt, num, p_text, times_text
from cmm.report.paired import paired_of
from cmm.report.tables import flip
from cmm.report.teacher import probe_rows


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


def _vs_cmm(pairs: list[dict], slug: str) -> str:
    """The verdict of the row ``slug`` against its table's reference: CMM (pairs "CMM − row"
    or "row − CMM"), or the pretrained teacher for the random-init control ("" if none)."""
    for p in pairs:
        if p["b"] == slug and p["a"] == "cmm":
            return flip(p["verdict"])
        if p["a"] == slug and p["b"] in ("cmm", "teacher"):
            return p["verdict"]
    return ""


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


def overview_blocks(run_dir: Path, manifest: dict, tables: dict) -> list[Block]:
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
    probes = [[d["dataset"]] + row for d in ds
              for row, _ in probe_rows(run_dir, manifest, d)]
    if probes:
        B.append(Block("h3", "Fluorescent probe"))
        B.append(Block("table", "task → layer group of the teacher per market and seed; the "
                                "paper found shallow → mid-price, middle → spread, deep → volume",
                       ["market", "seed", "assignment", "paper's pattern"], probes))
    return B


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
        pd_ = paired_of(t, "cmm", "teacher")
        rows.append([d["dataset"], fmt(c["EPnL"]), fmt(te["EPnL"]), fmt(c["PnLMAP"]),
                     fmt(te["PnLMAP"]), delta_text(pd_), "–" if pd_ is None else p_text(pd_),
                     "–" if pd_ is None else num(pd_["min_detectable"], 3),
                     "–" if pd_ is None else pd_["verdict"],
                     fmt(c["latency_ms"], 3), fmt(te["latency_ms"], 3),
                     times_text(speedup(c, te))])
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
