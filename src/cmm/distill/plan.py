"""Which students to train, and on which samples: CMM's expert grid, the ablations and the
distillation baselines, as :class:`StudentJob` lists.

Variants (each a set of students plus, per task, the students' outputs that the mixture mixes):

- ``cmm``: one expert per (task, regime) (per (task, group, regime) with ``grid.groups="all"``),
  hint = the teacher features averaged over the task's layer group (from the probe);
- ``no_layer``: the same grid, every expert hinted with the average over *all* blocks;
- ``no_task``: one expert per regime predicting every task, hinted with every task's group;
- ``no_data``: one expert per task fitted on all regimes (nothing to mix);
- baselines, one student predicting every task: ``kd`` (teacher predictions and truth, no
  features), ``fitnets`` (plus a hint on one block, the middle one by default), ``multitask``
  (plus a hint per layer group: all the features CMM's experts learn), ``truth`` (truth only).

With ``match_parameters`` every variant other than ``cmm`` and ``no_layer`` is resized (hidden
and z widths scaled together) to about the total parameter count of CMM's experts.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from cmm.config import DistillConfig
from cmm.data.windows import Windows
from cmm.distill.students import StudentSpec, matched_expert, mlp_parameters
from cmm.distill.train import StudentData, StudentJob
from cmm.errors import InputError
from cmm.vocabulary import REGIMES, TASKS

BASELINES = ("kd", "fitnets", "multitask", "truth")
ABLATIONS = ("no_layer", "no_task", "no_data")


@dataclass
class SplitArrays:
    """One split as the distillation reads it. x: (N, W, F) window view; y: (N, 3) targets in units;
    teacher: (N, 3) teacher predictions in units; hidden: (N, L, d) pooled block outputs;
    regime: (N,) int."""

    x: Windows
    y: np.ndarray
    teacher: np.ndarray
    hidden: np.ndarray
    regime: np.ndarray

    def __post_init__(self) -> None:
        n = len(self.x)
        for name in ("y", "teacher", "hidden", "regime"):
            got = len(getattr(self, name))
            if got != n:
                raise InputError("split arrays are not aligned", field=name,
                                 expected=f"{n} rows like the windows", got=got)


@dataclass
class Variant:
    """Students and, per task name, the (student name, output index) pairs mixed for it."""

    name: str
    kind: str  # "cmm", "ablation" or "baseline"
    students: list[StudentSpec] = field(default_factory=list)
    routes: dict[str, list[tuple[str, int]]] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"name": self.name, "kind": self.kind,
                "students": [s.name for s in self.students],
                "routes": {t: [list(r) for r in rs] for t, rs in self.routes.items()}}


def _seed(name: str) -> int:
    return zlib.crc32(name.encode()) & 0x7FFFFFFF


def _regime_name(r: int) -> str:
    return REGIMES[r] if 0 <= r < len(REGIMES) else f"r{r}"


def resolve_assignment(config: DistillConfig, groups: dict[str, list[int]],
                       probe: dict | None) -> dict[str, str]:
    """Task -> layer group name: the setting if given, else the probe's overall assignment."""
    if config.assignment is not None:
        assignment = dict(config.assignment)
    elif probe is not None:
        assignment = dict(probe["all"]["assignment"])
    else:
        raise InputError("no layer-group assignment: pass the probe's probe.json (run "
                         "`cmm probe` first) or set distill.assignment",
                         field="distill.assignment", expected="{mid: shallow, ...}")
    for task in config.grid.tasks:
        if task not in assignment:
            raise InputError("task missing from the layer-group assignment", field=task,
                             expected=", ".join(TASKS))
        if assignment[task] not in groups:
            raise InputError("unknown layer group in the assignment", field=task,
                             expected=", ".join(groups), got=assignment[task])
    return assignment


def build_variants(config: DistillConfig, groups: dict[str, list[int]],
                   assignment: dict[str, str], num_blocks: int, in_dim: int) -> list[Variant]:
    """All variants the config asks for, with their students sized."""
    lam = (config.lambda_feature, config.lambda_logit, config.lambda_truth)
    tasks = [TASKS.index(t) for t in config.grid.tasks]
    regimes = tuple(config.grid.regimes)
    all_blocks = tuple(range(num_blocks))
    base = config.expert

    def spec(variant, name, task_idx, hints, regs, expert, lambdas, group=""):
        full = f"{variant}/{name}"
        return StudentSpec(name=full, variant=variant, tasks=tuple(task_idx),
                           hints=tuple(tuple(h) for h in hints), regimes=tuple(regs),
                           expert=expert, lambdas=tuple(lambdas), group=group, seed=_seed(full))

    def grid_variant(name: str, kind: str, hint_of) -> Variant:
        v = Variant(name, kind)
        for k in tasks:
            task = TASKS[k]
            task_groups = [assignment[task]] if config.grid.groups == "probe" else list(groups)
            v.routes[task] = []
            for g in task_groups:
                for r in regimes:
                    s = spec(name, f"{task}-{g}-{_regime_name(r)}", [k], [hint_of(g)], [r], base,
                             lam, g)
                    v.students.append(s)
                    v.routes[task].append((s.name, 0))
        return v

    cmm = grid_variant("cmm", "cmm", lambda g: groups[g])
    total = sum(mlp_parameters(in_dim, s.expert.hidden, s.expert.z_dim, len(s.tasks))
                for s in cmm.students)

    def sized(n_out: int, parts: int) -> object:
        if not config.match_parameters:
            return base
        return matched_expert(base, in_dim, n_out, round(total / parts))

    variants = [cmm]
    if "no_layer" in config.ablations:
        variants.append(grid_variant("no_layer", "ablation", lambda g: all_blocks))
    task_groups = list(dict.fromkeys(assignment[TASKS[k]] for k in tasks))
    if "no_task" in config.ablations:
        v = Variant("no_task", "ablation")
        expert = sized(len(tasks), len(regimes))
        for r in regimes:
            s = spec("no_task", f"all-{_regime_name(r)}", tasks, [groups[g] for g in task_groups],
                     [r], expert, lam, "+".join(task_groups))
            v.students.append(s)
            for o, k in enumerate(tasks):
                v.routes.setdefault(TASKS[k], []).append((s.name, o))
        variants.append(v)
    if "no_data" in config.ablations:
        v = Variant("no_data", "ablation")
        expert = sized(1, len(tasks))
        for k in tasks:
            g = assignment[TASKS[k]]
            s = spec("no_data", f"{TASKS[k]}-{g}-all", [k], [groups[g]], regimes, expert, lam, g)
            v.students.append(s)
            v.routes[TASKS[k]] = [(s.name, 0)]
        variants.append(v)
    middle = config.fitnets_layer if config.fitnets_layer is not None else num_blocks // 2
    if middle >= num_blocks:
        raise InputError("FitNets hint block beyond the teacher's blocks",
                         field="distill.fitnets_layer", expected=f"< {num_blocks}", got=middle)
    baseline_hints = {"kd": ([], (0.0, lam[1], lam[2])),
                      "fitnets": ([(middle,)], lam),
                      "multitask": ([groups[g] for g in groups], lam),
                      "truth": ([], (0.0, 0.0, 1.0))}
    for name in config.baselines:
        hints, lambdas = baseline_hints[name]
        v = Variant(name, "baseline")
        s = spec(name, "student", tasks, hints, regimes, sized(len(tasks), 1), lambdas,
                 "block" + str(middle) if name == "fitnets" else ("all" if hints else ""))
        v.students.append(s)
        v.routes = {TASKS[k]: [(s.name, o)] for o, k in enumerate(tasks)}
        variants.append(v)
    return variants


class HintTargets:
    """Teacher features averaged over a set of blocks, standardised per dimension with the
    training split's statistics; each (split, block set) computed once."""

    def __init__(self, splits: dict[str, np.ndarray]) -> None:
        self.hidden = splits  # split -> (N, L, d)
        self._stats: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}
        self._cache: dict[tuple[str, tuple[int, ...]], np.ndarray] = {}

    @staticmethod
    def _average(hidden: np.ndarray, blocks: tuple[int, ...]) -> np.ndarray:
        out = np.zeros((hidden.shape[0], hidden.shape[2]), np.float32)
        for b in blocks:
            out += hidden[:, b].astype(np.float32)
        return out / len(blocks)

    def __call__(self, split: str, blocks: tuple[int, ...]) -> np.ndarray:
        """(N, d) standardised targets of ``split``."""
        key = (split, tuple(blocks))
        if key not in self._cache:
            if blocks not in self._stats:
                h = self._average(self.hidden["train"], blocks)
                self._stats[blocks] = (h.mean(axis=0), h.std(axis=0) + 1e-6)
            mean, std = self._stats[blocks]
            self._cache[key] = ((self._average(self.hidden[split], blocks) - mean) / std
                                ).astype(np.float32)
        return self._cache[key]


def _sample_weights(regime: np.ndarray, own: tuple[int, ...], neighbour: float) -> np.ndarray:
    w = np.isin(regime, own).astype(np.float32)
    if neighbour > 0:
        near = np.zeros(len(regime), bool)
        for r in own:
            near |= np.abs(regime.astype(int) - r) == 1
        w[near & (w == 0)] = neighbour
    return w


def build_jobs(variants: list[Variant], config: DistillConfig, train: SplitArrays,
               validation: SplitArrays, y_mean: np.ndarray, y_std: np.ndarray,
               hint_targets: HintTargets | None = None) -> list[StudentJob]:
    """One job per student: its fit samples (own regimes, adjacent ones weighted) and its
    stopping set (validation samples of its regimes, else its own training tail)."""
    hint_targets = hint_targets or HintTargets({"train": train.hidden,
                                                "validation": validation.hidden})
    ty, tt = (train.y - y_mean) / y_std, (train.teacher - y_mean) / y_std
    vy, vt = (validation.y - y_mean) / y_std, (validation.teacher - y_mean) / y_std
    jobs = []
    for v in variants:
        for s in v.students:
            cols = list(s.tasks)
            w = _sample_weights(train.regime, s.regimes, config.neighbour_weight)
            own_val = np.flatnonzero(np.isin(validation.regime, s.regimes))
            if len(own_val) >= config.min_validation_samples:
                fit_idx = np.flatnonzero(w > 0)
                stop_set = StudentData(validation.x.take(own_val), vy[own_val][:, cols],
                                       vt[own_val][:, cols],
                                       [hint_targets("validation", h)[own_val]
                                        for h in s.hints],
                                       np.ones(len(own_val), np.float32))
                source = "validation"
            else:
                own = np.flatnonzero(np.isin(train.regime, s.regimes))
                if len(own) < 10:
                    raise InputError("too few training samples for a student",
                                     field=s.name, expected=">= 10 of its regimes",
                                     got=len(own))
                cut = own[int(len(own) * (1 - config.holdout_fraction))]
                fit_idx = np.flatnonzero((w > 0) & (np.arange(len(w)) < cut))
                stop_idx = own[own >= cut]
                stop_set = StudentData(train.x.take(stop_idx), ty[stop_idx][:, cols],
                                       tt[stop_idx][:, cols],
                                       [hint_targets("train", h)[stop_idx] for h in s.hints],
                                       np.ones(len(stop_idx), np.float32))
                source = "train-tail"
            fit_set = StudentData(train.x.take(fit_idx), ty[fit_idx][:, cols], tt[fit_idx][:, cols],
                                  [hint_targets("train", h)[fit_idx] for h in s.hints],
                                  w[fit_idx])
            jobs.append(StudentJob(spec=s, fit=fit_set, stop=stop_set, train=config.train,
                                   stop_source=source, threads=config.threads_per_worker))
    return jobs
