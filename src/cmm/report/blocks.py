"""The parts of a report document and the text of its numbers.

A document is a list of :class:`Block` (headings, paragraphs, tables, figures) that the
sections build (:mod:`cmm.report.sections`) and the writers turn into Markdown and HTML
(:mod:`cmm.report.render`); the functions here write a number, a mean ± std, an interval or a
ratio the same way in every table and sentence.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class Block:
    """One part of a document: a heading (``text``), a paragraph (``text``), a table (caption
    ``text``, ``headers``, ``rows`` of cells) or a figure (caption ``text``, PNG ``path``)."""

    kind: str  # h1 h2 h3 p table img
    text: str = ""
    headers: list[str] | None = None
    rows: list[list[str]] | None = None
    path: Path | None = None


def fmt(stat: dict | None, digits: int = 4) -> str:
    """A table's mean ± std cell ("–" where there is no mean)."""
    if not stat or stat.get("mean") is None:
        return "–"
    m, s = stat["mean"], stat.get("std")
    text = num(m, digits)
    if s is not None and abs(s) <= 1e-9 * abs(m):
        s = 0.0  # equal values (a deterministic policy over seeds) differ only by rounding
    if s is not None:
        text += f" ± {num(s, 3)}"
    return text


def num(x: float, digits: int = 4) -> str:
    """A number in ``digits`` significant digits (whole, with thousands separators, from
    100,000)."""
    if x == 0:
        return "0"
    if abs(x) >= 1e5:
        return f"{x:,.0f}"
    return f"{x:.{digits}g}"


def interval(p: dict) -> str:
    """A comparison's 95 % interval, "[low, high]"."""
    return f"[{num(p['low'], 3)}, {num(p['high'], 3)}]"


def delta_text(p: dict | None) -> str:
    """A comparison's cell: its mean and [low, high] ("–" where there is none)."""
    return "–" if p is None else f"{num(p['mean'], 3)} {interval(p)}"


def p_text(p: dict) -> str:
    """A comparison's Wilcoxon p ("–" where there is none)."""
    return "–" if p.get("p_value") is None else f"{p['p_value']:.3g}"


def times_text(ratio: float | None) -> str:
    """A ratio as "129x" ("–" where it is unknown)."""
    if ratio is None:
        return "–"
    return f"{ratio:,.0f}x" if ratio >= 10 else f"{ratio:.2g}x"
