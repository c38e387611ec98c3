"""The decision path: fused numpy/numba == torch, one artefact on disk, window in -> orders out,
no torch at decision time, the ``cmm`` policy."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch

from cmm.config import DistillConfig, ExpertConfig, Instrument, LadderConfig, MoEConfig
from cmm.errors import InputError
from cmm.moe.artefact import load_fused, load_torch, save_mixture
from cmm.moe.mixture import random_mixture
from cmm.moe.quoter import Quoter
from cmm.strategy.ladder import quote_ladder

W, F = 8, 3
INSTRUMENT = Instrument(tick_size=0.1, lot_size=0.001)
GATES = ("hajek", "mean", "router", "regime")


def _config(**expert):
    return DistillConfig(expert=ExpertConfig(hidden=8, z_dim=4, **expert),
                         baselines=("kd",), ablations=("no_task", "no_data"))


def _save(tmp_path, variant="cmm", seed=0, moe=None, **expert):
    model = random_mixture(W, F, _config(**expert), moe or MoEConfig(kernel_hidden=5),
                           num_blocks=3, seed=seed, variant=variant)
    with torch.no_grad():  # make the gates non-trivial
        for p in model.gates.parameters():
            p.add_(0.3 * torch.randn_like(p))
    folder = tmp_path / variant
    save_mixture(folder, model, {"data": {"cache_key": "abc",
                                          "instrument": INSTRUMENT.model_dump()}})
    return model, folder


def _windows(n=16, seed=0):
    return np.random.default_rng(seed).standard_normal((n, W, F)).astype(np.float32)


@pytest.mark.parametrize("variant,expert", [("cmm", {}), ("cmm", {"input_steps": 3}),
                                            ("cmm", {"activation": "gelu"}),
                                            ("no_task", {}), ("no_data", {}), ("kd", {})])
def test_fused_paths_equal_torch_for_every_gate(tmp_path, variant, expert):
    model, folder = _save(tmp_path, variant, **expert)
    fused, meta = load_fused(folder)
    x, r = _windows(), np.arange(16) % 3
    for gate in fused.gates:
        want, want_w = model.predict(x, r, gate)
        got, got_w = fused.predict(x, r, gate)
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(got_w, np.stack([want_w[t] for t in model.tasks], 1),
                                   rtol=1e-4, atol=1e-6)
        for i in range(4):
            y1, w1 = fused.predict_one(x[i], int(r[i]), gate)
            np.testing.assert_allclose(y1, want[i], rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(w1.sum(axis=1), 1.0, rtol=1e-5)
            y2, _ = fused.predict_one_numpy(x[i], int(r[i]), gate)
            np.testing.assert_allclose(y2, want[i], rtol=1e-4, atol=1e-5)


def test_permuting_experts_in_the_fused_path_permutes_weights(tmp_path):
    _, folder = _save(tmp_path)
    fused, _ = load_fused(folder)
    x = _windows(1)[0]
    y, w = fused.predict_one(x)
    perm = np.array([2, 0, 1])
    fused.route_expert = fused.route_expert[:, perm].copy()
    fused.route_output = fused.route_output[:, perm].copy()
    yp, wp = fused.predict_one(x)
    np.testing.assert_allclose(yp, y, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(wp, w[:, perm], rtol=1e-5, atol=1e-7)


def test_artefact_is_safetensors_and_json_and_round_trips(tmp_path):
    model, folder = _save(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == ["mixture.json", "mixture.safetensors"]
    meta = json.loads((folder / "mixture.json").read_text())
    assert meta["kind"] == "cmm.mixture" and meta["schema_version"] == 1
    assert set(meta["gates"]) == set(GATES)
    again, _ = load_torch(folder)
    x = _windows()
    for gate in GATES:
        np.testing.assert_allclose(again.predict(x, None, gate)[0], model.predict(x, None, gate)[0],
                                   rtol=1e-6)


def test_a_wrong_artefact_is_refused(tmp_path):
    with pytest.raises(InputError, match="run `cmm moe` first"):
        Quoter.load(tmp_path)
    _, folder = _save(tmp_path)
    meta = json.loads((folder / "mixture.json").read_text())
    meta["schema_version"] = 99
    (folder / "mixture.json").write_text(json.dumps(meta))
    with pytest.raises(Exception, match="schema 99"):
        Quoter.load(folder)


def test_decide_gives_predictions_weights_and_the_ladder(tmp_path):
    model, folder = _save(tmp_path)
    ladder = LadderConfig(levels=4, participation=0.5)
    quoter = Quoter.load(folder, ladder=ladder)
    x = _windows(3)
    for i, pos in enumerate((0.0, 0.01, -0.02)):
        d = quoter.decide(x[i], best_bid=30000.0, best_ask=30000.1, position=pos)
        want, _ = model.predict(x[i:i + 1], None, "hajek")
        np.testing.assert_allclose(d.predictions, want[0], rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(d.weights.sum(axis=1), 1.0, rtol=1e-5)
        ref = quote_ladder(ladder, INSTRUMENT, best_bid=30000.0, best_ask=30000.1,
                           mid_bps=d.predictions[0], spread_ticks=d.predictions[1],
                           volume_log1p=d.predictions[2], position=pos)
        assert d.valid
        np.testing.assert_array_equal(d.bid_ticks, ref.bid_ticks)
        np.testing.assert_array_equal(d.ask_ticks, ref.ask_ticks)
        np.testing.assert_allclose(d.bid_qty, ref.bid_qty)
        np.testing.assert_allclose(d.ask_qty, ref.ask_qty)
        assert d.bid_px.max() < 30000.1 and d.ask_px.min() > 30000.0
    crossed = quoter.decide(x[0], best_bid=30000.2, best_ask=30000.1)
    assert not crossed.valid and crossed.bid_lots.sum() == 0


def test_decide_rejects_a_window_of_the_wrong_shape(tmp_path):
    _, folder = _save(tmp_path)
    quoter = Quoter.load(folder)
    with pytest.raises(InputError, match="window of the wrong size"):
        quoter.decide(np.zeros((W + 1, F), np.float32), 1.0, 1.1)


def test_the_decision_path_imports_no_torch(tmp_path):
    _, folder = _save(tmp_path)
    code = ("import sys, numpy as np\n"
            "from cmm.moe import Quoter\n"
            f"q = Quoter.load({str(folder)!r})\n"
            f"d = q.decide(np.zeros(({W}, {F}), np.float32), 100.0, 100.1)\n"
            "print('torch' in sys.modules, d.predictions.shape)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "(3,)"]


def test_latency_is_measured_on_one_thread_in_a_fresh_process(tmp_path):
    from cmm.moe.latency import measure_in_subprocess

    _, folder = _save(tmp_path)
    lat = measure_in_subprocess(folder, _windows(), repeats=1000, warmup=10)
    assert lat["n"] == 1000 and lat["threads"] == 1 and lat["batch"] == 1
    assert 0 < lat["p50_us"] <= lat["p99_us"]


class _FakeDataset:
    """What the cmm policy reads from a PreparedDataset."""

    def __init__(self, key="abc", n=12):
        self.cache_key = key
        self.spec = type("Spec", (), {"instrument": INSTRUMENT})()
        self._x = _windows(n)

    def windows(self, split):
        return self._x

    def regimes(self, split):
        return np.arange(len(self._x)) % 3


def test_cmm_policy_predicts_with_the_measured_latency(tmp_path):
    from cmm.strategy.policy import get_policy, register_policy

    model, folder = _save(tmp_path)
    meta = json.loads((folder / "mixture.json").read_text())
    meta["latency"] = {"p50": 42.5, "p99": 80.0}
    (folder / "mixture.json").write_text(json.dumps(meta))
    register_policy("cmm", module="cmm.moe.policy")
    ds = _FakeDataset()
    for gate in ("hajek", "regime"):
        policy = get_policy("cmm", {"artefact": str(folder), "gate": gate}).fit(ds)
        assert policy.latency_ns == 42_500
        plan = type("Plan", (), {"n_rows": 12})()
        pred = policy.act(ds, "test", plan)
        want, _ = model.predict(ds.windows("test"), ds.regimes("test"), gate)
        np.testing.assert_allclose(pred.matrix(12)[:, :3], want, rtol=1e-4, atol=1e-5)
        assert math.isnan(pred.matrix(12)[0, 3])
    fixed = get_policy("cmm", {"artefact": str(folder), "latency_ns": 7}).fit(ds)
    assert fixed.latency_ns == 7
    with pytest.raises(Exception, match="run `cmm distill` and `cmm moe` again"):
        get_policy("cmm", {"artefact": str(folder)}).fit(_FakeDataset(key="other"))
