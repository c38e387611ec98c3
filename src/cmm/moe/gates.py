"""Gates: how a task's M frozen experts are weighted per input.

Every gate maps the experts' hidden vectors ``z`` (B, M, z), their predictions ``y`` (B, M), the
input window ``x`` (B, W, F) and the current regime (B,) to weights (B, M) that sum to one.

- ``hajek`` (method.md, Hajek-MoE): kernel ``phi`` = two-layer MLP [z_i ; y_i] -> R^D shared by
  the task's experts; consensus ``V = (1/M) sum_i phi_i``; confidence ``c_i = <phi_i, V> / ||V||``
  (the length of expert i's projection on the consensus axis); weights ``softmax(c / tau)``.
- ``mean``: 1/M each (no parameters).
- ``router``: the standard MoE gate, ``softmax(g(x))`` with ``g`` linear (or one hidden layer)
  on the flattened window.
- ``regime``: hard routing: equal weights on the experts of the current regime (all experts when
  none of them is of that regime).

Gates are registered by name (:func:`build_gate`); an unknown name lists the valid ones.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from cmm.config import MoEConfig
from cmm.distill.students import activation
from cmm.errors import UnknownNameError

EPS = 1e-8


class HajekGate(nn.Module):
    has_parameters = True

    def __init__(self, z_dim: int, config: MoEConfig, **_) -> None:
        super().__init__()
        self.kernel = nn.Sequential(nn.Linear(z_dim + 1, config.kernel_hidden),
                                    activation(config.activation),
                                    nn.Linear(config.kernel_hidden, config.dim))
        self.temperature = float(config.temperature)
        self.activation = config.activation

    def embed(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """phi: (B, M, z) and (B, M) -> (B, M, D)."""
        return self.kernel(torch.cat([z, y.unsqueeze(-1)], dim=-1))

    def confidence(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """c: (B, M), each expert's projection on the consensus axis V / ||V||."""
        phi = self.embed(z, y)  # (B, M, D)
        v = phi.mean(dim=1, keepdim=True)  # (B, 1, D)
        return (phi * v).sum(-1) / (v.norm(dim=-1) + EPS)  # (B, M)

    def forward(self, z, y, x=None, regime=None) -> torch.Tensor:
        return torch.softmax(self.confidence(z, y) / self.temperature, dim=-1)


class MeanGate(nn.Module):
    has_parameters = False

    def __init__(self, *_, **__) -> None:
        super().__init__()

    def forward(self, z, y, x=None, regime=None) -> torch.Tensor:
        return torch.full_like(y, 1.0 / y.shape[1])


class InputRouter(nn.Module):
    """softmax(g(x)) with x the window's last ``steps`` steps flattened."""

    has_parameters = True

    def __init__(self, z_dim: int, config: MoEConfig, *, n_experts: int, in_dim: int,
                 steps: int, **_) -> None:
        super().__init__()
        self.steps = steps
        if config.router_hidden:
            self.net = nn.Sequential(nn.Linear(in_dim, config.router_hidden), nn.ReLU(),
                                     nn.Linear(config.router_hidden, n_experts))
        else:
            self.net = nn.Linear(in_dim, n_experts)

    def forward(self, z, y, x=None, regime=None) -> torch.Tensor:
        flat = x[:, x.shape[1] - self.steps:].reshape(x.shape[0], -1)
        return torch.softmax(self.net(flat), dim=-1)


class RegimeGate(nn.Module):
    has_parameters = False

    def __init__(self, *_, expert_regimes: list[int], **__) -> None:
        super().__init__()
        self.register_buffer("expert_regimes", torch.as_tensor(expert_regimes, dtype=torch.long))

    def forward(self, z, y, x=None, regime=None) -> torch.Tensor:
        if regime is None:
            return torch.full_like(y, 1.0 / y.shape[1])
        hit = (self.expert_regimes[None, :] == regime.long()[:, None]).to(y.dtype)  # (B, M)
        none = hit.sum(dim=1, keepdim=True) == 0
        hit = torch.where(none, torch.ones_like(hit), hit)
        return hit / hit.sum(dim=1, keepdim=True)


GATES: dict[str, Callable[..., nn.Module]] = {"hajek": HajekGate, "mean": MeanGate,
                                              "router": InputRouter, "regime": RegimeGate}


def build_gate(name: str, z_dim: int, config: MoEConfig, **context) -> nn.Module:
    """``context``: n_experts, in_dim, steps (router), expert_regimes (regime)."""
    if name not in GATES:
        raise UnknownNameError("gate", name, list(GATES))
    return GATES[name](z_dim, config, **context)
