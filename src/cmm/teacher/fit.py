"""Fitting the teacher on the training split, with early stopping on validation.

The test split is read only by ``evaluate`` (after the fit, for the report); nothing here sees
it. Loss: the weighted mean of the three standardised targets' squared errors. Validation is
checked ``evals_per_epoch`` times per epoch; the best checkpoint (trainable part only) is kept
and restored; training stops after ``patience`` checks without improvement, after ``epochs``,
or when ``max_train_seconds`` of training have passed (recorded as ``stopped_by``).
"""

from __future__ import annotations

import math
import os
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from cmm.config import TeacherConfig
from cmm.teacher.backbone import load_backbone
from cmm.teacher.data import TeacherDataset
from cmm.teacher.model import TeacherModel, build_teacher

# on_progress(stage, done, total): a hook for progress bars
ProgressFn = Callable[[str, int, int], None]


def _noop(stage: str, done: int, total: int) -> None:
    pass


def set_threads(threads: int) -> int:
    n = threads or os.cpu_count() or 1
    torch.set_num_threads(n)
    return n


def resolve_device(device: str) -> torch.device:
    if device == "cuda" and not torch.cuda.is_available():
        from cmm.errors import InputError

        raise InputError("CUDA requested but torch sees no GPU", field="device",
                         expected="cpu on this machine", got="cuda")
    return torch.device(device)


def peak_memory_mib() -> float:
    """Peak resident memory of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


@torch.inference_mode()
def predict_windows(model: TeacherModel, windows: np.ndarray, batch_size: int = 256,
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
            feats[start:start + len(x)] = out.hidden.float().cpu().numpy().astype(np.float16)
        on_progress(stage, min(start + batch_size, n), n)
    return preds, feats


@torch.inference_mode()
def _pooled(model: TeacherModel, windows: np.ndarray, batch_size: int) -> np.ndarray:
    out = []
    device = next(model.adapter.parameters()).device
    for start in range(0, len(windows), batch_size):
        x = torch.from_numpy(np.ascontiguousarray(windows[start:start + batch_size])).to(device)
        out.append(model._pool(model.final_state(x)).double().cpu().numpy())
    return np.concatenate(out)


def init_heads(model: TeacherModel, x_train: np.ndarray, y_train: np.ndarray,
               x_val: np.ndarray, y_val: np.ndarray, alphas: tuple[float, ...],
               batch_size: int) -> dict:
    """Linear-probe warm start (LP-FT, Kumar et al. 2022): standardise the pooled final state
    with statistics of ``x_train`` and set each linear head to the ridge solution on it, the
    penalty chosen on ``(x_val, y_val)``. Targets are standardised. Returns what was chosen."""
    from cmm.yardsticks import RidgeBaseline

    model.eval()
    f_train = _pooled(model, x_train, batch_size)
    mean, std = f_train.mean(axis=0), f_train.std(axis=0)
    std = np.maximum(std, 1e-3 * float(std.mean()) + 1e-12)  # near-constant dimensions stay put
    model.feat_mean.copy_(torch.as_tensor(mean, dtype=torch.float32))
    model.feat_std.copy_(torch.as_tensor(std, dtype=torch.float32))
    if model.config.head_hidden:
        return {"head_init": "standardisation only (heads with a hidden layer)"}
    f_val = _pooled(model, x_val, batch_size)
    ridge = RidgeBaseline(alphas).fit(((f_train - mean) / std)[:, None], y_train,
                                      ((f_val - mean) / std)[:, None], y_val)
    with torch.no_grad():
        for k, head in enumerate(model.heads):
            head.weight.copy_(torch.as_tensor(ridge.coef_[:, k], dtype=torch.float32)[None])
            head.bias.copy_(torch.tensor([ridge.y_mean_[k] - float(
                (ridge.x_mean_ @ ridge.coef_[:, k]))], dtype=torch.float32))
    return {"head_init": "ridge", "windows": len(x_train),
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


def fit_teacher(dataset: TeacherDataset, config: TeacherConfig | None = None,
                on_progress: ProgressFn = _noop) -> FitResult:
    """Load the backbone, build the teacher, fit adapter and heads (and norms or LoRA) on the
    training split; return the model with its best validation checkpoint restored."""
    config = config or TeacherConfig()
    t_start = time.perf_counter()
    threads = set_threads(config.threads)
    device = resolve_device(config.device)
    torch.manual_seed(config.seed)

    x_train_all = dataset.windows("train")
    y_train_all = dataset.targets("train")
    mean = y_train_all.mean(axis=0)
    std = y_train_all.std(axis=0) + 1e-8
    y_train_std = ((y_train_all - mean) / std).astype(np.float32)
    stride = config.train_stride
    # Epoch e reads windows e mod stride, e mod stride + stride, ...: neighbouring windows overlap
    # in W - 1 of W steps, so one epoch sees nearly all the information at 1/stride of the cost,
    # and `stride` epochs see every window once.
    subsets = [np.arange(offset, len(x_train_all), stride) for offset in range(stride)]
    x_val = dataset.windows("validation")
    y_val = dataset.targets("validation")
    if len(x_val) == 0:
        from cmm.errors import InputError

        raise InputError(f"dataset '{getattr(dataset, 'name', '?')}' has no validation windows, "
                         "which the teacher's early stopping needs: raise data.splits.validation "
                         "or lower data.features.horizon / data.splits.purge (the gap after "
                         "each split boundary), and prepare it again",
                         field="data.splits.validation")
    if config.max_eval_windows and len(x_val) > config.max_eval_windows:
        pick = np.linspace(0, len(x_val) - 1, config.max_eval_windows).round().astype(int)
        x_val, y_val = x_val[pick], y_val[pick]
    y_val = ((y_val - mean) / std).astype(np.float32)

    backbone = load_backbone(config.backbone)
    model = build_teacher(backbone, x_train_all.shape[1], x_train_all.shape[2], config, mean, std)
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    epoch_steps = [math.ceil(len(subsets[e % stride]) / config.batch_size)
                   for e in range(config.epochs)]
    steps_per_epoch = epoch_steps[0]
    total_steps = sum(epoch_steps)
    warmup = max(1, total_steps // 20)

    def lr_at(step: int) -> float:  # linear warm-up, cosine decay to 10 %
        if step < warmup:
            return config.lr * (step + 1) / warmup
        t = (step - warmup) / max(1, total_steps - warmup)
        return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))

    weights = torch.tensor(config.task_weights, dtype=torch.float32, device=device)
    weights = weights / weights.sum()
    eval_every = max(1, steps_per_epoch // config.evals_per_epoch)
    gen = torch.Generator().manual_seed(config.seed)
    result = FitResult(model=model, threads=threads, train_windows=len(x_train_all),
                       trainable_parameters=sum(p.numel() for p in params))
    best_loss, best_state, bad_checks, step = math.inf, None, 0, 0
    t_train = time.perf_counter()

    def validate() -> tuple[float, list[float]]:
        pred, _ = predict_windows(model, x_val, config.infer_batch_size)
        per_task = ((pred - y_val) ** 2).mean(axis=0)
        return float((per_task * weights.cpu().numpy()).sum()), per_task.tolist()

    if config.head_init_windows:
        pick = np.linspace(0, len(x_train_all) - 1,
                           min(config.head_init_windows, len(x_train_all))).round().astype(int)
        result.head_init = init_heads(model, x_train_all[pick], y_train_std[pick], x_val, y_val,
                                      config.ridge_alphas, config.infer_batch_size)
        result.head_init["seconds"] = time.perf_counter() - t_train
        on_progress("fit", 0, total_steps)
    # The starting point is a checkpoint too: fine-tuning must beat it to replace it.
    val_loss, val_tasks = validate()
    best_loss, best_state = val_loss, model.trainable_state()
    result.best = {"step": 0, "epoch": 0.0, "train_loss": None, "val_loss": val_loss,
                   "val_mse_std": dict(zip(("mid", "spread", "volume"), val_tasks, strict=True)),
                   "seconds": time.perf_counter() - t_train}
    result.history.append(result.best)

    stop = None
    running, running_n = 0.0, 0
    for epoch in range(config.epochs):
        subset = subsets[epoch % stride]
        order = subset[torch.randperm(len(subset), generator=gen).numpy()]
        for b in range(epoch_steps[epoch]):
            model.train()
            idx = np.sort(order[b * config.batch_size:(b + 1) * config.batch_size])
            x = torch.from_numpy(x_train_all[idx]).to(device)
            y = torch.from_numpy(y_train_std[idx]).to(device)
            for group in opt.param_groups:
                group["lr"] = lr_at(step)
            loss = (((model(x).y - y) ** 2).mean(dim=0) * weights).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            step += 1
            running += float(loss.detach()) * len(idx)
            running_n += len(idx)
            on_progress("fit", step, total_steps)
            last_of_epoch = b == epoch_steps[epoch] - 1
            over_time = (config.max_train_seconds > 0
                         and time.perf_counter() - t_train > config.max_train_seconds)
            if step % eval_every == 0 or last_of_epoch or over_time:
                val_loss, val_tasks = validate()
                record = {"step": step, "epoch": epoch + (b + 1) / epoch_steps[epoch],
                          "train_loss": running / max(1, running_n), "val_loss": val_loss,
                          "val_mse_std": dict(zip(("mid", "spread", "volume"), val_tasks,
                                                  strict=True)),
                          "seconds": time.perf_counter() - t_train}
                running, running_n = 0.0, 0
                result.history.append(record)
                if val_loss < best_loss - 1e-6:
                    best_loss, bad_checks = val_loss, 0
                    best_state = model.trainable_state()
                    result.best = record
                else:
                    bad_checks += 1
                if bad_checks >= config.patience:
                    stop = "early_stopping"
                elif over_time:
                    stop = "time_budget"
            if stop:
                break
        if stop:
            break
    result.stopped_by = stop or "epochs"
    if best_state is not None:
        model.load_state_dict(best_state, strict=False)
    model.eval()
    result.seconds = time.perf_counter() - t_start
    result.peak_memory_mib = peak_memory_mib()
    return result
