"""Hajek-MoE and the gate controls: weights, symmetry, the consensus, frozen experts, seeds."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmm.config import DistillConfig, ExpertConfig, MoEConfig
from cmm.errors import UnknownNameError
from cmm.moe.gates import HajekGate, build_gate
from cmm.moe.mixture import fit_gates, random_mixture

SMALL = DistillConfig(expert=ExpertConfig(hidden=8, z_dim=4), baselines=(), ablations=())


def _model(seed: int = 0, gates=("hajek", "mean", "router", "regime")):
    return random_mixture(8, 3, SMALL, MoEConfig(gates=gates, kernel_hidden=6), num_blocks=3,
                          seed=seed)


def _data(n: int = 200, seed: int = 1):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 8, 3)).astype(np.float32)
    y = np.stack([x[:, -1, 0], 1 + 0.1 * x[:, 0, 1], x[:, :, 2].mean(1)], 1).astype(np.float32)
    return x, y, rng.integers(0, 3, n)


@pytest.mark.parametrize("gate", ["hajek", "mean", "router", "regime"])
def test_weights_sum_to_one(gate):
    model = _model()
    x, _, r = _data(64)
    with torch.no_grad():
        out = model(torch.from_numpy(x), torch.from_numpy(r), gate)
    for w in out.weights.values():
        assert w.shape == (64, 3)
        assert torch.all(w >= 0)
        torch.testing.assert_close(w.sum(dim=1), torch.ones(64))


def test_permuting_experts_permutes_weights_and_keeps_output():
    torch.manual_seed(0)
    gate = HajekGate(5, MoEConfig(kernel_hidden=7, dim=2))
    z, y = torch.randn(32, 4, 5), torch.randn(32, 4)
    perm = torch.tensor([2, 0, 3, 1])
    with torch.no_grad():
        w = gate(z, y)
        wp = gate(z[:, perm], y[:, perm])
    torch.testing.assert_close(wp, w[:, perm])
    torch.testing.assert_close((wp * y[:, perm]).sum(1), (w * y).sum(1))


def test_permuting_a_tasks_experts_in_the_mixture_keeps_the_prediction():
    model = _model()
    x, _, r = _data(32)
    xt = torch.from_numpy(x)
    with torch.no_grad():
        before = model(xt, None, "hajek")
        model.routes["spread"] = model.routes["spread"][::-1]
        after = model(xt, None, "hajek")
    torch.testing.assert_close(after.y, before.y)
    torch.testing.assert_close(after.weights["spread"], before.weights["spread"].flip(1))


def _constructed_gate(b: float = 3.0) -> HajekGate:
    """phi(z, y) = (b - |y|, 0): a kernel whose consensus axis is 'close to zero'."""
    gate = HajekGate(2, MoEConfig(kernel_hidden=2, dim=2, activation="relu"))
    with torch.no_grad():
        first, second = gate.kernel[0], gate.kernel[2]
        first.weight.copy_(torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0]]))  # relu(y), relu(-y)
        first.bias.zero_()
        second.weight.copy_(torch.tensor([[-1.0, -1.0], [0.0, 0.0]]))
        second.bias.copy_(torch.tensor([b, 0.0]))
    return gate


def test_constructed_kernel_gives_an_expert_far_from_the_consensus_less_weight():
    gate = _constructed_gate()
    y = torch.tensor([[0.1, -0.1, 0.05, 2.5]])
    z = torch.randn(1, 4, 2)
    with torch.no_grad():
        w = gate(z, y)[0]
        c = gate.confidence(z, y)[0]
    assert w[3] < w[:3].min()
    assert w[3] < 0.25 / 2
    # confidence falls with the distance from the consensus
    order = torch.argsort(y[0].abs())
    assert torch.all(torch.diff(c[order]) <= 1e-6)
    # and the mixture is pulled less towards the outlier than the plain mean
    assert (w * y[0]).sum().abs() < y[0].mean().abs()


def test_temperature_sharpens_the_weights():
    gate = _constructed_gate()
    y, z = torch.tensor([[0.1, -0.1, 0.05, 2.5]]), torch.zeros(1, 4, 2)
    with torch.no_grad():
        w1 = gate(z, y)[0]
        gate.temperature = 0.1
        w01 = gate(z, y)[0]
    assert w01[3] < w1[3]
    assert w01.max() > w1.max()


def test_with_experts_frozen_only_the_kernel_changes():
    model = _model()
    x, y, r = _data()
    experts_before = {k: v.clone() for k, v in model.students.state_dict().items()}
    gates_before = {k: v.clone() for k, v in model.gates.state_dict().items()}
    fit_gates(model, x, y, r, MoEConfig(epochs=5, kernel_hidden=6, patience=50), ("hajek",))
    for k, v in model.students.state_dict().items():
        assert torch.equal(v, experts_before[k]), k
    changed = {k for k, v in model.gates.state_dict().items()
               if not torch.equal(v, gates_before[k])}
    assert changed, "the Hajek kernels did not move"
    assert all("/hajek." in k and ".kernel." in k for k in changed), changed
    assert not any(p.requires_grad for p in model.students.parameters())


def test_same_seed_same_result_and_another_seed_another():
    x, y, r = _data()
    states = []
    for seed in (3, 3, 4):
        model = _model()
        fit_gates(model, x, y, r, MoEConfig(epochs=4, kernel_hidden=6, seed=seed, patience=50))
        states.append(model.gates.state_dict())
    for k in states[0]:
        assert torch.equal(states[0][k], states[1][k]), k
    assert any(not torch.equal(states[0][k], states[2][k]) for k in states[0]
               if "hajek" in k)


def test_fitting_the_gate_lowers_its_holdout_loss():
    model = _model()
    x, y, r = _data(400)
    rec = fit_gates(model, x, y, r, MoEConfig(epochs=30, kernel_hidden=6, patience=50))
    for key, record in rec.items():
        assert record["best_holdout_mse"] <= record["initial_holdout_mse"] + 1e-9, key


def test_regime_gate_routes_hard_and_falls_back_to_the_mean():
    gate = build_gate("regime", 4, MoEConfig(), expert_regimes=[0, 1, 2])
    y = torch.zeros(3, 3)
    w = gate(None, y, None, torch.tensor([2, 0, 7]))
    torch.testing.assert_close(w, torch.tensor([[0.0, 0, 1], [1, 0, 0], [1 / 3, 1 / 3, 1 / 3]]))


def test_unknown_gate_lists_the_valid_ones():
    with pytest.raises(UnknownNameError, match="valid: hajek, mean, regime, router"):
        build_gate("softmax", 4, MoEConfig())
