"""The normalized fluorescent probe: its arithmetic, and that it finds the block a task depends
on in a model built so that each task depends on one known block only."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch
from torch import nn

from cmm.config import BackboneConfig, ProbeConfig, TeacherConfig
from cmm.errors import InputError
from cmm.probe.fluorescent import FluorescentProbe, assign_groups, layer_groups, normalise
from cmm.probe.pipeline import reference_indices, run_probe
from cmm.teacher.backbone import load_backbone
from cmm.teacher.data import synthetic_dataset
from cmm.teacher.model import build_teacher
from cmm.teacher.pipeline import run_fit


class _Block(nn.Module):
    """Computes its output from the model's input embedding only (not from the block below),
    so noise on one block's output reaches nothing but that block's tap."""

    def __init__(self, width: int, seed: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.weight = nn.Parameter(torch.randn(width, width, generator=g) / width**0.5)

    def forward(self, h: torch.Tensor, embed: torch.Tensor) -> torch.Tensor:
        return torch.tanh(embed @ self.weight) + 0.0 * h


class TapModel(nn.Module):
    """L blocks; task k reads block ``taps[k]``'s output (mean over positions, then a fixed
    projection). Task k therefore depends on block taps[k] and on no other block."""

    def __init__(self, num_blocks: int, taps: tuple[int, ...], width: int = 16,
                 n_features: int = 4) -> None:
        super().__init__()
        self.taps = taps
        self.embed = nn.Linear(n_features, width)
        self.blocks = nn.ModuleList(_Block(width, seed=i) for i in range(num_blocks))
        self.read = nn.Linear(width, len(taps))

    def block_outputs(self, x: torch.Tensor):
        e = self.embed(x)  # (B, W, d): every time step is a position
        h, outs = torch.zeros_like(e), []
        for block in self.blocks:
            h = block(h, e)
            outs.append(h)
        y = torch.stack([self.read(outs[t].mean(dim=1))[:, k]
                         for k, t in enumerate(self.taps)], dim=1)
        return outs, y


def test_normalise_rows_sum_to_one_and_columns_first():
    D = np.array([[1.0, 10.0, 0.0], [3.0, 30.0, 2.0]])
    per_task, S = normalise(D)
    assert np.allclose(per_task.sum(axis=0), [1, 1, 1])
    assert np.allclose(per_task[:, 0], [0.25, 0.75]) and np.allclose(per_task[:, 1], [0.25, 0.75])
    assert np.allclose(S.sum(axis=1), 1.0)
    # task scale does not matter after the first normalisation
    assert np.allclose(S, normalise(D * np.array([1.0, 1e-3, 5.0]))[1])


def test_groups_contiguous_and_one_to_one_assignment():
    assert layer_groups(7, 3) == [[0, 1, 2], [3, 4], [5, 6]]
    with pytest.raises(InputError, match="more layer groups than blocks"):
        layer_groups(2, 3)
    # both tasks prefer group 0; one-to-one gives it to the task with more to lose
    S = np.array([[0.6, 0.5], [0.5, 0.1], [0.2, 0.1]])
    scores, assignment = assign_groups(S, [[0], [1], [2]])
    assert scores.shape == (3, 2) and assignment == [1, 0]
    _, per_task = assign_groups(S, [[0, 1, 2]])  # G = 1 < K: the best group per task
    assert per_task == [0, 0]


@pytest.mark.parametrize("taps", [(0, 2, 4), (5, 1, 3)])
def test_probe_finds_the_block_each_task_depends_on(taps):
    torch.manual_seed(0)
    model = TapModel(num_blocks=6, taps=taps)
    x = torch.randn(48, 8, 4)
    regimes = np.repeat([0, 1, 2], 16)
    probe = FluorescentProbe(alpha=0.1, draws=4, groups=3, batch_size=20).fit(model, x, regimes)
    for k, block in enumerate(taps):
        assert probe.argmax_layer_[("mid", "spread", "volume")[k]] == block
        others = np.delete(probe.response_[:, k], block)
        # Blocks that do not feed task k respond with float rounding only, whose size depends on
        # the BLAS build: bound it relative to the tapped block's response, not by an absolute 1e-8.
        assert probe.response_[block, k] > 0
        assert np.all(np.abs(others) <= 1e-5 * probe.response_[block, k])
        assert probe.map_[block, k] == pytest.approx(1.0, rel=1e-4)  # only that block lights it
    assert np.allclose(probe.map_[list(taps)].sum(axis=1), 1.0, rtol=1e-4)
    expected = {t: b // 2 for t, b in zip(("mid", "spread", "volume"), taps, strict=True)}
    assert probe.assignment_ == expected
    assert set(probe.regimes_) == {"low", "mid", "high"}
    for m in probe.regimes_.values():
        assert m["assignment"] == expected
    pattern = probe.paper_pattern()
    assert pattern["holds"] == (taps == (0, 2, 4))
    assert probe.stability(resamples=20)["same_assignment"] == 1.0
    json.dumps(probe.to_dict())


def test_noise_scales_with_block_rms():
    torch.manual_seed(0)
    model = TapModel(num_blocks=3, taps=(0, 1, 2))
    x = torch.randn(32, 8, 4)
    small = FluorescentProbe(alpha=0.01, draws=2).fit(model, x)
    large = FluorescentProbe(alpha=0.1, draws=2).fit(model, x)
    with torch.no_grad():
        expected_rms = [float(h.pow(2).mean().sqrt()) for h in model.block_outputs(x)[0]]
    assert np.allclose(small.block_rms_, expected_rms, rtol=1e-5)
    # nearly linear for small noise: 10x the noise, about 10x the response
    ratio = np.diag(large.response_) / np.diag(small.response_)
    assert np.all((ratio > 8) & (ratio < 12))


@pytest.mark.parametrize("pooling", ["last", "mean"])
def test_replay_and_hook_paths_give_the_same_map(pooling):
    dataset = synthetic_dataset(n=(32, 32, 32), window=16, n_features=4)
    cfg = TeacherConfig(backbone=BackboneConfig(name="tiny-random-llama", tiny_layers=4),
                        patch_len=4, patch_stride=4, pooling=pooling, level_skip=True)
    teacher = build_teacher(load_backbone(cfg.backbone), 16, 4, cfg)
    # A non-zero level skip: the replay must be handed the windows of the same rows (x=), in
    # the order of the noise draws, or its predictions differ from the full (hook) pass's.
    with torch.no_grad():
        g = torch.Generator().manual_seed(1)
        teacher.level_head.weight.copy_(torch.randn(teacher.level_head.weight.shape, generator=g))
    x = dataset.windows("validation")

    class HooksOnly:  # the teacher without forward_from: the probe must fall back to hooks
        def __init__(self, model):
            self.blocks, self._m = model.blocks, model
            self.config = model.config  # same pooling, so the same noise scale

        def block_outputs(self, x):
            return self._m.block_outputs(x)

        def parameters(self):
            return self._m.parameters()

    a = FluorescentProbe(draws=2, batch_size=16).fit(teacher, x)
    b = FluorescentProbe(draws=2, batch_size=16).fit(HooksOnly(teacher), x)
    assert a.scale_positions_ == b.scale_positions_ == {"last": "last",
                                                         "mean": "all_but_first"}[pooling]
    assert np.allclose(a.block_rms_, b.block_rms_, rtol=1e-6)
    assert np.allclose(a.response_, b.response_, rtol=1e-3, atol=1e-6)
    assert a.response_.shape == (4, 3) and np.all(a.response_ > 0)


def test_unfitted_probe_and_tiny_reference_are_errors():
    with pytest.raises(RuntimeError, match="not fitted"):
        FluorescentProbe().to_dict()
    with pytest.raises(InputError, match="at least 2 windows"):
        FluorescentProbe().fit(TapModel(3, (0, 1, 2)), torch.randn(1, 8, 4))


def test_reference_indices_balanced_per_regime():
    regimes = np.array([0] * 10 + [1] * 3 + [2] * 20)
    idx = reference_indices(regimes, 4)
    assert np.all(np.diff(idx) > 0)
    assert [(regimes[idx] == r).sum() for r in range(3)] == [4, 3, 4]


def test_probe_stage_writes_json_and_png(tmp_path, caplog):
    dataset = synthetic_dataset(n=(96, 48, 48), window=16, n_features=4)
    cfg = TeacherConfig(backbone=BackboneConfig(name="tiny-random-llama", tiny_layers=3),
                        patch_len=4, patch_stride=4, epochs=1, latency_repeats=2,
                        latency_warmup=1, threads=1, max_eval_windows=0)
    run_fit(dataset, cfg, tmp_path / "teacher")
    with caplog.at_level(logging.WARNING, logger="cmm.probe.pipeline"):
        result = run_probe(tmp_path / "teacher", dataset,
                           ProbeConfig(windows_per_regime=8, draws=2, bootstrap=50),
                           tmp_path / "probe")
    saved = json.loads((tmp_path / "probe" / "probe.json").read_text())
    assert saved["num_blocks"] == 3 and len(saved["all"]["map"]) == 3
    regimes = np.concatenate([dataset.regimes(s) for s in ("train", "validation")])
    expected_used = {name: min(8, int((regimes == r).sum()))
                     for r, name in enumerate(("low", "mid", "high"))}
    assert saved["windows_per_regime_used"] == expected_used
    for name, count in expected_used.items():  # 8 < 16 windows: each regime is warned about
        assert f"regime '{name}' has {count} reference windows" in caplog.text
    assert saved["scale_positions"] == "last"  # the teacher's default pooling
    assert 0.0 <= saved["all"]["stability"] <= 1.0
    assert set(saved["all"]["task_stability"]) == {"mid", "spread", "volume"}
    # the whole assignment cannot be more stable than its least stable task
    assert saved["all"]["stability"] <= min(saved["all"]["task_stability"].values())
    assert saved["stability"]["same_assignment"] == saved["all"]["stability"]
    assert saved["stability"]["resamples"] == 50
    assert saved["stability"]["resampled_within"] == "regimes"
    for name, m in saved["regimes"].items():
        assert saved["stability"]["per_regime"][name]["stability"] == m["stability"]
    assert saved["paper_pattern"]["applicable"] and "holds" in saved["paper_pattern"]
    assert saved["teacher"]["weights_sha256"] == result["teacher"]["weights_sha256"]
    png = (tmp_path / "probe" / "probe.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
