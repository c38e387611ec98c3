"""The report's first screen, "The answer": per market, CMM against its teacher, the best
rule-based quoter and the best yardstick, and the price of latency, in one table and one
sentence each."""

from __future__ import annotations

from cmm.report.blocks import Block, delta_text, p_text, times_text
from cmm.report.paired import paired_of, untested_note, verdict_clause

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
        rivals[role] = (row, None if row is None else paired_of(t, "cmm", row["slug"]), ran)
    lp = (t.get("latency_price") or {}).get("paired", [])
    price = [next((p for p in lp if (p["a"], p["b"]) == ab), None) for ab, _ in LATENCY_PRICE]
    return {"teacher": paired_of(t, "cmm", "teacher"), "speedup": speedup(c, te),
            **rivals, "price": price}


def speedup(c: dict, te: dict) -> float | None:
    """Teacher latency / CMM latency of their main-table rows (None: either unknown or 0)."""
    lc, lt = (c.get("latency_ms") or {}).get("mean"), (te.get("latency_ms") or {}).get("mean")
    return lt / lc if lc and lt else None


def _verdict_cell(p: dict | None, with_p: bool = True) -> str:
    """A verdict with the episodes behind it ("not distinguishable" names them already) and,
    ``with_p``, the p of an interval off 0 that the Wilcoxon test does not confirm."""
    if p is None:
        return "–"
    if p["verdict"] in ("better", "worse"):
        return f"{p['verdict']} ({p['n']} episodes)"
    return p["verdict"] + (f" (Wilcoxon p {p_text(p)})" if with_p and untested_note(p) else "")


def _marked(p: dict | None) -> str:
    """A price-of-latency cell: Δ [interval], the episodes, and better / worse where so."""
    if p is None:
        return "–"
    mark = f"{p['verdict']}, " if p["verdict"] in ("better", "worse") else ""
    return f"{delta_text(p)} ({mark}{p['n']} episodes)"


def answer_row(market: str, a: dict) -> list[str]:
    """One market's row of the first-screen table (see :data:`ANSWER_HEADERS`)."""
    pt = a["teacher"]
    # the teacher's p has its own column; the rivals' verdicts carry it where needed
    row = [market, delta_text(pt), "–" if pt is None else p_text(pt),
           _verdict_cell(pt, with_p=False), times_text(a["speedup"])]
    for role in ("rule", "yard"):
        best, pair, _ = a[role]
        row += ["–" if best is None else best["label"], delta_text(pair), _verdict_cell(pair)]
    return row + [_marked(p) for p in a["price"]]


def answer_sentence(market: str, a: dict) -> str:
    """One sentence of one market, from the numbers of its row only: "better" / "worse" only
    where the verdict says so (:func:`verdict_clause`, with the Wilcoxon p); a part whose
    comparison is missing is left out."""
    parts = []
    r = a["speedup"]
    lat = ("" if r is None else f" at {times_text(r)} lower latency" if r >= 1
           else f" at {times_text(1 / r)} higher latency")
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
