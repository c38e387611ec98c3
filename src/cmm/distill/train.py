"""Fitting one student: the OFDD loss, minibatch AdamW, early stopping on a stopping set.

A :class:`StudentJob` carries everything a fit needs as plain arrays (so it can travel to a
worker process): the fit set and the stopping set, each with windows, standardised truth,
standardised teacher predictions, standardised hint targets and per-sample weights. The loss per
sample is

    lambda_f * mean_j mean_d (P_j(z) - h_j)^2 + lambda_l * mean_o (y_hat - y^T)^2
        + lambda_y * mean_o (y_hat - y)^2

weighted by the sample's weight (1 for the student's own regimes, ``neighbour_weight`` for
adjacent ones). The stopping loss is the same objective on the stopping set (or its truth term
only, ``early_stopping_on="truth"``); the best epoch's weights are kept.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from cmm.config import StudentTrainConfig
from cmm.data.windows import Windows
from cmm.distill.students import HintProjections, StudentSpec, build_student, count_parameters


@dataclass
class StudentData:
    """One sample set. x: (N, W, F) windows, a view (a job sent to a worker carries the shared
    feature array once, not N stacked windows); y, t: (N, O) standardised truth and teacher
    predictions; hints: [(N, d_j)] standardised teacher features; w: (N,) sample weights."""

    x: Windows
    y: np.ndarray
    t: np.ndarray
    hints: list[np.ndarray]
    w: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    def take(self, idx: np.ndarray) -> StudentData:
        return StudentData(self.x.take(idx), self.y[idx], self.t[idx],
                           [h[idx] for h in self.hints], self.w[idx])


@dataclass
class StudentJob:
    spec: StudentSpec
    fit: StudentData
    stop: StudentData
    train: StudentTrainConfig
    stop_source: str  # "validation" or "train-tail": where early stopping looked
    threads: int = 1


@dataclass
class StudentResult:
    """The fitted student's tensors (numpy, decision path) and projections, and its record."""

    spec: StudentSpec
    state: dict[str, np.ndarray]
    projections: dict[str, np.ndarray]
    record: dict = field(default_factory=dict)


def _tensors(d: StudentData, windows: bool = True) -> tuple:
    """Torch tensors of ``d``; the windows stay a view unless ``windows`` (then stacked)."""
    return (torch.from_numpy(np.asarray(d.x, np.float32)) if windows else d.x,
            torch.from_numpy(np.ascontiguousarray(d.y, np.float32)),
            torch.from_numpy(np.ascontiguousarray(d.t, np.float32)),
            [torch.from_numpy(np.ascontiguousarray(h, np.float32)) for h in d.hints],
            torch.from_numpy(np.ascontiguousarray(d.w, np.float32)))


def student_loss(student, proj: HintProjections, x, y, t, hints, w,
                 lambdas: tuple[float, float, float]) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted mean of the per-sample OFDD loss; also each term's weighted mean."""
    lam_f, lam_l, lam_y = lambdas
    out = student(x)
    wsum = w.sum().clamp_min(1e-12)
    truth = ((out.y - y) ** 2).mean(dim=1)
    logit = ((out.y - t) ** 2).mean(dim=1)
    if hints and lam_f > 0:
        feat = torch.stack([((p - h) ** 2).mean(dim=1) for p, h in zip(proj(out.z), hints,
                                                                          strict=True)]).mean(0)
    else:
        feat = torch.zeros_like(truth)
    per_sample = lam_f * feat + lam_l * logit + lam_y * truth
    with torch.no_grad():
        terms = {name: float((v * w).sum() / wsum)
                 for name, v in (("feature", feat), ("logit", logit), ("truth", truth))}
    return (per_sample * w).sum() / wsum, terms


def train_student(job: StudentJob) -> StudentResult:
    """Fit one student (deterministic given ``job.train.seed`` + the spec's seed)."""
    t0 = time.perf_counter()
    torch.set_num_threads(job.threads)
    spec, cfg = job.spec, job.train
    seed = cfg.seed * 1_000_003 + spec.seed
    torch.manual_seed(seed)
    _, window, n_features = job.fit.x.shape
    student = build_student(window, n_features, len(spec.tasks), spec.expert)
    proj = HintProjections(student.z_dim, [h.shape[1] for h in job.fit.hints])
    params = list(student.parameters()) + list(proj.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    fx, fy, ft, fh, fw = _tensors(job.fit, windows=False)  # batches cut from the view below
    sx, sy, st, sh, sw = _tensors(job.stop)
    stop_lambdas = spec.lambdas if cfg.early_stopping_on == "objective" else (0.0, 0.0, 1.0)
    gen = torch.Generator().manual_seed(seed)
    n = len(fx)
    steps = max(1, math.ceil(n / cfg.batch_size))

    def stopping_loss() -> tuple[float, dict]:
        student.eval()
        with torch.no_grad():
            loss, terms = student_loss(student, proj, sx, sy, st, sh, sw, stop_lambdas)
        student.train()
        return float(loss), terms

    best, best_epoch, bad, history = math.inf, 0, 0, []
    best_state = None
    stopped_by = "epochs"
    for epoch in range(1, cfg.epochs + 1):
        order = torch.randperm(n, generator=gen)
        running = 0.0
        for b in range(steps):
            idx = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            xb = torch.from_numpy(fx[idx.numpy()])
            loss, _ = student_loss(student, proj, xb, fy[idx], ft[idx],
                                   [h[idx] for h in fh], fw[idx], spec.lambdas)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            running += float(loss.detach()) * len(idx)
        val, terms = stopping_loss()
        history.append({"epoch": epoch, "train_loss": running / n, "stop_loss": val,
                        "stop_terms": terms})
        if val < best - 1e-7:
            best, best_epoch, bad = val, epoch, 0
            best_state = ({k: v.clone() for k, v in student.state_dict().items()},
                          {k: v.clone() for k, v in proj.state_dict().items()})
        else:
            bad += 1
            if bad >= cfg.patience:
                stopped_by = "early_stopping"
                break
    if best_state is not None:
        student.load_state_dict(best_state[0])
        proj.load_state_dict(best_state[1])
    record = {"best_epoch": best_epoch, "best_stop_loss": best, "stopped_by": stopped_by,
              "epochs_run": len(history), "history": history, "fit_samples": int(n),
              "stop_samples": int(len(sx)), "stop_source": job.stop_source,
              "parameters": count_parameters(student),
              "projection_parameters": count_parameters(proj),
              "seconds": time.perf_counter() - t0}
    return StudentResult(spec=spec,
                         state={k: v.detach().numpy().copy() for k, v in
                                student.state_dict().items()},
                         projections={k: v.detach().numpy().copy() for k, v in
                                      proj.state_dict().items()},
                         record=record)


def load_student(result_or_spec, state: dict[str, np.ndarray], window: int, n_features: int):
    """Rebuild a torch student from its spec and numpy state (eval mode, frozen)."""
    spec = result_or_spec.spec if isinstance(result_or_spec, StudentResult) else result_or_spec
    student = build_student(window, n_features, len(spec.tasks), spec.expert)
    student.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in state.items()})
    for p in student.parameters():
        p.requires_grad_(False)
    return student.eval()
