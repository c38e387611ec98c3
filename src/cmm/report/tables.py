"""The report's numbers: every table as plain data, read from a run folder.

Aggregation (method.md, "Backtest and metrics"): episodes of every seed are pooled. EPnL, MAP,
max drawdown and fills are the mean ± standard deviation over those episodes. PnLMAP (EPnL /
MAP), RPT (total PnL / fills) and Sharpe (mean / std of episode PnL) are ratios of a whole run:
each is computed per seed, then given as mean ± std over seeds (no ± with one seed). Decision
latency is the one each policy was charged in the replay, mean ± std over seeds.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from cmm.io import reading

TASKS = ("mid", "spread", "volume")


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
        ratios: dict[str, list[float]] = {"PnLMAP": [], "RPT": [], "Sharpe": []}
        for f in frames:
            pnl, map_, fills = (f[c].to_numpy().astype(np.float64) for c in ("pnl", "map",
                                                                               "fills"))
            if len(pnl) == 0:
                continue
            m = map_.mean()
            ratios["PnLMAP"].append(pnl.mean() / m if m > 0 else math.nan)
            ratios["RPT"].append(pnl.sum() / fills.sum() if fills.sum() > 0 else math.nan)
            sd = pnl.std(ddof=1) if len(pnl) > 1 else math.nan
            ratios["Sharpe"].append(pnl.mean() / sd if sd and sd > 0 else math.nan)
        for k, v in ratios.items():
            out[k] = _stat(v)
        out["latency_ms"] = _stat(self.latency_ms)
        out["episodes"] = Stat(float(len(pooled)), None, len(pooled))
        return out


def _json(path: Path) -> dict:
    with reading(path):  # a truncated file: one line naming it
        return json.loads(path.read_text())


def _read_backtest(folder: Path) -> tuple[pl.DataFrame, dict] | None:
    if not (folder / "stage.json").is_file():
        return None
    meta = _json(folder / "metrics.json")
    with reading(folder / "episodes.csv"):
        return pl.read_csv(folder / "episodes.csv"), meta


def load_results(run_dir: Path, manifest: dict, dataset: dict, scenario: str = "backtest"
                 ) -> dict[str, PolicyResult]:
    """Per policy slug, its backtests over the seeds (``scenario``: ``backtest`` or
    ``crash``)."""
    out: dict[str, PolicyResult] = {}
    for p in manifest["policies"]:
        res = PolicyResult(p["slug"], p["label"])
        for seed in manifest["seeds"]:
            got = _read_backtest(run_dir / dataset["slug"] / f"seed{seed}" / scenario / p["slug"])
            if got is None:
                continue
            frame, meta = got
            res.episodes.append(frame)
            res.latency_ms.append(meta["latency_ns"] / 1e6)
            res.seeds.append(seed)
        if res.episodes:
            out[p["slug"]] = res
    return out


def prediction_metrics(run_dir: Path, manifest: dict, dataset: dict) -> dict[str, dict]:
    """Test-split R^2 and MSE per task, mean over seeds, of every mixture row of the mixture
    stage (``"<variant> (<gate>)"`` or ``"<variant>"``) and of each teacher."""
    rows: dict[str, dict[str, list]] = {}
    for seed in manifest["seeds"]:
        base = run_dir / dataset["slug"] / f"seed{seed}"
        for prefix, ev in (("", base / "moe" / "evaluation.json"),
                           ("control: ", base / "control" / "moe" / "evaluation.json")):
            if not ev.is_file():
                continue
            for r in _json(ev)["rows"]:
                if r["split"] != "test" or r["model"] == "teacher":  # the teacher's own below
                    continue
                if prefix and r["variant"] == "reference":
                    continue
                name = prefix + r["model"]
                for t in TASKS:
                    m = r["metrics"].get(t) or {}
                    rows.setdefault(name, {}).setdefault(f"r2_{t}", []).append(m.get("r2"))
                    rows[name].setdefault(f"mse_{t}", []).append(m.get("mse"))
        for name, folder in (("teacher", base / "teacher"),
                             ("teacher-random", base / "teacher-random"),
                             ("teacher-random", base / "control" / "teacher")):
            path = folder / "metrics.json"
            if path.is_file():
                test = _json(path)["models"]["teacher"]["test"]
                for t in TASKS:
                    rows.setdefault(name, {}).setdefault(f"r2_{t}", []).append(
                        test[t].get("r2"))
                    rows[name].setdefault(f"mse_{t}", []).append(test[t].get("mse"))
    return {k: {m: _stat([x for x in v if x is not None]) for m, v in d.items()}
            for k, d in rows.items()}


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
    out: dict = {}
    policies = {p["slug"]: p for p in manifest["policies"]}
    for d in manifest["datasets"]:
        res = load_results(run_dir, manifest, d)
        crash = load_results(run_dir, manifest, d, "crash")
        pred = prediction_metrics(run_dir, manifest, d)
        gates = {}
        for seed in manifest["seeds"]:
            ev = run_dir / d["slug"] / f"seed{seed}" / "moe" / "evaluation.json"
            if ev.is_file():
                gates = {k: v["gates"] for k, v in _json(ev)["mixtures"].items()}
                break
        volatile = d["episodes"]["volatile"]
        tables: dict = {}

        def rows(slugs, extra=None):
            body = []
            for s in slugs:
                if s not in res:
                    body.append({"slug": s, "label": policies[s]["label"], "missing": True})
                    continue
                m = res[s].metrics()
                row = {"slug": s, "label": res[s].label,
                       **{k: v.to_json() for k, v in m.items()}}
                if extra:
                    row.update(extra(s))
                body.append(row)
            return body

        def r2(s):
            p = policies[s]
            key = mixture_row(s, p, gates)
            got = pred.get(key, {})
            return {f"r2_{t}": got[f"r2_{t}"].to_json() if f"r2_{t}" in got else None
                    for t in TASKS}

        t = manifest["tables"]
        tables["main"] = rows(t["main"])
        tables["ablations"] = rows(t.get("ablations", []), r2)
        tables["gates"] = rows(t.get("gates", []), r2)
        tables["backbone"] = rows(t.get("backbone", []), r2)
        robust = []
        for s in t.get("robustness", []):
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
        tables["robustness"] = robust
        teacher_lat = res["teacher"].metrics()["latency_ms"].mean if "teacher" in res else None
        lat = []
        for s, r in res.items():
            m = r.metrics()["latency_ms"]
            speed = (teacher_lat / m.mean if teacher_lat and m.mean and m.mean > 0 else None)
            lat.append({"slug": s, "label": r.label, "latency_ms": m.to_json(),
                        "speedup_vs_teacher": _clean(speed)})
        tables["latency"] = sorted(lat, key=lambda r: -(r["latency_ms"]["mean"] or 0))
        tables["prediction"] = [
            {"model": k, **{m: v.to_json() for m, v in sorted(d2.items())}}
            for k, d2 in pred.items()]
        out[d["slug"]] = tables
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
