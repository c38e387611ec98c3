"""The report's teacher side: the prediction quality table with its verdicts against the
yardsticks, the teachers' learning curves, and the fluorescent probe's assignment."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from cmm.pipeline.layout import TEACHER_NAMES, RunLayout, teacher_seed, teacher_seed_list
from cmm.probe import FIGURE_FILE, PROBE_FILE
from cmm.report import figures as FIG
from cmm.report.blocks import Block, fmt, num
from cmm.report.tables import TASKS


# ------------------------------------------------------------------------- prediction quality


def prediction_blocks(rows: list[dict]) -> list[Block]:
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
        parts.append(f"{k}: {b[1]} (R² {num(b[0], 3)})" if b else
                     f"{k}: no R² (the target is constant on the test split)")
    f1 = best("direction3_f1")
    text = "Highest test R² per target: " + "; ".join(parts)
    if f1:
        text += f"; best up/flat/down macro-F1 of the mid: {f1[1]} ({num(f1[0], 3)})"
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
        groups.setdefault(rel, []).append(f"{name} ({num(v, 3)})")
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
            parts.append(f"on {k} the teacher LLM is best ({num(tv, 3)}{tie})"
                         + (f", {against}" if against else ""))
        else:
            best = next(name for v, name in have if v == top)
            parts.append(f"on {k} {best} is best ({num(top, 3)}) and the teacher LLM "
                         f"({num(tv, 3)}) is {against or 'below it'}")
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


# -------------------------------------------------------------------- teacher learning curves

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
    from cmm.teacher import META_FILE

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
            f"{num(b, 3)} (last check {num(last['val_loss'], 3)}); stopped by {why}; its "
            f"validation loss {trend}.")


def learning_blocks(run_dir: Path, manifest: dict, d: dict, fig_dir: Path, rep: dict
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


# -------------------------------------------------------------------------- fluorescent probe


def probe_rows(run_dir: Path, manifest: dict, d: dict) -> list[tuple[list[str], Path]]:
    """Per seed with a probe: [seed, assignment, whether the paper's pattern holds], folder."""
    layout = RunLayout.of_manifest(run_dir, manifest)
    out = []
    for seed in manifest["seeds"]:
        p = layout.probe(d["slug"], seed)
        if not (p / PROBE_FILE).is_file():
            continue
        probe = json.loads((p / PROBE_FILE).read_text())
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


def probe_blocks(run_dir: Path, manifest: dict, d: dict, fig_dir: Path) -> list[Block]:
    """The market's probe: the assignment per seed and the first seed's specialisation map."""
    B = []
    found = probe_rows(run_dir, manifest, d)
    rows = [row for row, _ in found]
    first = found[0][1] if found else None
    if rows:
        B.append(Block("h3", "Fluorescent probe"))
        B.append(Block("table", "task → layer group of the teacher; the paper found shallow → "
                                "mid-price, middle → spread, deep → volume",
                       ["seed", "assignment", "paper's pattern"], rows))
        if (first / FIGURE_FILE).is_file():
            dst = fig_dir / f"{d['slug']}-probe.png"
            shutil.copyfile(first / FIGURE_FILE, dst)
            B.append(Block("img", "Probe specialisation map S[l, k] (first seed)", path=dst))
    return B
