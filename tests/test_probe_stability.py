"""The probe reads what the heads read: the noise scale ``s_l`` comes from the pooled positions
(not from an attention-sink position 0), the replay is handed the windows, and the bootstrap
stability of the layer-to-task assignment is 1 where the assignment is planted, below 1 where
the responses tie, and the same for the same seed."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from cmm.config import BackboneConfig, TeacherConfig
from cmm.probe.fluorescent import FluorescentProbe, _forward_from_takes_x
from cmm.probe.plot import stability_caption
from cmm.teacher.backbone import load_backbone
from cmm.teacher.model import build_teacher

SINK = 3e4  # the size of SmolLM2's position-0 activations


class SinkModel(nn.Module):
    """L blocks, each computing its output from the input embedding only, with a huge constant
    added at position 0 (an attention sink). Task k reads block ``taps[k]`` at the pooled
    positions (``pooling``: "last" or "mean" over all but position 0). ``forward_from`` rebuilds
    the other blocks from the windows ``x`` and records what it was given."""

    def __init__(self, num_blocks: int, taps: tuple[int, ...], pooling: str | None,
                 width: int = 16, n_features: int = 4) -> None:
        super().__init__()
        if pooling is not None:
            self.config = SimpleNamespace(pooling=pooling)
        self.pooling, self.taps = pooling, taps
        g = torch.Generator().manual_seed(0)
        with torch.random.fork_rng():  # the same model every time, whatever ran before
            torch.manual_seed(0)
            self.embed = nn.Linear(n_features, width)
            self.read = nn.Linear(width, len(taps))
        self.weights = nn.ParameterList(
            nn.Parameter(torch.randn(width, width, generator=g) / width**0.5)
            for _ in range(num_blocks))
        self.blocks = nn.ModuleList(nn.Identity() for _ in range(num_blocks))
        self.calls: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def _outs(self, x: torch.Tensor) -> list[torch.Tensor]:
        e = self.embed(x)
        sink = torch.zeros_like(e)
        sink[:, 0] = SINK
        return [torch.tanh(e @ w) + sink for w in self.weights]

    def _read(self, outs: list[torch.Tensor]) -> torch.Tensor:
        def pool(h):
            return h[:, -1] if self.pooling == "last" else h[:, 1:].mean(dim=1)
        return torch.stack([self.read(pool(outs[t]))[:, k] for k, t in enumerate(self.taps)],
                           dim=1)

    def block_outputs(self, x: torch.Tensor):
        outs = self._outs(x)
        return outs, self._read(outs)

    def forward_from(self, block: int, h: torch.Tensor, x: torch.Tensor | None = None):
        outs = self._outs(x)  # needs the windows: without them nothing else can be rebuilt
        self.calls.append((block, h - outs[block], x))
        outs[block] = h
        return self._read(outs)


class MeanOfBlocksModel(nn.Module):
    """Every task reads the mean over all blocks of their outputs: no block is special, the
    responses tie in expectation and only sampling noise decides the assignment."""

    def __init__(self, num_blocks: int = 6, width: int = 16, n_features: int = 4) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        with torch.random.fork_rng():  # the same model every time, whatever ran before
            torch.manual_seed(0)
            self.embed = nn.Linear(n_features, width)
            self.read = nn.Linear(width, 3)
        self.weights = [torch.randn(width, width, generator=g) / width**0.5
                        for _ in range(num_blocks)]
        self.blocks = nn.ModuleList(nn.Identity() for _ in range(num_blocks))

    def block_outputs(self, x: torch.Tensor):
        e = self.embed(x)
        outs = [torch.tanh(e @ w) for w in self.weights]
        return outs, self.read(torch.stack(outs).mean(dim=0).mean(dim=1))

    def forward_from(self, block: int, h: torch.Tensor, x: torch.Tensor):
        outs, _ = self.block_outputs(x)
        outs[block] = h
        return self.read(torch.stack(outs).mean(dim=0).mean(dim=1))


def _windows(n: int = 48) -> tuple[torch.Tensor, np.ndarray]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 8, 4, generator=g), np.repeat([0, 1, 2], n // 3)


@pytest.mark.parametrize("pooling, part, label", [
    ("last", lambda h: h[:, -1], "last"),
    ("mean", lambda h: h[:, 1:], "all_but_first"),
    (None, lambda h: h, "all"),  # a subject that does not say how it pools: every position
])
def test_noise_scale_is_the_rms_at_the_pooled_positions(pooling, part, label):
    torch.manual_seed(0)
    model = SinkModel(3, (0, 1, 2), pooling)
    x, _ = _windows(32)
    probe = FluorescentProbe(alpha=0.1, draws=4, batch_size=16, bootstrap=10).fit(model, x)
    with torch.no_grad():
        hs, _ = model.block_outputs(x)
    expected = np.array([float(part(h).double().pow(2).mean().sqrt()) for h in hs])
    assert probe.scale_positions_ == label
    assert np.allclose(probe.block_rms_, expected, rtol=1e-6)
    if pooling is not None:  # the sink is out of the scale: s_l is O(1), not O(3e4)
        assert np.all(probe.block_rms_ < 1.0)
    else:
        assert np.all(probe.block_rms_ > SINK / 8**0.5 * 0.99)  # one position in 8 is the sink
    assert probe.to_dict()["scale_positions"] == label


def test_noise_goes_on_every_position_at_the_pooled_scale_and_replay_gets_the_windows():
    model = SinkModel(3, (0, 1, 2), "last")
    x, _ = _windows(32)
    draws = 6
    probe = FluorescentProbe(alpha=0.1, draws=draws, batch_size=16, bootstrap=10).fit(model, x)
    assert len(model.calls) == 2 * 3  # two batches x three blocks, all through forward_from
    for call, (block, noise, x_given) in enumerate(model.calls):
        batch = x[16 * (call // 3): 16 * (call // 3 + 1)]
        # row r * B + b of the replay is window b under draw r
        assert torch.equal(x_given, batch.repeat(draws, 1, 1))
        scale = 0.1 * probe.block_rms_[block]
        for position in (0, 3, -1):  # the sink position gets noise too, of the same size
            std = float(noise[:, position].double().std())
            assert std == pytest.approx(scale, rel=0.1)
    # the planted taps are found, with the sink out of the way
    assert probe.argmax_layer_ == {"mid": 0, "spread": 1, "volume": 2}


def test_forward_from_x_detected_by_signature():
    class NoX:
        def forward_from(self, block, h):
            return h

    class WithX:
        def forward_from(self, block, h, x=None):
            return h

    cfg = TeacherConfig(backbone=BackboneConfig(name="tiny-random-llama", tiny_layers=2),
                        patch_len=4, patch_stride=4)
    teacher = build_teacher(load_backbone(cfg.backbone), 16, 4, cfg)
    assert not _forward_from_takes_x(NoX()) and _forward_from_takes_x(WithX())
    assert not _forward_from_takes_x(object())
    assert _forward_from_takes_x(teacher)


def test_planted_assignment_is_fully_stable():
    model = SinkModel(6, (0, 2, 4), "last")
    x, regimes = _windows(48)
    probe = FluorescentProbe(draws=4, batch_size=24, bootstrap=100).fit(model, x, regimes)
    out = probe.to_dict()
    assert probe.assignment_ == {"mid": 0, "spread": 1, "volume": 2}
    assert out["all"]["stability"] == 1.0
    assert out["all"]["task_stability"] == {"mid": 1.0, "spread": 1.0, "volume": 1.0}
    for name in ("low", "mid", "high"):
        assert out["regimes"][name]["stability"] == 1.0
    assert out["stability"]["same_assignment"] == 1.0
    assert out["stability"]["resampled_within"] == "regimes"
    assert "assignment stability: 100% of 100 resamples" in stability_caption(out)


def test_tied_responses_are_unstable():
    model = MeanOfBlocksModel()
    x, regimes = _windows(48)
    probe = FluorescentProbe(draws=4, batch_size=24, bootstrap=200).fit(model, x, regimes)
    out = probe.to_dict()
    # each task's response is nearly flat over blocks: no group stands out
    col = probe.response_
    assert np.all(col.max(axis=0) / col.min(axis=0) < 1.5)
    assert out["all"]["stability"] < 0.8
    assert min(out["all"]["task_stability"].values()) < 0.9
    assert out["all"]["stability"] <= min(out["all"]["task_stability"].values())
    assert all(0.0 <= m["stability"] < 1.0 for m in out["regimes"].values())


def test_stability_is_deterministic_for_a_seed():
    x, regimes = _windows(48)

    def fit(seed):
        return FluorescentProbe(draws=4, batch_size=24, bootstrap=100, seed=seed).fit(
            MeanOfBlocksModel(), x, regimes)

    a, b = fit(0).to_dict(), fit(0).to_dict()
    assert a["stability"] == b["stability"]
    assert a["all"]["task_stability"] == b["all"]["task_stability"]
    assert a["all"]["response"] == b["all"]["response"]
    probe = fit(0)
    # the bootstrap alone, reseeded: the same seed gives the same shares, another seed others
    again = probe.stability(resamples=100, seed=0)
    assert again == probe.stability()
    others = [probe.stability(resamples=100, seed=s)["same_group"] for s in (1, 2, 3)]
    assert any(o != again["same_group"] for o in others)
