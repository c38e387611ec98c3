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
from cmm.report.tables import TASKS, build_tables, missing_cells


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
                        "the true future through the ladder: a check, not a competitor."))
    for s in manifest.get("skipped", []):
        B.append(Block("p", f"Left out: **{s['policy']}**, {s['reason']}."))
    B.append(Block("h2", "Datasets"))
    B.append(Block("table", "", ["dataset", "sessions", "hours", "grid", "train / val / test "
                                 "windows", "test regimes (low/mid/high)", "test episodes",
                                 "volatile episodes"],
                   [[d["dataset"], str(d["sessions"]), f"{d['hours']:.2f}", f"{d['dt_ms']} ms",
                     " / ".join(str(d["split_counts"][s]) for s in ("train", "validation",
                                                                     "test")),
                     "/".join(map(str, d["regime_counts"]["test"])),
                     str(len(d["episodes"]["start_ns"])), str(len(d["episodes"]["volatile"]))]
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
            slugs: list[str] | None = None) -> tuple[list[str], list[list[str]]]:
    """Rows of table ``key`` (its policies, in the first market's order) with ``metric`` in one
    column per market."""
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
            row.append("(not run)" if r is None or r.get("missing") else fmt(r.get(metric)))
        rows.append(row)
    return ["policy"] + [d["dataset"] for d in ds], rows


def _overview_blocks(run_dir: Path, manifest: dict, tables: dict) -> list[Block]:
    """Every market side by side: EPnL per market and mean rank, CMM against its teacher, then
    the ablations, mixture controls, backbone control, robustness and probe in one table each."""
    ds = manifest["datasets"]
    first = tables[ds[0]["slug"]]["main"]
    slugs = [r["slug"] for r in first]
    ranks = epnl_ranks({d["slug"]: tables[d["slug"]] for d in ds}, slugs)
    headers, rows = _across(tables, ds, "main", slugs=slugs)
    for row, s in zip(rows, slugs):
        row.append("–" if not ranks[s] else f"{np.mean(ranks[s]):.2g}")
    n_rank = sum(1 for s in slugs if s != "oracle")
    B = [Block("h2", "Overview across markets"),
         Block("table", f"test EPnL per market (quote currency per episode, mean ± std over "
                        f"episodes and seeds) and the mean rank by EPnL over the markets (1 = "
                        f"best of {n_rank}; the oracle is a check and takes no rank)",
               headers + ["mean rank"], rows)]

    pair_rows = []
    for d in ds:
        main = {r["slug"]: r for r in tables[d["slug"]]["main"] if not r.get("missing")}
        c, te = main.get("cmm"), main.get("teacher")
        if not c or not te:
            continue
        lc, lt = (c.get("latency_ms") or {}).get("mean"), (te.get("latency_ms") or {}).get("mean")
        pair_rows.append([d["dataset"], fmt(c["EPnL"]), fmt(te["EPnL"]), fmt(c["PnLMAP"]),
                          fmt(te["PnLMAP"]), fmt(c["latency_ms"], 3), fmt(te["latency_ms"], 3),
                          f"{lt / lc:,.0f}x" if lc and lt else "–"])
    if pair_rows:
        B.append(Block("h3", "CMM against its teacher"))
        B.append(Block("table", "the student mixture and the LLM it was distilled from, each "
                                "quoting with its own decision latency",
                       ["market", "CMM EPnL", "teacher EPnL", "CMM PnLMAP", "teacher PnLMAP",
                        "CMM latency (ms)", "teacher latency (ms)", "speed-up"], pair_rows))
    for key, title, caption in (
            ("ablations", "Ablations", "test EPnL of CMM and of CMM without one decomposition"),
            ("gates", "Mixture controls", "test EPnL of the same experts under each gate"),
            ("backbone", "Pretrained vs random-init backbone",
             "test EPnL of the teacher on a pretrained and on a randomly initialised backbone")):
        if any(tables[d["slug"]].get(key) for d in ds):
            headers, rows = _across(tables, ds, key)
            B.append(Block("h3", title))
            B.append(Block("table", caption, headers, rows))
    if any(tables[d["slug"]].get("robustness") for d in ds):
        for metric, title, caption in (
                ("EPnL_volatile", "Robustness: the most volatile episodes",
                 "test EPnL over the most volatile third of test episodes"),
                ("EPnL_crash", "Robustness: flash crash",
                 "test EPnL with a synthetic flash crash in every test episode")):
            headers, rows = _across(tables, ds, "robustness", metric)
            if any(c != "–" for row in rows for c in row[1:]):
                B.append(Block("h3", title))
                B.append(Block("table", caption, headers, rows))
    probe_rows = [[d["dataset"]] + row for d in ds
                  for row, _ in _probe_rows(run_dir, manifest["seeds"], d)]
    if probe_rows:
        B.append(Block("h3", "Fluorescent probe"))
        B.append(Block("table", "task → layer group of the teacher per market and seed; the "
                                "paper found shallow → mid-price, middle → spread, deep → volume",
                       ["market", "seed", "assignment", "paper's pattern"], probe_rows))
    return B


def _metric_row(r: dict, extra: list[str] = ()) -> list[str]:
    if r.get("missing"):
        return [r["label"]] + ["(not run)"] * (6 + len(extra))
    cells = [r["label"], fmt(r["EPnL"]), fmt(r["MAP"]), fmt(r["PnLMAP"]), fmt(r["RPT"]),
             fmt(r["Sharpe"], 3), fmt(r["latency_ms"], 3)]
    return cells + [fmt(r.get(k)) for k in extra]


METRIC_HEADERS = ["policy", "EPnL", "MAP (base)", "PnLMAP", "RPT", "Sharpe", "latency (ms)"]


def _dataset_blocks(run_dir: Path, manifest: dict, d: dict, t: dict, fig_dir: Path,
                    rep: dict) -> list[Block]:
    slug = d["slug"]
    n_ep = len(d["episodes"]["start_ns"])
    B = [Block("h2", f"{d['dataset']}")]
    B.append(Block("h3", "Main table"))
    B.append(Block("table", f"{n_ep} test episodes per seed", METRIC_HEADERS + ["fills"],
                   [_metric_row(r, ["fills"]) for r in t["main"]]))
    summary = _summary(t)
    if summary:
        B.append(Block("p", summary))
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
    if t.get("prediction"):
        B.append(Block("h3", "Prediction quality (test split)"))
        B.append(Block("table", "R² per target, mean ± std over seeds; mixture rows from the "
                                "mixture stage, teacher rows from the teacher's evaluation",
                       ["model"] + r2,
                       [[r["model"]] + [fmt(r.get(f"r2_{k}"), 3) for k in TASKS]
                        for r in t["prediction"]]))
    B += _probe_blocks(run_dir, manifest, d, fig_dir)
    B += _figure_blocks(run_dir, manifest, d, t, fig_dir, rep)
    return B


def _summary(t: dict) -> str:
    """CMM against the teacher and against the best competitor, in words (numbers only)."""
    main = {r["slug"]: r for r in t["main"] if not r.get("missing")}
    if "cmm" not in main:
        return ""

    def mean(r, k):
        return (r.get(k) or {}).get("mean")

    c = main["cmm"]
    parts = []
    te = main.get("teacher")
    if te and mean(c, "EPnL") is not None and mean(te, "EPnL") is not None:
        better = mean(c, "EPnL") > mean(te, "EPnL")
        parts.append(f"CMM's EPnL {fmt(c['EPnL'])} is {'above' if better else 'below'} the "
                     f"teacher's {fmt(te['EPnL'])}")
        if mean(c, "PnLMAP") is not None and mean(te, "PnLMAP") is not None:
            parts.append(f"PnLMAP {fmt(c['PnLMAP'])} against {fmt(te['PnLMAP'])}")
        lc, lt = mean(c, "latency_ms"), mean(te, "latency_ms")
        if lc and lt:
            parts.append(f"at {lt / lc:,.0f}x lower decision latency ({_num(lc, 3)} ms against "
                         f"{_num(lt, 3)} ms)")
    rivals = [r for s, r in main.items() if s not in ("cmm", "oracle")
              and mean(r, "EPnL") is not None]
    if rivals and mean(c, "EPnL") is not None:
        rank = 1 + sum(mean(r, "EPnL") > mean(c, "EPnL") for r in rivals)
        best = max(rivals, key=lambda r: mean(r, "EPnL"))
        parts.append(f"CMM ranks {rank} of {len(rivals) + 1} by EPnL (oracle excluded; best "
                     f"other: {best['label']}, {fmt(best['EPnL'])})")
    return ("; ".join(parts) + ". Differences smaller than the ± spreads are not "
            "significant.") if parts else ""


def _probe_rows(run_dir: Path, seeds: list[int], d: dict) -> list[tuple[list[str], Path]]:
    """Per seed with a probe: [seed, assignment, whether the paper's pattern holds], folder."""
    out = []
    for seed in seeds:
        p = run_dir / d["slug"] / f"seed{seed}" / "probe"
        if not (p / "probe.json").is_file():
            continue
        probe = json.loads((p / "probe.json").read_text())
        pattern = probe.get("paper_pattern", {})
        verdict = ("n/a" if not pattern.get("applicable") else
                   "holds" if pattern.get("holds") else "does not hold")
        out.append(([str(seed), ", ".join(f"{k} → {v}" for k, v in
                                           probe["all"]["assignment"].items()), verdict], p))
    return out


def _probe_blocks(run_dir: Path, manifest: dict, d: dict, fig_dir: Path) -> list[Block]:
    B = []
    found = _probe_rows(run_dir, manifest["seeds"], d)
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


def _figure_blocks(run_dir: Path, manifest: dict, d: dict, t: dict, fig_dir: Path,
                   rep: dict) -> list[Block]:
    B = [Block("h3", "Figures")]
    slug = d["slug"]
    seed = manifest["seeds"][0]
    base = run_dir / slug / f"seed{seed}"
    unit = "base" if d["instrument"].get("inverse") else "quote"
    want = rep.get("curve_policies") or manifest["tables"]["main"]
    curves = {}
    for p in manifest["policies"]:
        folder = base / "backtest" / p["slug"]
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
    cmm = base / "backtest" / "cmm"
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
    crash_cmm = base / "crash" / "cmm"
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
    out_dir = Path(out_dir) if out_dir is not None else run_dir / "report"
    with reading(run_dir / "manifest.json"):
        manifest = json.loads((run_dir / "manifest.json").read_text())
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
    text = (run_dir / "report" / "report.md").read_text()
    return text.replace("](figures/", f"]({rel}/figures/")
