"""The mixture: frozen students, and per task a gate that weights the students' predictions.

:class:`MixtureModel` is the torch form (fitting, evaluation, tests); the decision path is the
fused numpy form in :mod:`cmm.moe.fused`, built from the same tensors. Shapes: ``B`` windows,
``T`` tasks, ``M`` experts of a task, ``z`` their hidden width.

:func:`fit_gates` fits the gates that have parameters on the validation split with the experts
frozen (their outputs are computed once, without gradients; only gate parameters are given to
the optimiser): the first ``1 - holdout_fraction`` of the split (in time) is fitted, the rest
decides early stopping. The loss is the task's mean squared error of the mixed, standardised
prediction.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cmm.config import MoEConfig
from cmm.distill.students import StudentSpec
from cmm.errors import InputError
from cmm.moe.gates import build_gate
from cmm.vocabulary import TASKS


@dataclass
class MixtureOutput:
    """y: (B, T) standardised mixed predictions; weights / expert_y: per task (B, M)."""

    y: torch.Tensor
    weights: dict[str, torch.Tensor]
    expert_y: dict[str, torch.Tensor]


class MixtureModel(nn.Module):
    def __init__(self, specs: list[StudentSpec], students: list[nn.Module],
                 routes: dict[str, list[tuple[str, int]]], y_mean, y_std) -> None:
        super().__init__()
        self.specs = list(specs)
        self.students = nn.ModuleList(students)
        self.index = {s.name: i for i, s in enumerate(self.specs)}
        self.tasks = tuple(t for t in TASKS if t in routes)
        self.routes = {t: [(self.index[n], o) for n, o in routes[t]] for t in self.tasks}
        self.register_buffer("y_mean", torch.as_tensor(np.asarray(y_mean)[
            [TASKS.index(t) for t in self.tasks]], dtype=torch.float32))
        self.register_buffer("y_std", torch.as_tensor(np.asarray(y_std)[
            [TASKS.index(t) for t in self.tasks]], dtype=torch.float32))
        self.gates = nn.ModuleDict()
        for p in self.students.parameters():
            p.requires_grad_(False)

    # -- experts ---------------------------------------------------------------------------------
    def experts_of(self, task: str) -> list[StudentSpec]:
        return [self.specs[i] for i, _ in self.routes[task]]

    def expert_regimes(self, task: str) -> list[int]:
        return [s.regimes[0] if len(s.regimes) == 1 else -1 for s in self.experts_of(task)]

    @torch.no_grad()
    def expert_outputs(self, x: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Per task: z (B, M, z) and y (B, M), the frozen experts' outputs."""
        outs = [s(x) for s in self.students]
        return {t: (torch.stack([outs[i].z for i, _ in r], dim=1),
                    torch.stack([outs[i].y[:, o] for i, o in r], dim=1))
                for t, r in self.routes.items()}

    # -- gates -----------------------------------------------------------------------------------
    def add_gates(self, names: tuple[str, ...], config: MoEConfig) -> None:
        first = self.students[0]
        for t in self.tasks:
            z_dim = self.specs[self.routes[t][0][0]].expert.z_dim
            for name in names:
                self.gates[f"{t}/{name}"] = build_gate(
                    name, z_dim, config, n_experts=len(self.routes[t]),
                    in_dim=first.steps * first.n_features, steps=first.steps,
                    expert_regimes=self.expert_regimes(t))

    def gate_names(self) -> list[str]:
        return list(dict.fromkeys(k.split("/", 1)[1] for k in self.gates))

    def mix(self, outputs, x, regime, gate: str) -> MixtureOutput:
        ys, weights, expert_y = [], {}, {}
        for t in self.tasks:
            z, y = outputs[t]
            key = f"{t}/{gate}"
            if key not in self.gates:
                raise InputError("gate not fitted for this mixture", field="gate",
                                 expected=", ".join(self.gate_names()), got=gate)
            w = self.gates[key](z, y, x, regime)
            ys.append((w * y).sum(dim=1))
            weights[t], expert_y[t] = w, y
        return MixtureOutput(torch.stack(ys, dim=1), weights, expert_y)

    def forward(self, x: torch.Tensor, regime: torch.Tensor | None = None,
                gate: str = "hajek") -> MixtureOutput:
        return self.mix(self.expert_outputs(x), x, regime, gate)

    def to_units(self, y: torch.Tensor) -> torch.Tensor:
        return y * self.y_std + self.y_mean

    @torch.no_grad()
    def predict(self, x: np.ndarray, regime: np.ndarray | None = None, gate: str = "hajek",
                batch_size: int = 1024) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(N, T) predictions in units and per-task weights (N, M), in batches."""
        preds, weights = [], {t: [] for t in self.tasks}
        for s in range(0, len(x), batch_size):
            xb = torch.from_numpy(np.ascontiguousarray(x[s:s + batch_size], np.float32))
            rb = None if regime is None else torch.as_tensor(regime[s:s + batch_size])
            out = self(xb, rb, gate)
            preds.append(self.to_units(out.y).numpy())
            for t in self.tasks:
                weights[t].append(out.weights[t].numpy())
        return np.concatenate(preds), {t: np.concatenate(w) for t, w in weights.items()}


def fit_gates(model: MixtureModel, x: np.ndarray, y_units: np.ndarray,
              regime: np.ndarray | None, config: MoEConfig,
              names: tuple[str, ...] | None = None) -> dict:
    """Fit every gate with parameters (``names`` restricts them) on (x, y) with the experts
    frozen; returns a record per gate and task. ``y_units``: (N, 3) targets in units."""
    names = tuple(names or model.gate_names())
    xt = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    cols = [TASKS.index(t) for t in model.tasks]
    y = (torch.from_numpy(np.asarray(y_units, np.float32)[:, cols]) - model.y_mean) / model.y_std
    rt = None if regime is None else torch.as_tensor(np.asarray(regime, np.int64))
    n = len(xt)
    cut = int(round(n * (1 - config.holdout_fraction)))
    if cut < 1 or cut >= n:
        raise InputError("too few samples to fit and early-stop the gates", field="samples",
                         expected=">= 2", got=n)
    outputs = model.expert_outputs(xt)
    records: dict = {}
    for name in names:
        for ti, t in enumerate(model.tasks):
            gate = model.gates[f"{t}/{name}"]
            if not getattr(gate, "has_parameters", False) or len(model.routes[t]) < 2:
                continue
            torch.manual_seed(config.seed)
            for module in gate.modules():  # re-draw from the seed: same seed, same gate
                if hasattr(module, "reset_parameters"):
                    module.reset_parameters()
            records[f"{t}/{name}"] = _fit_one(gate, outputs[t], xt, y[:, ti], rt, cut, config)
    return records


def _fit_one(gate: nn.Module, zy, x, y, regime, cut: int, config: MoEConfig) -> dict:
    z, ey = zy
    params = [p for p in gate.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    gen = torch.Generator().manual_seed(config.seed)
    batch = config.batch_size or cut
    steps = max(1, math.ceil(cut / batch))

    def loss_on(idx) -> torch.Tensor:
        r = None if regime is None else regime[idx]
        w = gate(z[idx], ey[idx], x[idx], r)
        return (((w * ey[idx]).sum(dim=1) - y[idx]) ** 2).mean()

    hold = torch.arange(cut, len(x))

    def holdout() -> float:
        with torch.no_grad():
            return float(loss_on(hold))

    best, best_epoch, bad = holdout(), 0, 0
    best_state = {k: v.clone() for k, v in gate.state_dict().items()}
    initial = best
    for epoch in range(1, config.epochs + 1):
        order = torch.randperm(cut, generator=gen)
        for b in range(steps):
            loss = loss_on(order[b * batch:(b + 1) * batch])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        val = holdout()
        if val < best - 1e-8:
            best, best_epoch, bad = val, epoch, 0
            best_state = {k: v.clone() for k, v in gate.state_dict().items()}
        else:
            bad += 1
            if bad >= config.patience:
                break
    gate.load_state_dict(best_state)
    return {"initial_holdout_mse": initial, "best_holdout_mse": best, "best_epoch": best_epoch,
            "epochs_run": epoch, "fit_samples": cut, "holdout_samples": len(x) - cut}


def random_mixture(window: int, n_features: int, distill=None, moe: MoEConfig | None = None,
                   num_blocks: int = 3, seed: int = 0, variant: str = "cmm") -> MixtureModel:
    """An untrained mixture of the shape a config gives (tests and latency benchmarks): the
    students as :func:`~cmm.distill.plan.build_variants` sizes them, weights drawn from ``seed``
    (Hajek kernel and router included), target scaling 0/1."""
    from cmm.config import DistillConfig
    from cmm.distill.plan import build_variants
    from cmm.distill.students import build_student
    from cmm.probe.fluorescent import group_names, layer_groups

    distill = distill or DistillConfig()
    moe = moe or MoEConfig()
    n_groups = min(3, num_blocks)
    groups = dict(zip(group_names(n_groups), layer_groups(num_blocks, n_groups), strict=True))
    names = list(groups)
    assignment = distill.assignment or {t: names[min(i, len(names) - 1)]
                                        for i, t in enumerate(TASKS)}
    steps = distill.expert.input_steps or window
    variants = {v.name: v for v in build_variants(distill, groups, assignment, num_blocks,
                                                  steps * n_features)}
    v = variants[variant]
    torch.manual_seed(seed)
    students = [build_student(window, n_features, len(s.tasks), s.expert).eval()
                for s in v.students]
    model = MixtureModel(v.students, students, v.routes, np.zeros(3), np.ones(3))
    multi = any(len(r) > 1 for r in model.routes.values())
    model.add_gates(tuple(moe.gates) if multi else ("mean",), moe)
    return model.eval()
