"""Paired comparisons in the report's words: a comparison's verdict in a clause, a table's
comparisons as rows and as one sentence (:func:`cmm.report.tables.compare` makes them)."""

from __future__ import annotations

from cmm.report.blocks import Block, interval, num, p_text


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
    return f"the interval excludes 0 but the Wilcoxon test does not reject (p {p_text(p)})"


def verdict_clause(p: dict, with_p: bool = False) -> str:
    """One comparison in words (``p``: :func:`cmm.report.tables.compare` or
    ``PairedDifference.to_dict()`` with ``a_label``, ``b_label``): "better" / "worse" only where
    the 95 % interval of ``a - b`` excludes 0 and the Wilcoxon test agrees (the verdict of
    :class:`cmm.backtest.stats.PairedDifference`), else "not distinguishable with N episodes",
    with the minimum detectable difference (``with_p``: the Wilcoxon p instead, shorter), and
    the p where the interval excludes 0 all the same (:func:`untested_note`)."""
    a, b = p.get("a_label", "a"), p.get("b_label", "b")
    note = untested_note(p)
    delta = f"Δ {num(p['mean'], 3)} {interval(p)}"
    if with_p and note:
        delta += f"; {note}"
    elif with_p and p.get("p_value") is not None:  # None: every difference is 0
        delta += f", p {p_text(p)}"
    verdict = _verdict(p)
    if with_p and verdict in ("better", "worse"):  # the episode count, as "not distinguishable"
        delta += f", {p['n']} episodes"
    if verdict == "better":
        return f"{a} is better than {b} ({delta})"
    if verdict == "worse":
        return f"{a} is worse than {b} ({delta})"
    if not with_p:
        delta += f"; minimum detectable difference {num(p['min_detectable'], 3)}"
        delta += f"; {note}" if note else ""
    return f"{a} and {b} are not distinguishable with {p['n']} episodes ({delta})"


PAIRED_HEADERS = ["comparison (a − b)", "mean Δ", "95 % interval", "Wilcoxon p",
                  "min. detectable Δ", "episodes", "verdict (a against b)"]


def paired_rows(pairs: list[dict]) -> list[list[str]]:
    """The comparisons as rows of a table under :data:`PAIRED_HEADERS`."""
    return [[p["label"], num(p["mean"], 4), interval(p), p_text(p),
             num(p["min_detectable"], 3), str(p["n"]), p["verdict"]] for p in pairs]


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
                   f"{num(min(mde), 3)} to {num(max(mde), 3)})")
    block = pairs[0].get("block", 1)
    return (f"Paired over the same test episodes (Δ = per-episode {what} difference, 95 % "
            f"bootstrap interval, seeds as strata, blocks of {block} episode"
            f"{'s' if block != 1 else ''}): " + "; ".join(out) + ".")


def paired_blocks(pairs: list[dict], caption: str, what: str = "EPnL") -> list[Block]:
    """A table's paired comparisons: their table under ``caption`` and their sentence."""
    if not pairs:
        return []
    return [Block("table", caption + "; minimum detectable Δ: the true difference found with "
                                     "80 % power at the 5 % level", PAIRED_HEADERS,
                  paired_rows(pairs)),
            Block("p", paired_sentence(pairs, what))]


def paired_of(t: dict, a: str, b: str, key: str = "main") -> dict | None:
    """The paired comparison ``a - b`` of a market's tables (``key``: which list), or None."""
    return next((p for p in (t.get("paired") or {}).get(key, [])
                 if p["a"] == a and p["b"] == b), None)
