"""The report's content: the document's blocks, built from the run folder's manifest, its
tables (:func:`cmm.report.tables.build_tables`) and the artefacts of its stages. The opening
(provenance and how the numbers are aggregated), the first screen (:mod:`cmm.report.answer`),
the datasets, the overview across markets (:mod:`cmm.report.overview`), one section per
market, the missing results and the stages' times."""

from __future__ import annotations

from pathlib import Path

from cmm.backtest.artefacts import read_episodes, read_fills, read_records
from cmm.pipeline.layout import RunLayout
from cmm.pipeline.policies import GATE_WEIGHTS_FILE
from cmm.pipeline.stages import MARKER
from cmm.report import figures as FIG
from cmm.report.answer import answer_blocks
from cmm.report.blocks import Block, fmt, interval, num, times_text
from cmm.report.overview import overview_blocks
from cmm.report.paired import (
    PAIRED_HEADERS,
    paired_blocks,
    paired_of,
    paired_rows,
    paired_sentence,
    verdict_clause,
)
from cmm.report.tables import TASKS, missing_cells
from cmm.report.teacher import learning_blocks, prediction_blocks, probe_blocks
from cmm.vocabulary import SPLITS


def document(run_dir: Path, manifest: dict, tables: dict, fig_dir: Path) -> list[Block]:
    """The report of the run in ``run_dir`` as blocks, from its ``manifest`` and ``tables``
    (figures drawn or copied into ``fig_dir``)."""
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
        B += overview_blocks(run_dir, manifest, tables)
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


def _episode_s(manifest: dict, d: dict) -> str:
    """A dataset's episode length: its own (``per_dataset``) where the manifest records one,
    else the run's ("–" where neither is recorded)."""
    got = d.get("episode_s") or ((manifest.get("config") or {}).get("backtest")
                                 or {}).get("episode_s")
    return "–" if got is None else f"{float(got):g} s"


# --------------------------------------------------------------------------------- one market


def _metric_row(r: dict, extra: list[str] = ()) -> list[str]:
    """A policy's row of the metric tables (:data:`METRIC_HEADERS`, then ``extra``)."""
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
    """One market's section: its main table, variants, robustness, latency, prediction
    quality, teacher side, RL gap and figures."""
    B = [Block("h2", f"{d['dataset']}")]
    B += _main_blocks(manifest, d, t)
    B += _variant_blocks(t)
    B += _robustness_blocks(d, t)
    B += _latency_price_blocks(manifest, d, t)
    B += _latency_blocks(d, t, fig_dir, rep)
    B += prediction_blocks(t.get("prediction", []))
    if t.get("teacher_seeds_note"):
        B.append(Block("p", t["teacher_seeds_note"]))
    B += learning_blocks(run_dir, manifest, d, fig_dir, rep)
    B += _rl_gap_blocks(t.get("rl_sim_gap", []))
    B += probe_blocks(run_dir, manifest, d, fig_dir)
    B += _figure_blocks(run_dir, manifest, d, t, fig_dir, rep)
    return B


def _main_blocks(manifest: dict, d: dict, t: dict) -> list[Block]:
    """The main table at the run's fee tier, its summary and paired comparisons, and the same
    at the base tier where the run's tier is another."""
    n_ep = len(d["episodes"]["start_ns"])
    paired = t.get("paired", {})
    B = [Block("h3", "Main table")]
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
    B += paired_blocks(paired.get("main", []), PAIRED_CAPTIONS["main"])
    if t.get("main_base"):
        B.append(Block("h3", "Main table at the base fee tier"))
        B.append(Block("table", f"the same replays, net PnL recomputed at the base tier from "
                                f"their fills (fills do not depend on fees); the main table "
                                f"above is at the {tier} tier",
                       METRIC_HEADERS + ["fills"],
                       [_metric_row(r, ["fills"]) for r in t["main_base"]]))
        B += paired_blocks(paired.get("main_base", []), PAIRED_CAPTIONS["main"]
                           + ", at the base tier")
    return B


def _variant_blocks(t: dict) -> list[Block]:
    """The ablations, the mixture controls and the backbone control, each with the test R² of
    its rows and its paired comparisons."""
    paired = t.get("paired", {})
    B: list[Block] = []
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
            B += paired_blocks(paired.get(key, []), PAIRED_CAPTIONS[key])
    return B


def _robustness_blocks(d: dict, t: dict) -> list[Block]:
    """The volatile episodes and, where the run has one, the flash crash: the table and its
    paired comparisons."""
    if not t.get("robustness"):
        return []
    n_ep = len(d["episodes"]["start_ns"])
    paired = t.get("paired", {})
    B = [Block("h3", "Robustness")]
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
    B += paired_blocks(paired.get("volatile", []), PAIRED_CAPTIONS["volatile"])
    B += paired_blocks(paired.get("crash", []), PAIRED_CAPTIONS["crash"])
    return B


def _latency_blocks(d: dict, t: dict, fig_dir: Path, rep: dict) -> list[Block]:
    """The decision latency each policy was charged: the table and its bar chart."""
    return [Block("h3", "Decision latency"),
            Block("table", "charged per decision in the replay; teacher: all-threads median; "
                           "mixtures: one-thread median of Quoter.decide",
                  ["policy", "latency (ms)", "speed-up vs teacher"],
                  [[r["label"], fmt(r["latency_ms"], 3),
                    "–" if r["speedup_vs_teacher"] is None
                    else f"{r['speedup_vs_teacher']:.3g}x"]
                   for r in t["latency"]]),
            Block("img", "Decision latency", path=FIG.latency_bars(
                t["latency"], fig_dir / f"{d['slug']}-latency.png",
                f"{d['dataset']}: decision latency", rep["dpi"]))]


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
        pd_ = paired_of(t, "cmm", "teacher")
        text = f"CMM's EPnL {fmt(c['EPnL'])}, the teacher's {fmt(te['EPnL'])}"
        if pd_ is not None:
            text += f": {verdict_clause({**pd_, 'a_label': 'CMM', 'b_label': 'the teacher'})}"
        parts.append(text)
        if mean(c, "PnLMAP") is not None and mean(te, "PnLMAP") is not None:
            parts.append(f"PnLMAP {fmt(c['PnLMAP'])} against {fmt(te['PnLMAP'])}")
        lc, lt = mean(c, "latency_ms"), mean(te, "latency_ms")
        if lc and lt:
            parts.append(f"at {times_text(lt / lc)} lower decision latency ({num(lc, 3)} ms "
                         f"against {num(lt, 3)} ms)")
    rivals = [r for s, r in main.items() if s not in ("cmm", "oracle")
              and mean(r, "EPnL") is not None]
    if rivals and mean(c, "EPnL") is not None:
        rank = 1 + sum(mean(r, "EPnL") > mean(c, "EPnL") for r in rivals)
        best = max(rivals, key=lambda r: mean(r, "EPnL"))
        parts.append(f"CMM ranks {rank} of {len(rivals) + 1} by mean EPnL (oracle excluded; "
                     f"best other: {best['label']}, {fmt(best['EPnL'])})")
    return "; ".join(parts) + "." if parts else ""


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
                       [[p["meaning"], *row] for p, row in zip(pairs, paired_rows(pairs))]))
        B.append(Block("p", paired_sentence(pairs)))
    return B


def _rl_gap_blocks(rows: list[dict]) -> list[Block]:
    """RL: the same episodes in the training simulator and in hftbacktest (when recorded)."""
    if not rows:
        return []
    body = []
    for r in rows:
        p = r.get("paired") or {}
        have = all(p.get(k) is not None for k in ("mean", "low", "high"))
        body.append([r["label"], str(r["seed"]), str(r.get("episodes", "–")),
                     "–" if r.get("sim_pnl_mean") is None else num(r["sim_pnl_mean"]),
                     "–" if r.get("hbt_pnl_mean") is None else num(r["hbt_pnl_mean"]),
                     f"{num(p['mean'], 3)} {interval(p)}" if have else "–",
                     "–" if p.get("min_detectable") is None else num(p["min_detectable"], 3),
                     r.get("reading") or p.get("verdict", "–")])
    splits = sorted({r["split"] for r in rows if r.get("split")})
    return [Block("h3", "RL: training simulator against hftbacktest"),
            Block("table", f"the same {' and '.join(splits) or 'held-out'} episodes replayed "
                           "in cmm's RL training simulator and in hftbacktest (the RL stage's "
                           "sim_gap.json); Δ: simulator − hftbacktest per episode, paired, "
                           "with its 95 % interval",
                  ["policy", "seed", "episodes", "sim EPnL", "hftbacktest EPnL",
                   "Δ [95 %]", "min. detectable Δ", "verdict"], body)]


def _figure_blocks(run_dir: Path, manifest: dict, d: dict, t: dict, fig_dir: Path,
                   rep: dict) -> list[Block]:
    """The market's figures, of the first seed: equity and inventory per policy, CMM's
    quotes over the mid in one test episode and through the flash crash, its expert weights."""
    B = [Block("h3", "Figures")]
    slug = d["slug"]
    seed = manifest["seeds"][0]
    layout = RunLayout.of_manifest(run_dir, manifest)
    unit = "base" if d["instrument"].get("inverse") else "quote"
    want = rep.get("curve_policies") or manifest["tables"]["main"]
    curves = {}
    for p in manifest["policies"]:
        folder = layout.policy_replay(slug, p, seed)
        if p["slug"] in want and (folder / MARKER).is_file():
            curves[p["label"]] = (read_records(folder), read_episodes(folder))
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
    if (cmm / MARKER).is_file():
        B.append(Block("img", f"CMM quotes over the mid, test episode {sample}", path=
                       FIG.quotes_over_mid(read_records(cmm), read_fills(cmm), sample,
                                           fig_dir / f"{slug}-quotes.png",
                                           f"{d['dataset']}: CMM quotes, test episode {sample} "
                                           f"(the most volatile)" if rep.get(
                                               "sample_episode") != "first" else
                                           f"{d['dataset']}: CMM quotes, test episode {sample}",
                                           rep["dpi"])))
    crash_cmm = layout.replay(slug, "cmm", seed, "crash")
    if d.get("crash") and (crash_cmm / MARKER).is_file():
        c = d["crash"]["crashes"][sample] if sample < len(d["crash"]["crashes"]) else \
            d["crash"]["crashes"][0]
        ep = sample if sample < len(d["crash"]["crashes"]) else 0
        B.append(Block("img", "CMM through a flash crash", path=FIG.quotes_over_mid(
            read_records(crash_cmm), read_fills(crash_cmm), ep, fig_dir / f"{slug}-crash.png",
            f"{d['dataset']}: CMM quotes through a synthetic flash crash (shaded), episode {ep}",
            rep["dpi"], shade=(c["start_ns"], c["end_ns"]))))
    if (cmm / GATE_WEIGHTS_FILE).is_file():
        B.append(Block("img", "Expert weights over time", path=FIG.expert_weights(
            cmm / GATE_WEIGHTS_FILE, fig_dir / f"{slug}-weights.png",
            f"{d['dataset']}: Hájek-MoE weights per task on the test split, background = "
            "volatility regime", rep["dpi"])))
    return B
