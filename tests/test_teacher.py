"""Teacher on a tiny random Llama (hidden 32) and a small synthetic dataset: seconds, no files
outside tmp_path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cmm.config import BackboneConfig, TeacherConfig
from cmm.errors import CmmError, InputError
from cmm.metrics import regression_metrics
from cmm.teacher.backbone import BackboneUnavailableError, load_backbone
from cmm.teacher.data import synthetic_dataset
from cmm.teacher.evaluate import RidgeBaseline, persistence_baseline
from cmm.teacher.features import extract_features, load_features
from cmm.teacher.fit import fit_teacher, predict_windows
from cmm.teacher.latency import measure_latency
from cmm.teacher.model import PatchAdapter, build_teacher
from cmm.teacher.pipeline import run_fit, teacher_dir, write_comparison
from cmm.teacher.store import StaleArtefactError, load_teacher

TINY = BackboneConfig(name="tiny-random-llama", tiny_layers=3)


def tiny_config(**kw) -> TeacherConfig:
    base = dict(backbone=TINY, patch_len=4, patch_stride=4, epochs=2, batch_size=32,
                max_eval_windows=0, latency_repeats=5, latency_warmup=1, threads=1,
                infer_batch_size=64, max_train_seconds=0.0)
    base.update(kw)
    return TeacherConfig(**base)


@pytest.fixture(scope="module")
def dataset():
    return synthetic_dataset(n=(128, 48, 48), window=16, n_features=4)


@pytest.fixture(scope="module")
def fitted(dataset, tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "teacher"
    report = run_fit(dataset, tiny_config(), out)
    return out, report


def test_patch_adapter_shapes_and_order():
    adapter = PatchAdapter(window=16, n_features=3, patch_len=4, stride=4, width=8)
    x = torch.arange(16 * 3, dtype=torch.float32).reshape(1, 16, 3)
    assert adapter(x).shape == (1, 4, 8)
    # patch 1 holds steps 4..7 of every feature, step-major: what the linear layer sees
    patches = x.unfold(1, 4, 4).transpose(2, 3).reshape(1, 4, -1)
    assert torch.equal(patches[0, 1], x[0, 4:8].reshape(-1))
    overlapping = PatchAdapter(window=16, n_features=3, patch_len=8, stride=4, width=8)
    assert overlapping.num_patches == 3


def test_patch_adapter_rejects_wrong_shape():
    adapter = PatchAdapter(window=16, n_features=3, patch_len=4, stride=4, width=8)
    with pytest.raises(InputError, match=r"expected \(B, 16, 3\), got \(2, 15, 3\)"):
        adapter(torch.zeros(2, 15, 3))
    with pytest.raises(InputError, match="patch longer than the window"):
        PatchAdapter(window=4, n_features=3, patch_len=8, stride=8, width=8)


def test_tiny_backbone_blocks_and_random_control():
    a = load_backbone(TINY)
    assert a.num_blocks == 3 and a.width == 32 and a.init == "random"
    b = load_backbone(BackboneConfig(name="tiny-random-llama", seed=1))
    assert not torch.equal(a.blocks[0].mlp.up_proj.weight, b.blocks[0].mlp.up_proj.weight)


def test_unknown_backbone_is_a_clear_error(tmp_path):
    with pytest.raises(BackboneUnavailableError, match="not available in the local folder"):
        load_backbone(BackboneConfig(name=str(tmp_path)))
    with pytest.raises(CmmError, match="not available .*HF_HUB_OFFLINE=1"):
        load_backbone(BackboneConfig(name="no-such-org/no-such-model-xyz"))


def test_hidden_states_and_forward_from_match_full_pass(dataset):
    model = build_teacher(load_backbone(TINY), 16, 4, tiny_config())
    x = torch.from_numpy(dataset.windows("test")[:6])
    out = model(x, hidden=True)
    assert out.y.shape == (6, 3) and out.hidden.shape == (6, 3, 32)
    blocks, y = model.block_outputs(x)
    assert torch.allclose(y, out.y, atol=1e-6)
    assert torch.allclose(out.hidden[:, 1], blocks[1][:, -1], atol=1e-6)  # pooling "last"
    for layer in range(model.num_blocks):
        assert torch.allclose(model.forward_from(layer, blocks[layer], x), y, atol=1e-5)
    # forward_from restores the real blocks afterwards
    assert all(type(b).__name__ == "LlamaDecoderLayer" for b in model.blocks)


@pytest.mark.parametrize("finetune", ["none", "layernorm", "lora"])
def test_trainable_parts(finetune):
    model = build_teacher(load_backbone(TINY), 16, 4, tiny_config(finetune=finetune))
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any(n.startswith("adapter.") for n in names) and any("heads." in n for n in names)
    body = [n for n in names if n.startswith("body.")]
    if finetune == "none":
        assert body == []
    elif finetune == "layernorm":
        assert body and all("norm" in n for n in body)
    else:
        assert body and all("lora_" in n for n in body)
    assert set(names) <= set(model.trainable_state())


def test_fit_learns_and_early_stopping_keeps_best(dataset):
    result = fit_teacher(dataset, tiny_config(epochs=6, lr=3e-3, patience=2,
                                              head_init_windows=0))
    history = result.history
    assert history[0]["step"] == 0  # the starting point is a checkpoint
    assert result.best["val_loss"] == min(h["val_loss"] for h in history)
    assert result.best["val_loss"] < history[0]["val_loss"]
    assert result.stopped_by in ("epochs", "early_stopping")
    pred, _ = predict_windows(result.model, dataset.windows("validation"))
    y = (dataset.targets("validation") - result.model.target_mean.numpy()) / \
        result.model.target_std.numpy()
    val = float((((pred - y) ** 2).mean(axis=0) / 3).sum())
    assert val == pytest.approx(result.best["val_loss"], rel=1e-4)


def test_linear_probe_warm_start_beats_random_heads(dataset):
    probe = fit_teacher(dataset, tiny_config(epochs=1, max_train_seconds=1e-9, seed=3))
    cold = fit_teacher(dataset, tiny_config(epochs=1, max_train_seconds=1e-9, seed=3,
                                            head_init_windows=0))
    assert probe.head_init["head_init"] == "ridge" and len(probe.head_init["alpha"]) == 3
    assert probe.history[0]["val_loss"] < cold.history[0]["val_loss"]
    assert not torch.allclose(probe.model.feat_std, torch.ones_like(probe.model.feat_std))


def test_time_budget_stops_fit(dataset):
    result = fit_teacher(dataset, tiny_config(epochs=50, max_train_seconds=1e-9, patience=50))
    assert result.stopped_by == "time_budget" and len(result.history) == 2  # start + 1 step


def test_run_fit_writes_self_describing_folder(fitted, dataset):
    out, report = fitted
    meta = json.loads((out / "teacher.json").read_text())
    assert meta["schema_version"] == 1 and meta["data"]["cache_key"] == dataset.cache_key
    assert meta["settings"]["patch_len"] == 4 and meta["backbone"]["num_blocks"] == 3
    assert set(report["models"]) == {"teacher", "zero/last", "train-mean", "ridge", "lightgbm"}
    assert set(report["models"]["teacher"]) == {"validation", "test"}
    latency = json.loads((out / "latency.json").read_text())
    assert latency["one_thread"]["p50_ms"] > 0 and latency["all_threads"]["p99_ms"] >= \
        latency["all_threads"]["p50_ms"]
    text = write_comparison(out / "comparison.md", {"teacher": report})
    assert "| ridge |" in text and "### test" in text


def test_reload_predicts_the_same_and_detects_stale_data(fitted, dataset):
    out, _ = fitted
    model = load_teacher(out, dataset)
    x = torch.from_numpy(dataset.windows("test")[:4])
    again = load_teacher(out)
    assert torch.allclose(model.predict(x), again.predict(x))
    other = synthetic_dataset(n=(128, 48, 48), window=16, n_features=4, seed=5)
    with pytest.raises(StaleArtefactError, match="fit the teacher again"):
        load_teacher(out, other)


def test_features_cover_every_split_and_refuse_stale(fitted, dataset):
    out, _ = fitted
    model = load_teacher(out, dataset)
    index = extract_features(model, dataset, out, batch_size=32)
    assert index["num_blocks"] == 3 and index["dtype"] == "float16"
    for split in ("train", "validation", "test"):
        f = load_features(out, split, dataset)
        n = len(dataset.windows(split))
        assert f.hidden.shape == (n, 3, 32) and f.hidden.dtype == np.float16
        assert f.pred.shape == (n, 3) and f.regime.shape == (n,)
    f = load_features(out, "test", dataset)
    x = torch.from_numpy(dataset.windows("test")[:5])
    with torch.no_grad():
        direct = model(x, hidden=True)
    assert np.allclose(f.hidden[:5], direct.hidden.numpy(), atol=1e-2, rtol=1e-2)
    # the cached pass ran in batches (bf16 on CPUs with AMX), this one at batch 5 (fp32): they
    # agree to bf16's precision, relative to the spread of the predictions
    scale = f.pred.std(axis=0)
    assert np.allclose(f.pred[:5], model.to_units(direct.y).detach().numpy(), rtol=1e-2,
                       atol=float(2e-2 * scale.max()))
    other = synthetic_dataset(n=(128, 48, 48), window=16, n_features=4, seed=5)
    with pytest.raises(StaleArtefactError, match="run `cmm teacher features` again"):
        load_features(out, "test", other)


def test_latency_reports_percentiles(dataset):
    model = build_teacher(load_backbone(TINY), 16, 4, tiny_config())
    lat = measure_latency(model, dataset.windows("test"), repeats=5, warmup=1)
    assert lat["one_thread"]["threads"] == 1 and lat["charged_ns"] > 0
    assert torch.get_num_threads() >= 1


def test_metrics_known_values():
    y = np.array([[1.0, 2.0, 3.0], [-1.0, 4.0, 5.0], [0.0, 6.0, 7.0]])
    m = regression_metrics(y, y)
    assert m["mid"]["mse"] == 0 and m["spread"]["r2"] == 1 and m["mid"]["direction_acc"] == 1
    flipped = y.copy()
    flipped[:, 0] *= -1
    assert regression_metrics(flipped, y)["mid"]["direction_acc"] == 0
    mean = np.broadcast_to(y.mean(axis=0), y.shape)
    assert regression_metrics(mean, y)["volume"]["r2"] == pytest.approx(0.0)
    assert regression_metrics(np.zeros_like(y), y)["mid"]["direction_acc"] is None


def test_ridge_recovers_linear_map_and_picks_alpha_on_validation():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((400, 5, 2))
    w = rng.standard_normal((10, 3))
    y = x.reshape(400, -1) @ w + 0.01 * rng.standard_normal((400, 3))
    ridge = RidgeBaseline((1e-4, 1e3)).fit(x[:300], y[:300], x[300:], y[300:])
    assert ridge.alpha_ == [1e-4] * 3
    assert np.allclose(ridge.predict(x[300:]), y[300:], atol=0.1)
    with pytest.raises(RuntimeError, match="not fitted"):
        RidgeBaseline().predict(x)


def test_persistence_uses_the_target_realised_horizon_steps_earlier():
    import polars as pl

    samples = pl.DataFrame({
        "session": [0] * 6, "step": [10, 11, 12, 13, 14, 15],
        "split": ["validation"] * 6,
        "y_mid": [1.0, 2, 3, 4, 5, 6], "y_spread": [10.0, 11, 12, 13, 14, 15],
        "y_volume": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]})
    pred = persistence_baseline(samples, "validation", 2, np.array([9.0, 9.0, 9.0]))
    assert pred[:, 0].tolist() == [0.0] * 6
    assert pred[:, 1].tolist() == [9.0, 9.0, 10.0, 11.0, 12.0, 13.0]
    assert pred[:, 2].tolist() == pytest.approx([9.0, 9.0, 0.1, 0.2, 0.3, 0.4])


def test_teacher_dir_names_the_control(tmp_path):
    assert teacher_dir(tmp_path, tiny_config()).name == "teacher"
    random = tiny_config(backbone=BackboneConfig(name="tiny-random-llama", init="random"))
    assert teacher_dir(tmp_path, random).name == "teacher-random"


def test_cuda_request_without_gpu_is_a_clear_error(dataset):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(InputError, match="CUDA requested"):
        fit_teacher(dataset, tiny_config(device="cuda"))


def test_teacher_policy_quotes_its_predictions_with_its_latency(fitted, dataset):
    import cmm.teacher.policy  # noqa: F401  (registers "teacher")
    from cmm.strategy.policy import DecisionPlan, get_policy

    out, _ = fitted
    policy = get_policy("teacher", {"teacher": str(out)}).fit(dataset)
    latency = json.loads((out / "latency.json").read_text())
    assert policy.latency_ns == latency["charged_ns"] > 0  # as `cmm run` charges it
    one = get_policy("teacher", {"teacher": str(out), "latency": "one_thread"}).fit(dataset)
    assert one.latency_ns == int(round(latency["one_thread"]["p50_ms"] * 1e6))
    n = len(dataset.windows("test"))
    z = np.zeros(n, np.int64)
    plan = DecisionPlan("test", n, np.arange(n), z, z, z, z[:1], z[:1], z[:1])
    pred = policy.act(dataset, "test", plan)
    model = load_teacher(out, dataset)
    with torch.no_grad():
        direct = model.predict(torch.from_numpy(dataset.windows("test")[:])).numpy()
    assert np.allclose(pred.mid_bps, direct[:, 0], atol=1e-4)
    assert get_policy("teacher", {"teacher": str(out), "latency_ns": 5}).fit(dataset) \
        .latency_ns == 5
