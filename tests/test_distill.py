"""OFDD students, the expert grid, baselines and ablations, sample selection, fits, executors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cmm.config import DistillConfig, ExpertConfig, StudentTrainConfig
from cmm.data.windows import Windows
from cmm.distill.executor import ProcessExecutor, SerialExecutor, get_executor
from cmm.distill.plan import SplitArrays, build_jobs, build_variants
from cmm.distill.students import (
    HintProjections,
    build_student,
    count_parameters,
    matched_expert,
    mlp_parameters,
)
from cmm.distill.train import train_student
from cmm.errors import InputError, UnknownNameError

GROUPS = {"shallow": [0, 1], "middle": [2, 3], "deep": [4, 5]}
ASSIGN = {"mid": "shallow", "spread": "middle", "volume": "deep"}
W, F, L, D = 8, 3, 6, 12


def test_student_shapes_and_input_steps():
    s = build_student(W, F, 2, ExpertConfig(hidden=10, z_dim=4, input_steps=3))
    out = s(torch.zeros(5, W, F))
    assert out.z.shape == (5, 4) and out.y.shape == (5, 2)
    assert count_parameters(s) == mlp_parameters(3 * F, 10, 4, 2)
    # only the last 3 steps matter
    x = torch.randn(2, W, F)
    x2 = x.clone()
    x2[:, :W - 3] = 99.0
    torch.testing.assert_close(s(x).y, s(x2).y)
    with pytest.raises(InputError, match=r"expected \(B, 8, 3\)"):
        s(torch.zeros(2, W + 1, F))
    with pytest.raises(InputError, match="expert.input_steps"):
        build_student(W, F, 1, ExpertConfig(input_steps=W + 1))


def test_unknown_architecture_lists_the_valid_ones():
    with pytest.raises(UnknownNameError, match="valid: mlp"):
        build_student(W, F, 1, ExpertConfig(arch="transformer"))


@pytest.mark.parametrize("target", [5_000, 60_000, 500_000])
def test_matched_expert_hits_the_parameter_budget(target):
    e = matched_expert(ExpertConfig(hidden=32, z_dim=16), 1728, 3, target)
    got = mlp_parameters(1728, e.hidden, e.z_dim, 3)
    assert abs(got - target) <= 1728 + 4  # within one hidden unit
    assert e.z_dim == max(1, round(e.hidden / 2))


def test_the_grid_baselines_and_ablations():
    cfg = DistillConfig(expert=ExpertConfig(hidden=16, z_dim=8))
    variants = {v.name: v for v in build_variants(cfg, GROUPS, ASSIGN, L, W * F)}
    assert list(variants) == ["cmm", "no_layer", "no_task", "no_data", "kd", "fitnets",
                              "multitask", "truth"]
    cmm = variants["cmm"]
    assert len(cmm.students) == 9
    for s in cmm.students:
        task = ("mid", "spread", "volume")[s.tasks[0]]
        assert s.hints == (tuple(GROUPS[ASSIGN[task]]),) and len(s.regimes) == 1
    assert {t: len(r) for t, r in cmm.routes.items()} == {"mid": 3, "spread": 3, "volume": 3}
    assert all(s.hints == (tuple(range(L)),) for s in variants["no_layer"].students)
    no_task = variants["no_task"]
    assert len(no_task.students) == 3 and all(len(s.tasks) == 3 for s in no_task.students)
    assert no_task.routes["volume"] == [(s.name, 2) for s in no_task.students]
    no_data = variants["no_data"]
    assert len(no_data.students) == 3 and all(s.regimes == (0, 1, 2) for s in no_data.students)
    assert variants["kd"].students[0].hints == () and variants["kd"].students[0].lambdas[0] == 0
    assert variants["fitnets"].students[0].hints == ((L // 2,),)
    assert len(variants["multitask"].students[0].hints) == 3
    assert variants["truth"].students[0].lambdas == (0.0, 0.0, 1.0)
    total = sum(mlp_parameters(W * F, s.expert.hidden, s.expert.z_dim, len(s.tasks))
                for s in cmm.students)
    for name, v in variants.items():
        n = sum(mlp_parameters(W * F, s.expert.hidden, s.expert.z_dim, len(s.tasks))
                for s in v.students)
        assert abs(n - total) / total < 0.1, (name, n, total)
    # the seed of a student depends on its name only
    again = build_variants(cfg, GROUPS, ASSIGN, L, W * F)[0]
    assert [s.seed for s in again.students] == [s.seed for s in cmm.students]


def test_groups_all_trains_one_expert_per_group():
    cfg = DistillConfig(grid={"groups": "all", "regimes": (0, 2)}, baselines=(), ablations=())
    (cmm,) = build_variants(cfg, GROUPS, ASSIGN, L, W * F)
    assert len(cmm.students) == 3 * 3 * 2
    assert len(cmm.routes["mid"]) == 6


def _split(n, regimes, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, W, F)).astype(np.float32)
    y = np.stack([x[:, -1, 0], 1 + x[:, :, 1].mean(1), x[:, :, 2].std(1)], 1).astype(np.float32)
    hidden = rng.standard_normal((n, L, D)).astype(np.float16)
    hidden[:, :, 0] = x[:, -1, 0:1]  # some teacher features the student can learn
    return SplitArrays(Windows.from_stacked(x), y,
                       y + 0.1 * rng.standard_normal(y.shape).astype(np.float32), hidden,
                       np.asarray(regimes, np.int8))


def test_stopping_sets_use_validation_or_the_regimes_own_training_tail():
    train = _split(300, np.repeat([0, 1, 2], 100))
    validation = _split(120, np.r_[np.full(110, 2), np.full(10, 1)], seed=1)
    cfg = DistillConfig(min_validation_samples=50, holdout_fraction=0.2, neighbour_weight=0.5,
                        baselines=("kd",), ablations=())
    variants = build_variants(cfg, GROUPS, ASSIGN, L, W * F)
    jobs = {j.spec.name: j for j in build_jobs(variants, cfg, train, validation,
                                               train.y.mean(0), train.y.std(0))}
    high = jobs["cmm/mid-shallow-high"]
    assert high.stop_source == "validation" and len(high.stop) == 110
    # own regime weight 1, neighbour (mid) weight 0.5, low excluded
    assert sorted(np.unique(high.fit.w).tolist()) == [0.5, 1.0] and len(high.fit) == 200
    low = jobs["cmm/mid-shallow-low"]
    assert low.stop_source == "train-tail" and len(low.stop) == 20
    # the tail is held out: nothing at or after the cut is fitted
    np.testing.assert_array_equal(low.stop.x, train.x[80:100])
    assert not any(np.array_equal(low.stop.x[0], xi) for xi in low.fit.x)
    assert jobs["kd/student"].stop_source == "validation" and len(jobs["kd/student"].stop) == 120
    # hint targets are standardised teacher features of the expert's group
    assert high.fit.hints[0].shape == (200, D)
    assert abs(float(train_tail_mean := high.fit.hints[0].mean())) < 0.5, train_tail_mean


def _jobs(epochs=3, **kw):
    train = _split(240, np.repeat([0, 1, 2], 80))
    validation = _split(90, np.repeat([0, 1, 2], 30), seed=1)
    cfg = DistillConfig(expert=ExpertConfig(hidden=8, z_dim=4), min_validation_samples=20,
                        train=StudentTrainConfig(epochs=epochs, batch_size=64, **kw),
                        baselines=("truth",), ablations=())
    variants = build_variants(cfg, GROUPS, ASSIGN, L, W * F)
    return build_jobs(variants, cfg, train, validation, train.y.mean(0), train.y.std(0))


def test_same_seed_same_student_and_another_seed_another():
    a = train_student(_jobs()[0])
    b = train_student(_jobs()[0])
    c = train_student(_jobs(seed=1)[0])
    for k in a.state:
        np.testing.assert_array_equal(a.state[k], b.state[k])
    assert any(not np.array_equal(a.state[k], c.state[k]) for k in a.state)
    assert a.record["history"] == b.record["history"]


def test_fit_lowers_the_stopping_loss_and_keeps_the_best_epoch():
    job = _jobs(epochs=15)[0]
    r = train_student(job)
    hist = [h["stop_loss"] for h in r.record["history"]]
    assert r.record["best_stop_loss"] == pytest.approx(min(hist + [r.record["best_stop_loss"]]))
    assert r.record["best_stop_loss"] < r.record["history"][0]["stop_loss"] * 1.5
    assert r.record["stop_source"] == "validation"
    assert r.record["parameters"] == mlp_parameters(W * F, 8, 4, 1)
    assert r.projections  # the projection P exists for a hinted expert ...
    truth = next(j for j in _jobs() if j.spec.variant == "truth")
    assert not train_student(truth).projections  # ... and not for the truth-only student


def test_loss_weights_select_the_terms():
    from cmm.distill.train import student_loss

    torch.manual_seed(0)
    s = build_student(W, F, 1, ExpertConfig(hidden=4, z_dim=3))
    proj = HintProjections(3, [D])
    x, y, t = torch.randn(6, W, F), torch.randn(6, 1), torch.randn(6, 1)
    h, w = [torch.randn(6, D)], torch.ones(6)
    total, terms = student_loss(s, proj, x, y, t, h, w, (1.0, 0.0, 0.0))
    total = total.detach()
    assert float(total) == pytest.approx(terms["feature"], rel=1e-5)
    total, terms = student_loss(s, proj, x, y, t, h, w, (0.0, 2.0, 3.0))
    total = total.detach()
    assert float(total) == pytest.approx(2 * terms["logit"] + 3 * terms["truth"], rel=1e-5)
    zero_w = torch.tensor([1.0, 0, 0, 0, 0, 0])
    with torch.no_grad():
        total, _ = student_loss(s, proj, x, y, t, h, zero_w, (0.0, 0.0, 1.0))
        assert float(total) == pytest.approx(float(((s(x[:1]).y - y[:1]) ** 2).mean()),
                                             rel=1e-5)


@pytest.mark.slow  # spawns two interpreters that import torch (~10 s on 2 busy cores)
def test_process_executor_gives_the_serial_results():
    jobs = _jobs(epochs=2)[:3]
    serial = SerialExecutor().map(train_student, jobs)
    done = []
    parallel = ProcessExecutor(max_workers=2).map(train_student, jobs,
                                                  lambda k, n: done.append((k, n)))
    assert done[-1] == (3, 3)
    for a, b in zip(serial, parallel, strict=True):
        assert a.spec.name == b.spec.name
        for k in a.state:
            np.testing.assert_array_equal(a.state[k], b.state[k])


def test_unknown_executor_lists_the_valid_ones():
    with pytest.raises(UnknownNameError, match="valid: process, serial"):
        get_executor("ray")
