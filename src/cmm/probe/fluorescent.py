"""The normalized fluorescent probe (method.md): light up one block at a time, watch which
output glows.

For block ``l`` of ``L``, Gaussian noise ``N(0, (alpha * s_l)^2)`` is added to the block's output
at every position, ``s_l`` being that block's output RMS on the reference batch, measured at the
positions the subject's pooled state reads (see ``scale_positions``); ``R`` draws are averaged.
The response of task ``k`` is

    D[l, k] = E_x |y_k(x; noise at l) - y_k(x)| / std_x(y_k)

(the mean over windows and draws, the std over the clean predictions of the same windows).
Two normalisations: over layers per task, ``N[l, k] = D[l, k] / sum_l D[l, k]`` (tasks become
comparable), then over tasks per layer, ``S[l, k] = N[l, k] / sum_k N[l, k]`` (rows sum to 1):
the specialisation map. It is computed on all reference windows and per regime (the std and the
expectation then run over that regime's windows). The ``L`` blocks are split into ``G``
contiguous groups (``numpy.array_split``: shallow, middle, deep for G = 3); each task gets the
group with the largest summed ``S``, distinct groups by the one-to-one assignment maximising
the total when ``G >= K``. The assignment's stability is a bootstrap of the reference windows
within each regime, reusing the per-window ``|change|`` (no further forward passes).

The subject is any model with ``blocks`` (a sequence of modules) and
``block_outputs(x) -> (list of (B, P, d) block outputs, (B, K) predictions)``. When it also has
``forward_from(l, h)`` (the teacher does), the perturbed pass restarts at block ``l`` from the
cached clean output instead of recomputing the blocks below it; otherwise the noise is added by
a forward hook on ``blocks[l]`` during a full pass. Both use the same noise draws. A
``forward_from`` with a parameter ``x`` is given the windows of the same rows, because its
read-out may add a term computed from the window itself (the teacher's level skip), which the
clean predictions include too.
"""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Callable

import numpy as np
import torch

from cmm.errors import InputError
from cmm.vocabulary import REGIMES, TASKS

PAPER_PATTERN = {"mid": 0, "spread": 1, "volume": 2}  # shallow, middle, deep (arXiv 2511.07110)


def normalise(response: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(L, K) response -> (per-task over layers N, specialisation map S with rows summing to 1).
    A column or row that is all zero stays zero."""
    col = response.sum(axis=0, keepdims=True)
    per_task = np.divide(response, col, out=np.zeros_like(response), where=col > 0)
    row = per_task.sum(axis=1, keepdims=True)
    spec = np.divide(per_task, row, out=np.zeros_like(per_task), where=row > 0)
    return per_task, spec


def layer_groups(num_blocks: int, groups: int) -> list[list[int]]:
    if groups > num_blocks:
        raise InputError("more layer groups than blocks", field="probe.groups",
                         expected=f"<= {num_blocks}", got=groups)
    return [g.tolist() for g in np.array_split(np.arange(num_blocks), groups)]


def group_names(groups: int) -> list[str]:
    return ["shallow", "middle", "deep"] if groups == 3 else [f"group{g}" for g in range(groups)]


def assign_groups(spec: np.ndarray, groups: list[list[int]]) -> tuple[np.ndarray, list[int]]:
    """Group scores (G, K) = summed S per group, and each task's group: one-to-one (maximum
    total score, ties to the earlier permutation) when G >= K, else the best group per task."""
    scores = np.stack([spec[g].sum(axis=0) for g in groups])  # (G, K)
    G, K = scores.shape
    if G < K:
        return scores, scores.argmax(axis=0).tolist()
    best, best_total = None, -np.inf
    for perm in itertools.permutations(range(G), K):
        total = sum(scores[g, k] for k, g in enumerate(perm))
        if total > best_total + 1e-12:
            best, best_total = list(perm), total
    return scores, best


def scale_positions(subject) -> str:
    """Where ``s_l`` is measured: the positions the subject's pooled state reads. ``"last"``
    for last-position pooling; ``"all_but_first"`` for mean pooling, because position 0 of a
    causal LM such as SmolLM2 is an attention sink whose activations (~3e4) would dominate the
    RMS and make the noise swamp what the pooled positions carry; ``"all"`` for a subject that
    does not say how it pools (no ``config.pooling``)."""
    pooling = getattr(getattr(subject, "config", None), "pooling", None)
    return {"last": "last", "mean": "all_but_first"}.get(pooling, "all")


def _scale_view(h: torch.Tensor, positions: str) -> torch.Tensor:
    """The part of a (B, P, d) block output that ``s_l`` is measured on."""
    if positions == "last":
        return h[:, -1:]
    if positions == "all_but_first" and h.shape[1] > 1:  # one position: nothing else to read
        return h[:, 1:]
    return h


def _forward_from_takes_x(subject) -> bool:
    fn = getattr(subject, "forward_from", None)
    if fn is None:
        return False
    try:
        return "x" in inspect.signature(fn).parameters
    except (TypeError, ValueError):  # a builtin or C callable without a signature
        return False


class FluorescentProbe:
    """Estimator: ``fit(subject, windows, regimes)`` sets ``block_rms_`` (L,),
    ``scale_positions_``, ``response_`` (L, K), ``task_norm_`` (L, K), ``map_`` (L, K),
    ``groups_``, ``group_scores_`` (G, K), ``assignment_`` ({task: group}), the same per regime
    in ``regimes_``, and the bootstrap stability in ``stability_``."""

    def __init__(self, alpha: float = 0.1, draws: int = 8, groups: int = 3,
                 batch_size: int = 128, seed: int = 0, tasks: tuple[str, ...] = TASKS,
                 bootstrap: int = 200) -> None:
        self.alpha = alpha
        self.draws = draws
        self.groups = groups
        self.batch_size = batch_size
        self.seed = seed
        self.tasks = tuple(tasks)
        self.bootstrap = bootstrap

    # -- the two passes ------------------------------------------------------------------------
    @torch.no_grad()
    def _clean(self, subject, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        hs, y = subject.block_outputs(x)
        return [h.detach() for h in hs], y.detach()

    @torch.no_grad()
    def _perturbed(self, subject, x: torch.Tensor, l: int, h: torch.Tensor,
                   noise: torch.Tensor) -> torch.Tensor:
        """(R * B, K) predictions with ``noise`` (R, B, P, d) added to block ``l``'s output."""
        R = noise.shape[0]
        x_rep = x.repeat(R, *([1] * (x.ndim - 1)))  # row r * B + b is window b, like the noise
        if hasattr(subject, "forward_from"):
            noisy = (h.unsqueeze(0) + noise).reshape(-1, *h.shape[1:])
            if self._takes_x:
                return subject.forward_from(l, noisy, x=x_rep)
            return subject.forward_from(l, noisy)
        flat = noise.reshape(-1, *h.shape[1:])

        def hook(_module, _args, out):
            if isinstance(out, tuple):
                return (out[0] + flat,) + tuple(out[1:])
            return out + flat

        handle = subject.blocks[l].register_forward_hook(hook)
        try:
            _, y = subject.block_outputs(x_rep)
        finally:
            handle.remove()
        return y

    def _reference_pass(self, subject, x_all: torch.Tensor, batches: list[slice],
                        device: torch.device) -> np.ndarray:
        """Pass 1: sets ``block_rms_`` (measured at ``scale_positions_``); returns the clean
        predictions (N, K)."""
        L = len(subject.blocks)
        sq, count, y_clean = np.zeros(L), np.zeros(L), []
        for sl in batches:
            hs, y = self._clean(subject, x_all[sl].to(device))
            for l, h in enumerate(hs):
                part = _scale_view(h, self.scale_positions_)
                sq[l] += float(part.double().pow(2).sum())
                count[l] += part.numel()
            y_clean.append(y.cpu().numpy().astype(np.float64))
        self.block_rms_ = np.sqrt(sq / count)
        return np.concatenate(y_clean)

    def _noise_pass(self, subject, x_all: torch.Tensor, batches: list[slice], y0: np.ndarray,
                    device: torch.device, on_progress) -> np.ndarray:
        """Pass 2: per window, block and task, the mean |change| over the R draws (N, L, K).
        The noise goes on every position (method.md); only its scale comes from the pooled ones."""
        L, K = len(subject.blocks), y0.shape[1]
        gen = torch.Generator().manual_seed(self.seed)
        change = np.zeros((len(x_all), L, K))
        total, done = len(batches) * L, 0
        for sl in batches:
            x = x_all[sl].to(device)
            hs, _ = self._clean(subject, x)
            base = torch.as_tensor(y0[sl], dtype=torch.float64)
            for l in range(L):
                h = hs[l]
                noise = torch.randn((self.draws, *h.shape), generator=gen) * (
                    self.alpha * self.block_rms_[l])
                y = self._perturbed(subject, x, l, h, noise.to(h.dtype).to(device))
                y = y.detach().cpu().double().reshape(self.draws, -1, K)
                change[sl, l] = (y - base.unsqueeze(0)).abs().mean(dim=0).numpy()
                done += 1
                if on_progress:
                    on_progress("probe", done, total)
        return change

    def fit(self, subject, windows: np.ndarray | torch.Tensor, regimes: np.ndarray | None = None,
            on_progress: Callable[[str, int, int], None] | None = None) -> FluorescentProbe:
        if hasattr(subject, "eval"):
            subject.eval()
        x_all = torch.as_tensor(np.asarray(windows, np.float32))
        try:
            device = next(subject.parameters()).device
        except (AttributeError, StopIteration):
            device = torch.device("cpu")
        n = len(x_all)
        if n < 2:
            raise InputError("the probe needs a reference batch of at least 2 windows",
                             field="windows", expected=">= 2 windows", got=n)
        if regimes is not None and len(regimes) != n:
            raise InputError("one regime per reference window", field="regimes",
                             expected=str(n), got=len(regimes))
        self.scale_positions_ = scale_positions(subject)
        self._takes_x = _forward_from_takes_x(subject)  # inspect once, not per call
        batches = [slice(s, min(s + self.batch_size, n)) for s in range(0, n, self.batch_size)]
        y0 = self._reference_pass(subject, x_all, batches, device)
        if y0.shape[1] != len(self.tasks):
            raise InputError("subject predicts another number of tasks", field="tasks",
                             expected=str(len(self.tasks)), got=y0.shape[1])
        self.change_ = self._noise_pass(subject, x_all, batches, y0, device, on_progress)
        self.y_clean_ = y0
        self.regime_labels_ = None if regimes is None else np.asarray(regimes)
        self._summarise()
        return self

    # -- maps and assignment ---------------------------------------------------------------------
    def _response(self, idx: np.ndarray) -> np.ndarray:
        """(L, K) response D on the windows ``idx`` (a mask or indices, repeats allowed)."""
        std = self.y_clean_[idx].std(axis=0)
        mean_change = self.change_[idx].mean(axis=0)  # (L, K)
        return np.divide(mean_change, std[None, :], out=np.zeros_like(mean_change),
                         where=std[None, :] > 0)

    def _one_map(self, mask: np.ndarray) -> dict:
        response = self._response(mask)
        per_task, spec = normalise(response)
        scores, assignment = assign_groups(spec, self.groups_)
        return {"windows": int(mask.sum()), "y_std": self.y_clean_[mask].std(axis=0),
                "response": response, "task_norm": per_task, "map": spec,
                "group_scores": scores,
                "assignment": dict(zip(self.tasks, assignment, strict=True)),
                "argmax_layer": dict(zip(self.tasks, response.argmax(axis=0).tolist(),
                                         strict=True))}

    def _summarise(self) -> None:
        L = self.change_.shape[1]
        self.groups_ = layer_groups(L, self.groups)
        overall = self._one_map(np.ones(len(self.change_), bool))
        self.response_ = overall["response"]
        self.task_norm_ = overall["task_norm"]
        self.map_ = overall["map"]
        self.group_scores_ = overall["group_scores"]
        self.assignment_ = overall["assignment"]
        self.argmax_layer_ = overall["argmax_layer"]
        self.regimes_: dict[str, dict] = {}
        if self.regime_labels_ is not None:
            for r, name in enumerate(REGIMES):
                mask = self.regime_labels_ == r
                if mask.sum() >= 2:
                    self.regimes_[name] = self._one_map(mask)
        self.stability_ = self._bootstrap(self.bootstrap, self.seed)

    # -- stability -------------------------------------------------------------------------------
    def _strata(self) -> dict[str, np.ndarray]:
        """Window indices per regime (every label present, named as in ``regimes_``), or one
        stratum of all windows when no regimes were given."""
        if self.regime_labels_ is None:
            return {"all windows": np.arange(len(self.change_))}
        labels = self.regime_labels_
        return {(REGIMES[u] if 0 <= u < len(REGIMES) else str(u)): np.flatnonzero(labels == u)
                for u in np.unique(labels).tolist()}

    def _bootstrap(self, resamples: int, seed: int) -> dict:
        """Resample the windows with replacement within each regime (so every resample keeps
        the regime mix), recompute D from the per-window |change| (already averaged over the
        draws: no forward passes), re-normalise and re-assign. Per map ("all" and each regime
        of ``regimes_``): the share of resamples giving exactly the fitted assignment and, per
        task, the share giving it the same group."""
        if resamples < 1:
            raise InputError("the stability bootstrap needs at least one resample",
                             field="probe.bootstrap", expected=">= 1", got=resamples)
        rng = np.random.default_rng(seed)
        strata = self._strata()
        targets = {"all": self.assignment_} | {r: m["assignment"] for r, m in self.regimes_.items()}
        same = {key: np.zeros(len(self.tasks)) for key in targets}
        whole = dict.fromkeys(targets, 0)
        for _ in range(resamples):
            draw = {name: idx[rng.integers(0, len(idx), len(idx))] for name, idx in strata.items()}
            for key, target in targets.items():
                idx = np.concatenate(list(draw.values())) if key == "all" else draw[key]
                _, assignment = assign_groups(normalise(self._response(idx))[1], self.groups_)
                hits = np.array([assignment[k] == target[t] for k, t in enumerate(self.tasks)])
                same[key] += hits
                whole[key] += bool(hits.all())
        return {key: {"resamples": resamples, "stability": whole[key] / resamples,
                      "task_stability": dict(zip(self.tasks, (same[key] / resamples).tolist(),
                                                 strict=True))}
                for key in targets}

    def stability(self, resamples: int | None = None, seed: int | None = None) -> dict:
        """The bootstrap stability of the all-windows assignment (see ``_bootstrap``):
        ``same_assignment`` (share reproducing the whole assignment), ``same_group`` (per task),
        and ``per_regime``. Defaults: the fitted ``bootstrap`` resamples and ``seed``."""
        self._check_fitted()
        if resamples is None and seed is None:
            boot = self.stability_
        else:
            boot = self._bootstrap(self.bootstrap if resamples is None else resamples,
                                   self.seed if seed is None else seed)
        return {"resamples": boot["all"]["resamples"],
                "resampled_within": "all windows" if self.regime_labels_ is None else "regimes",
                "same_assignment": boot["all"]["stability"],
                "same_group": boot["all"]["task_stability"],
                "per_regime": {r: {"stability": b["stability"],
                                   "task_stability": b["task_stability"]}
                               for r, b in boot.items() if r != "all"}}

    def paper_pattern(self) -> dict:
        """Whether the assignment is the paper's: shallow -> mid, middle -> spread, deep -> volume
        (defined for G = 3 and the three tasks only)."""
        self._check_fitted()
        if self.groups != 3 or self.tasks != TASKS:
            return {"applicable": False, "holds": None}
        names = group_names(3)
        out = {"applicable": True,
               "expected": {t: names[g] for t, g in PAPER_PATTERN.items()},
               "found": {t: names[g] for t, g in self.assignment_.items()},
               "per_task": {t: self.assignment_[t] == g for t, g in PAPER_PATTERN.items()}}
        out["holds"] = all(out["per_task"].values())
        out["per_regime"] = {r: all(m["assignment"][t] == g for t, g in PAPER_PATTERN.items())
                             for r, m in self.regimes_.items()}
        return out

    def _check_fitted(self) -> None:
        if not hasattr(self, "map_"):
            raise RuntimeError("FluorescentProbe is not fitted; call fit(subject, windows) first")

    def to_dict(self) -> dict:
        """Everything as JSON-able data: settings, RMS, responses, maps, groups, assignments,
        and beside each assignment its bootstrap ``stability`` and ``task_stability``."""
        self._check_fitted()
        names = group_names(self.groups)

        def pack(m: dict, boot: dict) -> dict:
            return {"windows": m["windows"], "y_std": m["y_std"].tolist(),
                    "response": m["response"].tolist(), "task_norm": m["task_norm"].tolist(),
                    "map": m["map"].tolist(), "group_scores": m["group_scores"].tolist(),
                    "assignment": {t: names[g] for t, g in m["assignment"].items()},
                    "assignment_index": m["assignment"], "argmax_layer": m["argmax_layer"],
                    "stability": boot["stability"], "task_stability": boot["task_stability"]}

        overall = self._one_map(np.ones(len(self.change_), bool))
        return {
            "settings": {"alpha": self.alpha, "draws": self.draws, "groups": self.groups,
                         "seed": self.seed, "windows": len(self.change_),
                         "bootstrap": self.bootstrap},
            "tasks": list(self.tasks),
            "num_blocks": int(self.change_.shape[1]),
            "block_rms": self.block_rms_.tolist(),
            "scale_positions": self.scale_positions_,
            "groups": {names[i]: g for i, g in enumerate(self.groups_)},
            "all": pack(overall, self.stability_["all"]),
            "regimes": {r: pack(m, self.stability_[r]) for r, m in self.regimes_.items()},
            "paper_pattern": self.paper_pattern(),
            "stability": self.stability(),
        }
