"""The teacher's fit path: a planted signal is learned, a resumed fit ends where an uninterrupted
one does, the budget and its schedule, the level skip and the backbone depth. Tiny random Llama."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmm.config import BackboneConfig, TeacherConfig
from cmm.data.windows import Windows
from cmm.errors import InputError
from cmm.metrics import regression_metrics
from cmm.teacher.backbone import load_backbone
from cmm.teacher.data import ArrayDataset
from cmm.teacher.fit import _Schedule, fit_teacher, predict_windows
from cmm.teacher.model import build_teacher, window_level
from cmm.yardsticks import summary_features

TINY = BackboneConfig(name="tiny-random-llama", tiny_layers=3)


def tiny_config(**kw) -> TeacherConfig:
    base = dict(backbone=TINY, patch_len=4, patch_stride=4, epochs=2, batch_size=32,
                max_eval_windows=0, latency_repeats=5, latency_warmup=1, threads=1,
                infer_batch_size=128, max_train_seconds=0.0, level_spans=(2, 8))
    base.update(kw)
    return TeacherConfig(**base)


def planted(n=(1536, 256, 256), window=16, features=4, seed=0) -> ArrayDataset:
    """Targets = fixed linear read-outs of the window's last patch (4 steps x 4 features: what
    the pooled last position holds, not the level the skip reads) plus 20 % noise: a model that
    reads the window through the backbone can reach R^2 ~ 0.96."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((4 * features, 3)) / 4
    arrays = {}
    for split, size in zip(("train", "validation", "test"), n, strict=True):
        x = rng.standard_normal((size, window, features)).astype(np.float32)
        y = x[:, -4:, :].reshape(size, -1) @ w
        y = y + 0.2 * y.std(axis=0) * rng.standard_normal(y.shape)
        arrays[split] = (x, y.astype(np.float32), np.zeros(size, np.int8))
    return ArrayDataset(arrays, name="planted")


@pytest.mark.parametrize("level_skip", [False, True])
def test_tiny_backbone_fits_a_planted_signal(level_skip):
    ds = planted()
    result = fit_teacher(ds, tiny_config(epochs=15, lr=1e-2, patience=6, train_stride=1,
                                         level_skip=level_skip))
    pred, _ = predict_windows(result.model, ds.windows("test"))
    r2 = [m["r2"] for m in regression_metrics(result.model.to_units_np(pred),
                                              ds.targets("test")).values()]
    assert min(r2) > 0.9, (r2, result.stopped_by, result.steps)
    assert result.steps > 0 and result.best["step"] > 0  # fine-tuning, not the warm start alone


class Interrupt(Exception):
    pass


def test_resumed_fit_gives_the_same_weights(tmp_path):
    ds = planted(n=(384, 96, 96))
    cfg = tiny_config(epochs=4, lr=3e-3, patience=10, evals_per_epoch=3)
    whole = fit_teacher(ds, cfg)

    def stop_at(stage, done, total):
        if stage == "fit" and done == 9:  # after the check at step 8 (every 4 steps)
            raise Interrupt

    with pytest.raises(Interrupt):
        fit_teacher(ds, cfg, stop_at, checkpoint_dir=tmp_path)
    assert (tmp_path / "fit-checkpoint.pt").is_file()
    resumed = fit_teacher(ds, cfg, checkpoint_dir=tmp_path)
    assert resumed.resumed_from_step == 8
    assert not (tmp_path / "fit-checkpoint.pt").exists()  # removed once done
    a, b = whole.model.trainable_state(), resumed.model.trainable_state()
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert [h["val_loss"] for h in whole.history] == [h["val_loss"] for h in resumed.history]


def test_checkpoint_of_other_settings_is_not_resumed(tmp_path):
    ds = planted(n=(384, 96, 96))

    def stop_at(stage, done, total):
        if stage == "fit" and done == 5:
            raise Interrupt

    with pytest.raises(Interrupt):
        fit_teacher(ds, tiny_config(epochs=2, evals_per_epoch=3), stop_at, checkpoint_dir=tmp_path)
    other = fit_teacher(ds, tiny_config(epochs=2, evals_per_epoch=3, lr=1e-3),
                        checkpoint_dir=tmp_path)
    assert other.resumed_from_step is None


def test_budget_in_steps_and_its_schedule():
    ds = planted(n=(384, 96, 96))
    result = fit_teacher(ds, tiny_config(epochs=50, max_steps=7, patience=50))
    assert result.stopped_by == "max_steps" and result.steps == 7 == result.planned_steps
    # the cosine runs over the planned steps: it ends at 10 % of lr
    s = _Schedule(1.0, planned=1000, cap_seconds=0)
    assert s(0) == pytest.approx(1 / 50) and s(49) == pytest.approx(1.0)
    assert s(999) == pytest.approx(0.1, abs=1e-4)
    # a cap that binds first: 10 steps/s and 20 s allow 200 steps, and the decay fits in them
    s = _Schedule(1.0, planned=1000, cap_seconds=20.0)
    s.replan(step=100, elapsed=10.0)
    assert s.total == 200 and s(199) == pytest.approx(0.1, abs=1e-2)


def test_window_level_is_the_yardsticks_summary():
    x = np.random.default_rng(1).standard_normal((7, 16, 3)).astype(np.float32)
    ours = window_level(torch.from_numpy(x), (2, 8, 64)).numpy()
    theirs = summary_features(Windows.from_stacked(x), (2, 8, 64))
    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-6)


def test_level_skip_starts_at_the_ridge_on_the_level():
    """Targets that are the window's level alone: the warm start is already near perfect."""
    rng = np.random.default_rng(2)
    arrays = {}
    for split, size in (("train", 512), ("validation", 128), ("test", 128)):
        x = rng.standard_normal((size, 16, 4)).astype(np.float32)
        y = np.stack([x[:, -1, 0], x[:, -8:, 1].mean(1) * 3 + 5, x[:, -2:, 2].mean(1)], 1)
        arrays[split] = (x, y.astype(np.float32), np.zeros(size, np.int8))
    ds = ArrayDataset(arrays)
    result = fit_teacher(ds, tiny_config(epochs=1, max_steps=1))
    assert result.head_init["level"]["windows"] == 512
    # standardised MSE before any step (ridge shrinkage aside); without the skip far worse
    assert result.history[0]["val_loss"] < 0.05
    plain = fit_teacher(ds, tiny_config(epochs=1, max_steps=1, level_skip=False))
    assert plain.history[0]["val_loss"] > 5 * result.history[0]["val_loss"]


def test_depth_keeps_the_first_blocks():
    model = build_teacher(load_backbone(TINY), 16, 4, tiny_config(depth=2))
    assert model.num_blocks == 2 and model.backbone_info["num_blocks"] == 2
    out = model(torch.zeros(2, 16, 4), hidden=True)
    assert out.hidden.shape == (2, 2, 32)
    with pytest.raises(InputError, match="depth beyond"):
        build_teacher(load_backbone(TINY), 16, 4, tiny_config(depth=4))


def test_layernorm_and_lora_train_both():
    model = build_teacher(load_backbone(TINY), 16, 4, tiny_config(finetune="layernorm+lora"))
    body = [n for n, p in model.named_parameters() if p.requires_grad and n.startswith("body.")]
    assert any("lora_" in n for n in body) and any("norm" in n for n in body)


def test_early_stopping_windows_share_no_step_with_the_fit_windows(prepared):
    """On a real capture: every validation window (its W input steps) starts after the last
    training window's target has ended (its step + H), within a session and across sessions
    on the joined timeline: the purge of H + W steps leaves no shared step."""
    ds = prepared("binance-usdm-btcusdt")
    W, H = ds.config.features.window, ds.config.features.horizon
    samples = ds.samples.sort("global_step")
    train = samples.filter(samples["split"] == "train")["global_step"].to_numpy()
    val = samples.filter(samples["split"] == "validation")["global_step"].to_numpy()
    assert len(train) and len(val)
    last_train_target = train.max() + H  # a sample's step is its window's last step
    first_val_input = val.min() - (W - 1)
    assert first_val_input > last_train_target
