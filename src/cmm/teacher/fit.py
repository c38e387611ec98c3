"""Fitting the teacher on the training split, with early stopping on validation.

The test split is read only by ``evaluate`` (after the fit, for the report); nothing here sees
it. The validation split that early stopping reads is cut from the training data by the data
layer's purge (``H + W`` steps after each split boundary), so no validation window shares a
step with a training window or its target.

Loss: the weighted mean of the three standardised targets' squared errors. The budget is
``epochs`` (and ``max_steps``, when set) of optimizer steps; validation is checked
``evals_per_epoch`` times per epoch, the best checkpoint (trainable part only) is kept and
restored, and training stops after ``patience`` checks without improvement. The learning rate
warms up linearly and decays along a cosine over the steps the budget allows: the planned steps,
or, when ``max_train_seconds`` (a safety cap) would bind first, the steps that fit in it at the
measured rate, so the decay completes either way. ``stopped_by`` says which limit ended the fit.

A fit given a checkpoint folder saves its state at every validation check and resumes from it
when restarted with the same settings and data: the resumed fit ends with the same weights as an
uninterrupted one (the cap aside, which depends on the clock).
"""

from __future__ import annotations

import math
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from cmm.config import TeacherConfig
from cmm.errors import InputError
from cmm.io import atomic_path, stable_hash
from cmm.teacher.backbone import load_backbone
from cmm.teacher.data import TeacherDataset
from cmm.teacher.device import resolve_device, uses_bf16
from cmm.teacher.model import TeacherModel, build_teacher
from cmm.vocabulary import TASKS

__all__ = ["FitResult", "fit_teacher", "predict_windows", "resolve_device", "set_threads",
           "peak_memory_mib"]

# on_progress(stage, done, total): a hook for progress bars
ProgressFn = Callable[[str, int, int], None]
CHECKPOINT_FILE = "fit-checkpoint.pt"


def _noop(stage: str, done: int, total: int) -> None:
    pass


def set_threads(threads: int) -> int:
    n = threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def peak_memory_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@torch.inference_mode()
def predict_windows(model: TeacherModel, windows, batch_size: int = 256,
                    hidden: bool = False, on_progress: ProgressFn = _noop, stage: str = "predict"
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """Standardised predictions (N, 3) float32 and, with ``hidden``, pooled block outputs
    (N, L, d) float16, in batches."""
    model.eval()
    device = next(model.adapter.parameters()).device
    n = len(windows)
    preds = np.empty((n, 3), np.float32)
    feats = np.empty((n, model.num_blocks, model.width), np.float16) if hidden else None
    for start in range(0, n, batch_size):
        x = torch.from_numpy(np.ascontiguousarray(windows[start:start + batch_size])).to(device)
        out = model(x, hidden=hidden)
        preds[start:start + len(x)] = out.y.float().cpu().numpy()
        if hidden:
            feats[start:start + len(x)] = out.hidden.to(torch.float16).cpu().numpy()
        on_progress(stage, min(start + batch_size, n), n)
    return preds, feats


@torch.inference_mode()
def _pooled(model: TeacherModel, windows, batch_size: int) -> np.ndarray:
    out = []
    device = next(model.adapter.parameters()).device
    for start in range(0, len(windows), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(windows[start:start + batch_size])).to(device)
        out.append(model._pool(model.final_state(x)).double().cpu().numpy())
    return np.concatenate(out)


def _level_ridge(model: TeacherModel, s_train: np.ndarray, y_train: np.ndarray,
                 s_val: np.ndarray, y_val: np.ndarray, alphas: tuple[float, ...]):
    """The level skip's ridge on the level (summary features) of every training window, set
    into ``model.level_head``; cheap: no backbone pass."""
    from cmm.yardsticks import RidgeBaseline

    ridge = RidgeBaseline(alphas).fit(s_train, y_train, s_val, y_val)
    with torch.no_grad():
        model.level_head.weight.copy_(torch.as_tensor(ridge.coef_.T, dtype=torch.float32))
        model.level_head.bias.copy_(torch.as_tensor(
            ridge.y_mean_ - ridge.x_mean_ @ ridge.coef_, dtype=torch.float32))
    return ridge


def init_heads(model: TeacherModel, x_train, y_train: np.ndarray, x_val, y_val: np.ndarray,
               alphas: tuple[float, ...], batch_size: int, pick: np.ndarray) -> dict:
    """Linear-probe warm start (LP-FT, Kumar et al. 2022). With the level skip, its ridge is fitted
    first on all training windows; then the pooled final state of the windows ``pick`` is
    standardised (statistics of those windows) and each linear head set to the ridge solution
    of what the level leaves, the penalty chosen on ``(x_val, y_val)``. Targets standardised."""
    from cmm.yardsticks import RidgeBaseline, summary_features

    model.eval()
    info: dict = {}
    y_rest_train, y_rest_val = y_train[pick], y_val
    if model.level_head is not None:
        spans = model.config.level_spans
        s_train, s_val = summary_features(x_train, spans), summary_features(x_val, spans)
        level = _level_ridge(model, s_train, y_train, s_val, y_val, alphas)
        y_rest_train = y_train[pick] - level.predict(s_train[pick])
        y_rest_val = y_val - level.predict(s_val)
        info["level"] = {"windows": len(x_train), "alpha": level.alpha_,
                         "val_mse_std": level.val_mse_}
    x_pick = x_train.take(pick)
    f_train = _pooled(model, x_pick, batch_size)
    mean, std = f_train.mean(axis=0), f_train.std(axis=0)
    std = np.maximum(std, 1e-3 * float(std.mean()) + 1e-12)  # near-constant dimensions stay put
    model.feat_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
    model.feat_std.copy_(torch.as_tensor(std, dtype=torch.float32))
    if model.config.head_hidden:
        return {**info, "head_init": "standardisation only (heads with a hidden layer)"}
    f_val = _pooled(model, x_val, batch_size)
    ridge = RidgeBaseline(alphas).fit((f_train - mean) / std, y_rest_train,
                                      (f_val - mean) / std, y_rest_val)
    with torch.no_grad():
        for k, head in enumerate(model.heads):
            head.weight.copy_(torch.as_tensor(ridge.coef_[:, k], dtype=torch.float32)[None])
            head.bias.copy_(torch.tensor([ridge.y_mean_[k] - float(
                (ridge.x_mean_ @ ridge.coef_[:, k]))], dtype=torch.float32))
    return {**info, "head_init": "ridge", "windows": len(pick),
            "alpha": ridge.alpha_, "val_mse_std": ridge.val_mse_}


@dataclass
class FitResult:
    model: TeacherModel
    history: list[dict] = field(default_factory=list)
    best: dict = field(default_factory=dict)
    stopped_by: str = "epochs"
    seconds: float = 0.0
    threads: int = 1
    peak_memory_mib: float = 0.0
    train_windows: int = 0
    trainable_parameters: int = 0
    head_init: dict = field(default_factory=dict)
    planned_steps: int = 0
    steps: int = 0
    device: str = "cpu"
    precision: str = "fp32"
    resumed_from_step: int | None = None


@dataclass
class _Data:
    """The fit's inputs: training windows (a view) with standardised targets, the validation
    windows of the early-stopping checks, and the per-epoch window subsets."""

    x_train: object
    y_train: np.ndarray  # standardised
    x_val: object
    y_val: np.ndarray  # standardised
    mean: np.ndarray
    std: np.ndarray
    subsets: list[np.ndarray]


def _fit_data(dataset: TeacherDataset, config: TeacherConfig) -> _Data:
    x_train = dataset.windows("train")
    y_all = dataset.targets("train")
    mean = y_all.mean(axis=0)
    std = y_all.std(axis=0) + 1e-8
    x_val = dataset.windows("validation")
    y_val = dataset.targets("validation")
    if len(x_val) == 0:
        raise InputError(f"dataset '{getattr(dataset, 'name', '?')}' has no validation windows, "
                         "which the teacher's early stopping needs: raise data.splits.validation "
                         "or lower data.features.horizon / data.splits.purge (the gap after "
                         "each split boundary), and prepare it again",
                         field="data.splits.validation")
    if config.max_eval_windows and len(x_val) > config.max_eval_windows:
        pick = np.linspace(0, len(x_val) - 1, config.max_eval_windows).round().astype(int)
        x_val, y_val = x_val.take(pick), y_val[pick]
    stride = config.train_stride
    # Epoch e reads windows e mod stride, e mod stride + stride, ...: neighbouring windows overlap
    # in W - 1 of W steps, so one epoch sees nearly all the information at 1/stride of the cost,
    # and `stride` epochs see every window once.
    subsets = [np.arange(offset, len(x_train), stride) for offset in range(stride)]
    return _Data(x_train, ((y_all - mean) / std).astype(np.float32), x_val,
                 ((y_val - mean) / std).astype(np.float32), mean, std, subsets)


class _Schedule:
    """Linear warm-up over 5 % of the steps, then a cosine decay to 10 % of ``lr`` over the
    steps the budget allows (re-planned from the measured rate when the cap would bind)."""

    def __init__(self, lr: float, planned: int, cap_seconds: float) -> None:
        self.lr, self.planned, self.cap = lr, planned, cap_seconds
        self.total = planned
        self.warmup = max(1, planned // 20)

    def replan(self, step: int, elapsed: float) -> None:
        if self.cap > 0 and step >= self.warmup and elapsed > 0:
            fits = int(step / elapsed * self.cap)
            self.total = max(step + 1, min(self.planned, fits))

    def __call__(self, step: int) -> float:
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        t = (step - self.warmup) / max(1, self.total - self.warmup)
        return self.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _fingerprint(dataset: TeacherDataset, config: TeacherConfig, data: _Data) -> str:
    return stable_hash({"config": config.model_dump(mode="json"),
                        "data": getattr(dataset, "cache_key", None),
                        "shape": list(data.x_train.shape)})


def _save_checkpoint(path: Path, state: dict) -> None:
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _load_checkpoint(path: Path | None, fingerprint: str) -> dict | None:
    if path is None or not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception:  # a damaged checkpoint is only lost time: start over
        return None
    return state if state.get("fingerprint") == fingerprint else None


def fit_teacher(dataset: TeacherDataset, config: TeacherConfig | None = None,
                on_progress: ProgressFn = _noop, checkpoint_dir: str | Path | None = None
                ) -> FitResult:
    """Load the backbone, build the teacher, fit adapter, heads and level skip (and norms or
    LoRA) on the training split; return the model with its best validation checkpoint
    restored. With ``checkpoint_dir`` the fit resumes from (and keeps) its last check there."""
    config = config or TeacherConfig()
    t_start = time.perf_counter()
    threads = set_threads(config.threads)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)
    data = _fit_data(dataset, config)
    backbone = load_backbone(config.backbone)
    model = build_teacher(backbone, data.x_train.shape[1], data.x_train.shape[2], config,
                          data.mean, data.std).to(device)
    result = FitResult(model=model, threads=threads, train_windows=len(data.x_train),
                       device=device.type,
                       precision="bf16" if uses_bf16(config.precision, device) else "fp32")
    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_FILE if checkpoint_dir else None
    fingerprint = _fingerprint(dataset, config, data)
    resume = _load_checkpoint(ckpt_path, fingerprint)
    loop = _Loop(model, data, config, device, result, on_progress)
    if resume is None:
        loop.start()
    else:
        loop.restore(resume)
    loop.train(lambda state: ckpt_path and _save_checkpoint(
        ckpt_path, {"fingerprint": fingerprint, **state}))
    if loop.best_state is not None:
        model.load_state_dict(loop.best_state, strict=False)
    model.eval()
    if ckpt_path is not None and ckpt_path.exists():
        ckpt_path.unlink()
    result.seconds = time.perf_counter() - t_start
    result.peak_memory_mib = peak_memory_mib()
    return result


class _Loop:
    """The training loop's state, so that it can be checkpointed at a validation check and
    resumed there: step, position in the epoch, optimizer, data order, best checkpoint."""

    def __init__(self, model: TeacherModel, data: _Data, config: TeacherConfig,
                 device: torch.device, result: FitResult, on_progress: ProgressFn) -> None:
        self.model, self.data, self.config, self.device = model, data, config, device
        self.result, self.on_progress = result, on_progress
        self.params = [p for p in model.parameters() if p.requires_grad]
        result.trainable_parameters = sum(p.numel() for p in self.params)
        self.opt = torch.optim.AdamW(self.params, lr=config.lr, weight_decay=config.weight_decay)
        stride = len(data.subsets)
        self.epoch_steps = [math.ceil(len(data.subsets[e % stride]) / config.batch_size)
                            for e in range(config.epochs)]
        planned = sum(self.epoch_steps)
        if config.max_steps:
            planned = min(planned, config.max_steps)
        result.planned_steps = planned
        self.schedule = _Schedule(config.lr, planned, config.max_train_seconds)
        w = torch.tensor(config.task_weights, dtype=torch.float32)
        self.weights = (w / w.sum()).to(device)
        self.eval_every = max(1, self.epoch_steps[0] // config.evals_per_epoch)
        self.gen = torch.Generator().manual_seed(config.seed)
        self.step, self.epoch, self.batch, self.order = 0, 0, 0, None
        self.best_loss, self.best_state, self.bad_checks = math.inf, None, 0
        self.running, self.running_n, self.elapsed_before = 0.0, 0, 0.0

    # -- checks ----------------------------------------------------------------------------------
    def validate(self) -> tuple[float, list[float]]:
        pred, _ = predict_windows(self.model, self.data.x_val, self.config.infer_batch_size)
        per_task = ((pred - self.data.y_val) ** 2).mean(axis=0)
        return float((per_task * self.weights.cpu().numpy()).sum()), per_task.tolist()

    def check(self, seconds: float) -> bool:
        """Validate, keep the best; True when patience has run out."""
        val_loss, val_tasks = self.validate()
        n = self.epoch_steps[min(self.epoch, len(self.epoch_steps) - 1)]
        record = {"step": self.step, "epoch": self.epoch + self.batch / n,
                  "train_loss": self.running / self.running_n if self.running_n else None,
                  "val_loss": val_loss, "val_mse_std": dict(zip(TASKS, val_tasks, strict=True)),
                  "seconds": seconds, "lr": self.schedule(max(0, self.step - 1))}
        self.running, self.running_n = 0.0, 0
        self.result.history.append(record)
        if val_loss < self.best_loss - 1e-6:
            self.best_loss, self.bad_checks = val_loss, 0
            self.best_state = self.model.trainable_state()
            self.result.best = record
        else:
            self.bad_checks += 1
        return self.bad_checks >= self.config.patience

    def start(self) -> None:
        """Warm start (ridge heads), then the starting point is the first checkpoint:
        fine-tuning must beat it to replace it."""
        t0 = time.perf_counter()
        cfg, data = self.config, self.data
        if cfg.head_init_windows:
            pick = np.linspace(0, len(data.x_train) - 1, min(cfg.head_init_windows,
                               len(data.x_train))).round().astype(int)
            self.result.head_init = init_heads(self.model, data.x_train, data.y_train,
                                               data.x_val, data.y_val, cfg.ridge_alphas,
                                               cfg.infer_batch_size, pick)
            self.result.head_init["seconds"] = time.perf_counter() - t0
        self.on_progress("fit", 0, self.result.planned_steps)
        self.elapsed_before = time.perf_counter() - t0
        self.check(self.elapsed_before)

    # -- checkpoint ------------------------------------------------------------------------------
    def state(self, seconds: float) -> dict:
        return {"model": self.model.trainable_state(), "opt": self.opt.state_dict(),
                "gen": self.gen.get_state(), "order": self.order, "step": self.step,
                "epoch": self.epoch, "batch": self.batch, "best_loss": self.best_loss,
                "best_state": self.best_state, "bad_checks": self.bad_checks,
                "history": self.result.history, "best": self.result.best,
                "head_init": self.result.head_init, "seconds": seconds,
                "schedule_total": self.schedule.total}

    def restore(self, s: dict) -> None:
        self.model.load_state_dict(s["model"], strict=False)
        self.opt.load_state_dict(s["opt"])
        self.gen.set_state(s["gen"])
        self.order, self.step, self.epoch, self.batch = s["order"], s["step"], s["epoch"], s["batch"]
        self.best_loss, self.best_state, self.bad_checks = (s["best_loss"], s["best_state"],
                                                            s["bad_checks"])
        self.result.history, self.result.best = s["history"], s["best"]
        self.result.head_init = s["head_init"]
        self.result.resumed_from_step = s["step"]
        self.schedule.total = s["schedule_total"]
        self.elapsed_before = s["seconds"]

    # -- training --------------------------------------------------------------------------------
    def _one_step(self, idx: np.ndarray) -> None:
        self.model.train()
        x = torch.from_numpy(np.ascontiguousarray(self.data.x_train[idx])).to(self.device)
        y = torch.from_numpy(self.data.y_train[idx]).to(self.device)
        for group in self.opt.param_groups:
            group["lr"] = self.schedule(self.step)
        loss = (((self.model(x).y - y) ** 2).mean(dim=0) * self.weights).sum()
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.opt.step()
        self.step += 1
        self.running += float(loss.detach()) * len(idx)
        self.running_n += len(idx)

    def train(self, save: Callable[[dict], object]) -> None:
        cfg, result = self.config, self.result
        t0 = time.perf_counter() - self.elapsed_before
        stop = None
        while stop is None and self.epoch < cfg.epochs:
            if self.order is None:
                subset = self.data.subsets[self.epoch % len(self.data.subsets)]
                self.order = subset[torch.randperm(len(subset), generator=self.gen).numpy()]
            n = self.epoch_steps[self.epoch]
            while self.batch < n:
                b = self.batch
                self._one_step(np.sort(self.order[b * cfg.batch_size:(b + 1) * cfg.batch_size]))
                self.batch += 1
                self.on_progress("fit", self.step, self.schedule.total)
                elapsed = time.perf_counter() - t0
                over_time = cfg.max_train_seconds > 0 and elapsed > cfg.max_train_seconds
                at_max = self.step >= result.planned_steps
                if self.step % self.eval_every == 0 or self.batch == n or over_time or at_max:
                    self.schedule.replan(self.step, elapsed)
                    if self.check(elapsed):
                        stop = "early_stopping"
                    elif at_max and cfg.max_steps:
                        stop = "max_steps"
                    elif over_time:
                        stop = "time_budget"
                    rollover = self.batch == n
                    if rollover:
                        self.epoch, self.batch, self.order = self.epoch + 1, 0, None
                    save(self.state(elapsed))
                    if rollover:
                        break
                if stop:
                    break
        result.stopped_by = stop or "epochs"
        result.steps = self.step
