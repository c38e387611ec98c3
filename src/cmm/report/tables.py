"""The report's numbers: every table as plain data, read from a run folder.

Aggregation (method.md, "Backtest and metrics"): episodes of every seed are pooled. EPnL, MAP,
max drawdown and fills are the mean ± standard deviation over those episodes. PnLMAP (EPnL /
MAP), RPT (total PnL / fills) and Sharpe (mean / std of episode PnL) are ratios of a whole run:
each is computed per seed, then given as mean ± std over seeds (no ± with one seed). Decision
latency is the one each policy was charged in the replay, mean ± std over seeds. A policy whose
fit does not use the seed (``seeded`` False in the manifest) was replayed once per dataset; its
episodes count once.

Comparisons are paired (:mod:`cmm.backtest.stats`): two policies' net PnL on the same test
episodes (matched by session and episode within each seed; a seed-independent policy's one
replay is matched with every seed's), the mean difference with a 95 % stratified block-bootstrap
interval (seeds as strata, ``report.bootstrap_block`` episodes per block, seeded: the same
numbers every time), a Wilcoxon p-value, the minimum detectable difference and the verdict:
better / worse only where the interval excludes 0 and the Wilcoxon test rejects at 5 %.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from cmm.backtest.artefacts import RECORDS_FILE, read_episodes, read_metrics, read_records
from cmm.io import read_json
from cmm.metrics import pnl_map, rpt, sharpe
from cmm.moe import EVALUATION_FILE
from cmm.pipeline.layout import TEACHER_NAMES, RunLayout, teacher_seed_list
from cmm.pipeline.policies import PREDICTION_FILE
from cmm.pipeline.stages import MARKER
from cmm.rl import SIM_GAP_FILE
from cmm.teacher import METRICS_FILE as TEACHER_METRICS_FILE
from cmm.vocabulary import TASKS  # the report's sections import it from here

PREDICTION_COLUMNS = (*(f"r2_{t}" for t in TASKS), "direction3_acc", "direction3_f1")


@dataclass
class Stat:
    """A mean and a spread (None: not defined, e.g. a std over one value)."""

    mean: float
    std: float | None = None
    n: int = 0

    def to_json(self) -> dict:
        return {"mean": _clean(self.mean), "std": _clean(self.std), "n": self.n}


def _clean(x):
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x


def _stat(values) -> Stat:
    a = np.asarray([v for v in values if v is not None and np.isfinite(v)], np.float64)
    if len(a) == 0:
        return Stat(math.nan, None, 0)
    return Stat(float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else None, len(a))


@dataclass
class PolicyResult:
    """One policy's backtests (one per seed) on one dataset and scenario."""

    slug: str
    label: str
    episodes: list[pl.DataFrame] = field(default_factory=list)  # per seed
    latency_ms: list[float] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    shared: bool = False  # one replay for every seed (episodes[0]; seeds empty)

    def with_pnl(self, column: str) -> PolicyResult | None:
        """The same backtests with ``column`` (e.g. ``pnl_base``: net at another fee tier) as
        their net PnL; None where a backtest lacks it."""
        if not self.episodes or any(column not in e.columns for e in self.episodes):
            return None
        return PolicyResult(self.slug, self.label,
                            [e.with_columns(pl.col(column).alias("pnl")) for e in self.episodes],
                            list(self.latency_ms), list(self.seeds), self.shared)

    def frame(self, seed: int | None) -> pl.DataFrame | None:
        """The episodes of ``seed`` (a seed-independent policy: its one replay)."""
        if self.shared:
            return self.episodes[0] if self.episodes else None
        return self.episodes[self.seeds.index(seed)] if seed in self.seeds else None

    def metrics(self, episodes: list[int] | None = None) -> dict[str, Stat]:
        frames = [e if episodes is None else e.filter(pl.col("episode").is_in(episodes))
                  for e in self.episodes]
        pooled = pl.concat(frames) if frames else pl.DataFrame()
        out: dict[str, Stat] = {}
        if len(pooled) == 0:
            return {k: Stat(math.nan) for k in ("EPnL", "MAP", "PnLMAP", "RPT", "Sharpe",
                                                "latency_ms", "fills", "max_drawdown")}
        for key, col in (("EPnL", "pnl"), ("MAP", "map"), ("fills", "fills"),
                         ("max_drawdown", "max_drawdown"), ("volume", "volume")):
            out[key] = _stat(pooled[col].to_numpy())
        if "gross_pnl" in pooled.columns:  # backtests that record PnL before fees
            out["gross_EPnL"] = _stat(pooled["gross_pnl"].to_numpy())
        ratios: dict[str, list[float]] = {"PnLMAP": [], "RPT": [], "Sharpe": []}
        for f in frames:
            pnl, map_, fills = (f[c].to_numpy().astype(np.float64) for c in ("pnl", "map",
                                                                               "fills"))
            if len(pnl) == 0:
                continue
            ratios["PnLMAP"].append(pnl_map(pnl, map_))  # cmm.metrics: NaN unless den > 0
            ratios["RPT"].append(rpt(pnl, fills))
            ratios["Sharpe"].append(sharpe(pnl))
        for k, v in ratios.items():
            out[k] = _stat(v)
        out["latency_ms"] = _stat(self.latency_ms)
        out["episodes"] = Stat(float(len(pooled)), None, len(pooled))
        return out


def _read_backtest(folder: Path) -> tuple[pl.DataFrame, dict] | None:
    if not (folder / MARKER).is_file():
        return None
    return read_episodes(folder), read_metrics(folder)


def load_results(run_dir: Path, manifest: dict, dataset: dict, scenario: str = "backtest"
                 ) -> dict[str, PolicyResult]:
    """Per policy slug, its backtests over the seeds (``scenario``: ``backtest`` or
    ``crash``)."""
    layout = RunLayout.of_manifest(run_dir, manifest)
    out: dict[str, PolicyResult] = {}
    for p in manifest["policies"]:
        shared = not p.get("seeded", True)
        res = PolicyResult(p["slug"], p["label"], shared=shared)
        for seed in manifest["seeds"][:1] if shared else manifest["seeds"]:
            got = _read_backtest(layout.policy_replay(dataset["slug"], p, seed, scenario))
            if got is None:
                continue
            frame, meta = got
            res.episodes.append(frame)
            res.latency_ms.append(meta["latency_ns"] / 1e6)
            if not shared:
                res.seeds.append(seed)
        if res.episodes:
            out[p["slug"]] = res
    return out


# ------------------------------------------------------------------------- paired comparisons


def paired_episodes(a: PolicyResult, b: PolicyResult, episodes: list[int] | None = None,
                    column: str = "pnl") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``column`` of ``a`` and ``b`` on the episodes both replayed, matched by session and
    episode within each seed (a seed-independent policy's one replay stands for every seed),
    in time order within each seed; and each pair's stratum (its seed). ``episodes``: only
    these episode ids."""
    seeds: list = [None] if a.shared and b.shared else (b.seeds if a.shared else a.seeds)
    xs, ys, strata = [], [], []
    for seed in seeds:
        fa, fb = a.frame(seed), b.frame(seed)
        if fa is None or fb is None or column not in fa.columns or column not in fb.columns:
            continue
        on = [c for c in ("session", "episode") if c in fa.columns and c in fb.columns]
        j = (fa.select(*on, pl.col(column).alias("_a"))
             .join(fb.select(*on, pl.col(column).alias("_b")), on=on, how="inner")
             .sort(on[::-1]))  # episode ids follow time
        if episodes is not None:
            j = j.filter(pl.col("episode").is_in(episodes))
        xs.append(j["_a"].to_numpy().astype(np.float64))
        ys.append(j["_b"].to_numpy().astype(np.float64))
        strata.append(np.full(len(j), -1 if seed is None else seed, np.int64))
    if not xs:
        return np.zeros(0), np.zeros(0), np.zeros(0, np.int64)
    return np.concatenate(xs), np.concatenate(ys), np.concatenate(strata)


def compare(a: PolicyResult | None, b: PolicyResult | None, block: int = 1,
            episodes: list[int] | None = None, column: str = "pnl") -> dict | None:
    """``a - b`` paired per episode (:func:`cmm.backtest.stats.paired_difference`, seeds as
    strata, bootstrap seeded: deterministic), labelled; None where fewer than 2 episodes pair
    (or a policy did not run)."""
    from cmm.backtest.stats import paired_difference

    if a is None or b is None:
        return None
    x, y, strata = paired_episodes(a, b, episodes, column)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y, strata = x[ok], y[ok], strata[ok]
    if len(x) < 2:
        return None
    d = paired_difference(x, y, strata, block=block).to_dict()
    return {"a": a.slug, "b": b.slug, "a_label": a.label, "b_label": b.label,
            "label": f"{a.label} − {b.label}", "metric": column,
            **{k: (_clean(v) if isinstance(v, float) else v) for k, v in d.items()}}


def flip(verdict: str) -> str:
    """The verdict of ``b - a`` from that of ``a - b``."""
    return {"better": "worse", "worse": "better"}.get(verdict, verdict)


def skipped_decisions(folder: Path) -> tuple[int, int]:
    """(decisions skipped because the policy was still busy, decision points) of a backtest:
    the records' ``acted`` column, 0 = busy."""
    acted = read_records(folder, columns=["acted"])["acted"].to_numpy()
    return int((acted == 0).sum()), int(len(acted))


def prediction_metrics(run_dir: Path, manifest: dict, dataset: dict) -> dict[str, dict]:
    """Test-split R^2 and MSE per task, mean over seeds, of every mixture row of the mixture
    stage (``"<variant> (<gate>)"`` or ``"<variant>"``), and of each teacher, mean over its
    fits (a teacher shared by run seeds, ``teacher.seeds``, counts once)."""
    layout, slug = RunLayout.of_manifest(run_dir, manifest), dataset["slug"]
    rows: dict[str, dict[str, list]] = {}
    for seed in manifest["seeds"]:
        for prefix, ev in (("", layout.moe(slug, seed) / EVALUATION_FILE),
                           ("control: ", layout.moe(slug, seed, control=True)
                            / EVALUATION_FILE)):
            if not ev.is_file():
                continue
            for r in read_json(ev)["rows"]:
                if r["split"] != "test" or r["model"] == "teacher":  # the teacher's own below
                    continue
                if prefix and r["variant"] == "reference":
                    continue
                name = prefix + r["model"]
                for t in TASKS:
                    m = r["metrics"].get(t) or {}
                    rows.setdefault(name, {}).setdefault(f"r2_{t}", []).append(m.get("r2"))
                    rows[name].setdefault(f"mse_{t}", []).append(m.get("mse"))
    # the teachers' rows: the LLM, and the random-init control (teacher-random or, when CMM
    # is distilled from it too, control/teacher)
    for name, t_name in zip(("teacher", "teacher-random", "teacher-random"), TEACHER_NAMES,
                            strict=True):
        for folder in layout.teachers(slug, t_name):
            path = folder / TEACHER_METRICS_FILE
            if path.is_file():
                test = read_json(path)["models"]["teacher"]["test"]
                for t in TASKS:
                    rows.setdefault(name, {}).setdefault(f"r2_{t}", []).append(
                        test[t].get("r2"))
                    rows[name].setdefault(f"mse_{t}", []).append(test[t].get("mse"))
    return {k: {m: _stat([x for x in v if x is not None]) for m, v in d.items()}
            for k, d in rows.items()}


# rows of the prediction table: (key, label, where), where = "teacher:<model>" for a model of a
# teacher stage's evaluation (metrics.json), "random:teacher" for the random-init teacher's
PREDICTORS = (("teacher", "teacher LLM", "teacher:teacher"),
              ("teacher-random", "teacher LLM (random-init backbone)", "random:teacher"),
              ("train-mean", "train mean", "teacher:train-mean"),
              ("zero/last", "last value (zero/last)", "teacher:zero/last"),
              ("ridge", "ridge (hand features)", "teacher:ridge"),
              ("lightgbm", "LightGBM (hand features)", "teacher:lightgbm"))


def prediction_table(run_dir: Path, manifest: dict, dataset: dict, gates: dict,
                     pred: dict[str, dict[str, Stat]]) -> list[dict]:
    """The prediction table (method.md, "Baselines": yardsticks): test R² per target and, for
    the mid, up/flat/down accuracy and macro-F1, mean ± std over seeds, of the teacher (and
    the random-init control), the yardsticks of the teacher's evaluation (train mean, last
    value, ridge, LightGBM), CMM (its backtest's ``prediction.json``; the mixture stage's R²
    where an older run lacks it) and the distillation baselines of the main table (R² of the
    mixture stage). A teacher shared by run seeds (``teacher.seeds``) counts once."""
    policies = {p["slug"]: p for p in manifest["policies"]}
    vals: dict[str, dict[str, list]] = {}
    windows: dict[str, list] = {}
    layout, slug, seen = RunLayout.of_manifest(run_dir, manifest), dataset["slug"], set()

    def first_time(folder: Path) -> bool:
        new = folder not in seen
        seen.add(folder)
        return new

    def add(key: str, test: dict) -> None:
        row = vals.setdefault(key, {})
        for t in TASKS:
            m = test.get(t) or {}
            row.setdefault(f"r2_{t}", []).append(m.get("r2"))
            row.setdefault(f"mse_{t}", []).append(m.get("mse"))
        mid = test.get("mid") or {}
        for k in ("direction3_acc", "direction3_f1", "direction_acc"):
            row.setdefault(k, []).append(mid.get(k))

    for seed in manifest["seeds"]:
        t_dir = layout.teacher(slug, seed)
        teacher = t_dir / TEACHER_METRICS_FILE
        models = read_json(teacher)["models"] if first_time(t_dir) and teacher.is_file() else {}
        for folder in (layout.teacher(slug, seed, name) for name in TEACHER_NAMES[1:]):
            if (folder / TEACHER_METRICS_FILE).is_file():
                rnd = read_json(folder / TEACHER_METRICS_FILE)["models"]
                if first_time(folder) and "teacher" in rnd and "test" in rnd["teacher"]:
                    add("teacher-random", rnd["teacher"]["test"])
                break
        for key, _, where in PREDICTORS:
            src, name = where.split(":")
            if src == "teacher" and name in models and "test" in models[name]:
                add(key, models[name]["test"])
        if "cmm" in policies:
            got = layout.replay(slug, "cmm", seed) / PREDICTION_FILE
            if got.is_file():
                data = read_json(got)
                add("cmm", data["metrics"])
                windows.setdefault("cmm", []).append(data.get("windows"))
            elif r := pred.get(mixture_row("cmm", policies["cmm"], gates)):
                add("cmm", {t: {"r2": r[f"r2_{t}"].mean if f"r2_{t}" in r else None}
                            for t in TASKS})
    order = [(k, label) for k, label, _ in PREDICTORS]
    if "cmm" in policies:
        order.append(("cmm", policies["cmm"]["label"]))
    out = []
    for key, label in order:
        if key not in vals:
            continue
        out.append({"model": key, "label": label,
                    **{m: _stat([x for x in v if x is not None]).to_json()
                       for m, v in sorted(vals[key].items())}})
    for slug in manifest["tables"]["main"]:
        p = policies[slug]
        if p["source"] != "mixture" or slug == "cmm":
            continue
        r = pred.get(mixture_row(slug, p, gates))
        if r:
            out.append({"model": slug, "label": p["label"],
                        **{m: v.to_json() for m, v in sorted(r.items())}})
    return out


def teacher_seeds_note(manifest: dict, dataset: dict) -> str | None:
    """One sentence on the teachers the student seeds distilled when they are set apart
    (``teacher.seeds``; the manifest's ``teacher_seeds``: run seed -> teacher seed), e.g. "One
    teacher per market (seed 0), distilled by student seeds 0, 1 and 2." None when each run seed
    fitted its own teacher (or the run is older than ``teacher_seeds``)."""
    used = manifest.get("teacher_seeds")
    if not used or teacher_seed_list(manifest.get("config") or {}) is None:
        return None
    by_teacher: dict[int, list[str]] = {}
    for seed in manifest["seeds"]:
        by_teacher.setdefault(int(used[str(seed)]), []).append(str(seed))

    def listed(xs: list[str]) -> str:
        return xs[0] if len(xs) == 1 else ", ".join(xs[:-1]) + " and " + xs[-1]

    def students(xs: list[str]) -> str:
        return ("student seed " if len(xs) == 1 else "student seeds ") + listed(xs)

    if len(by_teacher) == 1:
        (t, xs), = by_teacher.items()
        return f"One teacher per market (seed {t}), distilled by {students(xs)}."
    parts = [f"seed {t} by {students(xs)}" for t, xs in by_teacher.items()]
    return f"{len(by_teacher)} teachers per market, distilled as follows: {'; '.join(parts)}."


def mixture_row(slug: str, policy: dict, gates: dict) -> str:
    """The name of a policy's row in the mixture stage's evaluation."""
    name, gate = policy["name"], policy.get("gate")
    if policy["source"] == "teacher":
        return slug
    prefix = "control: " if policy.get("chain") == "control" else ""
    multi = len(gates.get(name, [])) > 1
    if not multi:
        return prefix + name
    return f"{prefix}{name} ({gate or 'hajek'})"


def build_tables(run_dir: Path, manifest: dict) -> dict:
    """Every table of the report, per dataset, as JSON-able data."""
    return {d["slug"]: _dataset_tables(run_dir, manifest, d) for d in manifest["datasets"]}


def _dataset_tables(run_dir: Path, manifest: dict, d: dict) -> dict:
    """Every table of one dataset: the metric tables, their paired comparisons, robustness,
    the price of latency, latency, prediction quality, the RL gap and the teachers' note."""
    policies = {p["slug"]: p for p in manifest["policies"]}
    block = int((manifest.get("config", {}).get("report") or {}).get("bootstrap_block", 1))
    res = load_results(run_dir, manifest, d)
    crash = load_results(run_dir, manifest, d, "crash")
    pred = prediction_metrics(run_dir, manifest, d)
    gates = _mixture_gates(run_dir, manifest, d)
    volatile = d["episodes"]["volatile"]

    def r2(s: str) -> dict:
        return _r2_cells(pred.get(mixture_row(s, policies[s], gates), {}))

    t = manifest["tables"]
    tables: dict = {"main": _metric_rows(t["main"], res, policies)}
    for key in ("ablations", "gates", "backbone"):
        tables[key] = _metric_rows(t.get(key, []), res, policies, r2)
    paired = _paired_tables(t, res, crash, policies, block, volatile)
    tier = (manifest.get("config", {}).get("backtest") or {}).get("fee_tier", "base")
    tables["fee_tier"] = tier
    if tier != "base":  # net also at the base tier (episodes.csv's pnl_base)
        at_base = {s: r2_ for s, r in res.items() if (r2_ := r.with_pnl("pnl_base"))}
        if at_base:
            tables["main_base"] = _metric_rows(t["main"], at_base, policies)
            paired["main_base"] = _pairs([("cmm", s) for s in t["main"] if s != "cmm"],
                                         at_base, block)
    tables["paired"] = paired
    tables["robustness"] = _robustness_rows(t.get("robustness", []), res, crash, volatile)
    tables["latency_price"] = _latency_price(run_dir, manifest, d, res, policies, block)
    tables["latency"] = _latency_rows(res, policies)
    tables["prediction"] = prediction_table(run_dir, manifest, d, gates, pred)
    tables["rl_sim_gap"] = _rl_sim_gap(run_dir, manifest, d, policies)
    tables["teacher_seeds_note"] = teacher_seeds_note(manifest, d)
    return tables


def _mixture_gates(run_dir: Path, manifest: dict, d: dict) -> dict[str, list[str]]:
    """Per mixture variant, the gates the mixture stage fitted (the first seed's stage that
    ran; {} where none did)."""
    layout = RunLayout.of_manifest(run_dir, manifest)
    for seed in manifest["seeds"]:
        ev = layout.moe(d["slug"], seed) / EVALUATION_FILE
        if ev.is_file():
            return {k: v["gates"] for k, v in read_json(ev)["mixtures"].items()}
    return {}


def _metric_rows(slugs: list[str], source: dict[str, PolicyResult], policies: dict,
                 extra=None) -> list[dict]:
    """A metric table: per slug, its policy's metrics over ``source`` (a row marked missing
    where the policy has no backtest), with ``extra(slug)``'s cells where given."""
    body = []
    for s in slugs:
        if s not in source:
            body.append({"slug": s, "label": policies[s]["label"], "missing": True})
            continue
        m = source[s].metrics()
        row = {"slug": s, "label": source[s].label, "seeded": not source[s].shared,
               **{k: v.to_json() for k, v in m.items()}}
        if extra:
            row.update(extra(s))
        body.append(row)
    return body


def _r2_cells(got: dict[str, Stat]) -> dict:
    """The test R² per task of a mixture stage row (None where it has none)."""
    return {f"r2_{t}": got[f"r2_{t}"].to_json() if f"r2_{t}" in got else None for t in TASKS}


def _pairs(items, source: dict[str, PolicyResult], block: int,
           episodes: list[int] | None = None) -> list[dict]:
    """Paired comparisons ``a - b`` for (a, b) slugs present in ``source``."""
    got = (compare(source.get(a), source.get(b), block, episodes) for a, b in items)
    return [g for g in got if g is not None]


def _paired_tables(t: dict, res: dict[str, PolicyResult], crash: dict[str, PolicyResult],
                   policies: dict, block: int, volatile: list[int]) -> dict[str, list[dict]]:
    """The paired comparisons of each table (``t``: the manifest's tables)."""
    cmm = "cmm"
    robust = [(cmm, s) for s in t.get("robustness", []) if s != cmm]
    return {
        # CMM against the teacher, each baseline, yardstick, RL policy and the oracle
        "main": _pairs([(cmm, s) for s in t["main"] if s != cmm], res, block),
        # each ablation and gate control against CMM
        "ablations": _pairs([(s, cmm) for s in t.get("ablations", []) if s != cmm], res, block),
        "gates": _pairs([(s, cmm) for s in t.get("gates", []) if s != cmm], res, block),
        # the random-init control against the pretrained one
        "backbone": _pairs([(s, "teacher" if policies[s]["source"] == "teacher" else cmm)
                            for s in t.get("backbone", []) if s not in ("teacher", cmm)],
                           res, block),
        "volatile": _pairs(robust, res, block, episodes=volatile),
        "crash": _pairs(robust, crash, block),
    }


def _robustness_rows(slugs: list[str], res: dict[str, PolicyResult],
                     crash: dict[str, PolicyResult], volatile: list[int]) -> list[dict]:
    """Per policy of the robustness table: EPnL over all test episodes, over the volatile
    ones, and through the flash crash where it was replayed there."""
    robust = []
    for s in slugs:
        if s not in res:
            continue
        allm = res[s].metrics()
        vol = res[s].metrics(volatile)
        row = {"slug": s, "label": res[s].label, "EPnL": allm["EPnL"].to_json(),
               "EPnL_volatile": vol["EPnL"].to_json(),
               "PnLMAP_volatile": vol["PnLMAP"].to_json(),
               "MAP_volatile": vol["MAP"].to_json()}
        if s in crash:
            cm = crash[s].metrics()
            row.update({"EPnL_crash": cm["EPnL"].to_json(),
                        "PnLMAP_crash": cm["PnLMAP"].to_json(),
                        "MAP_crash": cm["MAP"].to_json(),
                        "max_drawdown_crash": cm["max_drawdown"].to_json()})
        robust.append(row)
    return robust


def _latency_rows(res: dict[str, PolicyResult], policies: dict) -> list[dict]:
    """Each policy's charged decision latency and its speed-up against the teacher, slowest
    first (the price-of-latency replays left out: they have their own table)."""
    teacher_lat = res["teacher"].metrics()["latency_ms"].mean if "teacher" in res else None
    lat = []
    for s, r in res.items():
        if policies[s].get("latency", "own") != "own":  # in the price-of-latency table
            continue
        m = r.metrics()["latency_ms"]
        speed = (teacher_lat / m.mean if teacher_lat and m.mean and m.mean > 0 else None)
        lat.append({"slug": s, "label": r.label, "latency_ms": m.to_json(),
                    "speedup_vs_teacher": _clean(speed)})
    return sorted(lat, key=lambda r: -(r["latency_ms"]["mean"] or 0))


def _latency_price(run_dir: Path, manifest: dict, d: dict, res: dict[str, PolicyResult],
                   policies: dict, block: int) -> dict:
    """The price of latency (method.md): the teacher at zero and at its measured latency, CMM
    at its own and at the teacher's, each with the decisions it skipped while still busy, and
    the three paired differences that read the value of speed and of quality apart."""
    slugs = [s for s in manifest["tables"].get("latency_price", []) if s in res]
    if len(slugs) < 2:
        return {}
    layout = RunLayout.of_manifest(run_dir, manifest)
    rows = []
    for s in slugs:
        m = res[s].metrics()
        busy = total = 0
        for seed in manifest["seeds"][:1] if res[s].shared else res[s].seeds:
            folder = layout.policy_replay(d["slug"], policies[s], seed)
            if (folder / RECORDS_FILE).is_file():
                b, n = skipped_decisions(folder)
                busy, total = busy + b, total + n
        rows.append({"slug": s, "label": res[s].label, "EPnL": m["EPnL"].to_json(),
                     "PnLMAP": m["PnLMAP"].to_json(), "latency_ms": m["latency_ms"].to_json(),
                     "skipped": busy, "decisions": total})
    meaning = {("teacher", "teacher-zero-latency"): "what the LLM's slowness costs",
               ("cmm", "cmm-teacher-latency"): "what CMM's speed is worth",
               ("cmm-teacher-latency", "teacher"): "quality alone (both at the teacher's "
                                                   "latency)"}
    paired = []
    for (a, b), what in meaning.items():
        got = compare(res.get(a), res.get(b), block)
        if got is not None:
            paired.append({**got, "meaning": what})
    return {"rows": rows, "paired": paired}


def _rl_sim_gap(run_dir: Path, manifest: dict, d: dict, policies: dict) -> list[dict]:
    """Per RL policy and seed, its ``rl/<algo>/sim_gap.json`` (the same episodes replayed in
    the training simulator and in hftbacktest), where the RL stage wrote one."""
    layout = RunLayout.of_manifest(run_dir, manifest)
    out = []
    for slug, p in policies.items():
        if p["source"] != "registry" or slug not in (manifest["config"].get("rl") or ()):
            continue
        for seed in manifest["seeds"]:
            path = layout.rl(d["slug"], seed, p["name"]) / SIM_GAP_FILE
            if not path.is_file():
                continue
            g = read_json(path)
            out.append({"slug": slug, "label": p["label"], "seed": seed,
                        "split": g.get("split"), "episodes": g.get("episodes"),
                        "sim_pnl_mean": _clean(g.get("sim_pnl_mean")),
                        "hbt_pnl_mean": _clean(g.get("hbt_pnl_mean")),
                        "paired": g.get("paired") or {}, "reading": g.get("reading")})
    return out


def missing_cells(tables: dict) -> list[str]:
    """Where a table lacks a number it should have (the acceptance check of the report)."""
    gaps = []
    for ds, t in tables.items():
        for name in ("main", "ablations", "gates", "backbone"):
            for row in t.get(name, []):
                if row.get("missing"):
                    gaps.append(f"{ds}/{name}/{row['slug']}: no backtest")
                    continue
                for k in ("EPnL", "MAP", "latency_ms"):
                    if row.get(k, {}).get("mean") is None:
                        gaps.append(f"{ds}/{name}/{row['slug']}/{k}")
        for row in t.get("robustness", []):
            for k in ("EPnL", "EPnL_volatile"):
                if row.get(k, {}).get("mean") is None:
                    gaps.append(f"{ds}/robustness/{row['slug']}/{k}")
    return gaps
