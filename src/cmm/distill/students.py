"""Student networks: what an OFDD expert, a distillation baseline or an ablation's expert is.

Read top to bottom: activations, the typed output, the MLP student, the registry, the
specification that says what a student learns, and parameter counting. Shapes: ``B`` windows,
``W`` steps, ``F`` features, ``S`` input steps used, ``h`` hidden width, ``z`` the hidden
vector's width, ``O`` outputs (tasks predicted), ``d`` the teacher's width.

A student reads the window's last ``S`` steps flattened, and returns its hidden vector ``z``
(B, z) and its predictions (B, O) of the standardised targets. The projections ``P`` that map
``z`` to the teacher's hidden features are training-time only and live beside the student
(:class:`HintProjections`), never in the decision path.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from cmm.config import ExpertConfig
from cmm.errors import InputError, UnknownNameError
from cmm.vocabulary import TASKS

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": lambda: nn.GELU(approximate="tanh"),  # tanh form: the numpy path computes the same
}


def activation(name: str) -> nn.Module:
    if name not in ACTIVATIONS:
        raise UnknownNameError("activation", name, list(ACTIVATIONS))
    return ACTIVATIONS[name]()


@dataclass
class StudentOutput:
    """``z``: (B, z) hidden vector; ``y``: (B, O) standardised predictions."""

    z: torch.Tensor
    y: torch.Tensor


class MLPStudent(nn.Module):
    """(B, W, F) -> last S steps flattened (B, S*F) -> fc1 -> act -> fc2 -> act = z -> head = y."""

    def __init__(self, window: int, n_features: int, n_out: int, config: ExpertConfig) -> None:
        super().__init__()
        steps = config.input_steps or window
        if steps > window:
            raise InputError("student reads more steps than the window has",
                             field="expert.input_steps", expected=f"0 or <= {window}", got=steps)
        self.window, self.n_features, self.steps = window, n_features, steps
        self.activation = config.activation
        self.fc1 = nn.Linear(steps * n_features, config.hidden)
        self.fc2 = nn.Linear(config.hidden, config.z_dim)
        self.head = nn.Linear(config.z_dim, n_out)
        self.act = activation(config.activation)

    @property
    def z_dim(self) -> int:
        return self.fc2.out_features

    @property
    def n_out(self) -> int:
        return self.head.out_features

    def flat(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[1] != self.window or x.shape[2] != self.n_features:
            raise InputError("window batch of the wrong shape", field="windows",
                             expected=f"(B, {self.window}, {self.n_features})",
                             got=tuple(x.shape))
        return x[:, self.window - self.steps:].reshape(x.shape[0], -1)  # (B, S*F)

    def forward(self, x: torch.Tensor) -> StudentOutput:
        z = self.act(self.fc2(self.act(self.fc1(self.flat(x)))))  # (B, z)
        return StudentOutput(z=z, y=self.head(z))  # (B, O)


ARCHITECTURES: dict[str, type[nn.Module]] = {"mlp": MLPStudent}


def build_student(window: int, n_features: int, n_out: int, config: ExpertConfig) -> nn.Module:
    """The student architecture registered as ``config.arch``."""
    if config.arch not in ARCHITECTURES:
        raise UnknownNameError("expert architecture", config.arch, list(ARCHITECTURES))
    return ARCHITECTURES[config.arch](window, n_features, n_out, config)


class HintProjections(nn.Module):
    """The learned linear maps ``P_j``: z -> teacher width, one per hint target (training only)."""

    def __init__(self, z_dim: int, widths: list[int]) -> None:
        super().__init__()
        self.maps = nn.ModuleList(nn.Linear(z_dim, d) for d in widths)

    def forward(self, z: torch.Tensor) -> list[torch.Tensor]:
        return [p(z) for p in self.maps]


@dataclass(frozen=True)
class StudentSpec:
    """What one student learns. ``tasks``: indices into TASKS of its outputs, in order;
    ``hints``: per hint target, the teacher blocks averaged into it (empty: no feature loss);
    ``regimes``: the volatility regimes whose training samples it fits (all three: no data
    decomposition); ``lambdas``: (feature, logit, truth) loss weights."""

    name: str
    variant: str
    tasks: tuple[int, ...]
    hints: tuple[tuple[int, ...], ...]
    regimes: tuple[int, ...]
    expert: ExpertConfig
    lambdas: tuple[float, float, float]
    group: str = ""  # the layer group's name, for reports
    seed: int = 0
    meta: dict = field(default_factory=dict, hash=False, compare=False)

    def to_json(self) -> dict:
        return {"name": self.name, "variant": self.variant,
                "tasks": [TASKS[k] for k in self.tasks], "task_index": list(self.tasks),
                "hints": [list(h) for h in self.hints], "regimes": list(self.regimes),
                "expert": self.expert.model_dump(mode="json"), "lambdas": list(self.lambdas),
                "group": self.group, "seed": self.seed, **self.meta}

    @classmethod
    def from_json(cls, d: dict) -> StudentSpec:
        known = {"name", "variant", "tasks", "task_index", "hints", "regimes", "expert",
                 "lambdas", "group", "seed"}
        return cls(name=d["name"], variant=d["variant"], tasks=tuple(d["task_index"]),
                   hints=tuple(tuple(h) for h in d["hints"]), regimes=tuple(d["regimes"]),
                   expert=ExpertConfig.model_validate(d["expert"]),
                   lambdas=tuple(d["lambdas"]), group=d.get("group", ""),
                   seed=d.get("seed", 0), meta={k: v for k, v in d.items() if k not in known})


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def mlp_parameters(in_dim: int, hidden: int, z_dim: int, n_out: int) -> int:
    """Parameters of an MLP student (decision path only, no projections)."""
    return in_dim * hidden + hidden + hidden * z_dim + z_dim + z_dim * n_out + n_out


def matched_expert(base: ExpertConfig, in_dim: int, n_out: int, target: int) -> ExpertConfig:
    """``base`` with ``hidden`` and ``z_dim`` scaled by one factor so the student's parameter
    count is as close as possible to ``target`` (``z_dim / hidden`` kept)."""
    ratio = base.z_dim / base.hidden
    best = None
    for hidden in range(1, max(2, 4 * math.ceil(target / max(1, in_dim))) + 64):
        z = max(1, round(hidden * ratio))
        gap = abs(mlp_parameters(in_dim, hidden, z, n_out) - target)
        if best is None or gap < best[0]:
            best = (gap, hidden, z)
    return base.model_copy(update={"hidden": best[1], "z_dim": best[2]})
