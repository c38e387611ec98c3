"""Which policies a run backtests, under which names, how each is built, and its replay.

Three sources:

- ``registry``: a policy registered by name (``fixed``, ``as``, ``oracle``, RL policies), built
  with ``get_policy`` and its settings from ``RunConfig.policy_settings``, fitted on the
  training split; a ``seed`` setting, when the policy has one, is the run's seed;
- ``teacher``: the fitted teacher LLM's predictions (batch-computed before the replay), charged
  with its measured decision latency (``teacher/latency.json``'s ``charged_ns``);
- ``mixture``: a saved mixture of the mixture stage (CMM, a distillation baseline or an
  ablation) through the ``cmm`` policy, charged with its Quoter's measured one-thread latency
  for the gate used.

``policy_settings.teacher.latency_ns`` and ``policy_settings.cmm.latency_ns`` replace the
measured latencies of all teacher and all mixture policies (for reproducible tests).

Registry policies whose fit does not use the seed (``seeded: False`` in
:data:`cmm.strategy.policy.POLICIES`: fixed spread, Avellaneda-Stoikov, the perfect-forecast
ladder, the ridge and LightGBM yardsticks, the last with its own fixed ``YardstickConfig.seed``)
are backtested once per dataset (``seeded`` False) and paired with every seed's learned
policies on the same episodes.

The price of latency (method.md, "Backtest and metrics") adds two replays per seed: the teacher
charged no latency (``latency`` "zero", a hypothetical instant LLM) and CMM charged the
teacher's latency (``latency`` "teacher").

A backtest stage builds its policy (:func:`build_policy`) and replays it on the test split
(:func:`replay`), writing the files ``cmm backtest`` writes; the stage's code version follows
this module (:data:`cmm.codeversion.STAGE_ENTRIES`), so what a replay runs lives here.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from cmm.config import RunConfig
from cmm.io import atomic_path, read_json, write_json
from cmm.strategy.policy import policy_label, policy_seeded

log = logging.getLogger("cmm.run")  # the run's logger: its warnings go to logs/run.log

Source = Literal["registry", "teacher", "mixture"]
SPLIT = "test"  # the split every replay of a run is of
# a mixture replay's gate weights per decision, beside the backtest's files (report: the figure)
GATE_WEIGHTS_FILE = "weights.npz"
PREDICTION_FILE = "prediction.json"  # a mixture replay's test-split prediction errors
# a teacher that is not distilled: its test-split predictions, written by its fit stage
TEACHER_PREDICTIONS_FILE = "test_predictions.npy"

# Report names of what a run backtests beyond the registry's policies (whose names are in
# cmm.strategy.policy.POLICIES): mixtures, distillation baselines, ablations, controls, and
# the price-of-latency replays.
LABELS = {
    "teacher-random": "teacher LLM (random-init backbone)",
    "cmm-mean": "CMM, mean of experts",
    "cmm-router": "CMM, input-router gate", "cmm-regime": "CMM, hard regime routing",
    "cmm-hajek": "CMM (Hájek-MoE)", "cmm-random": "CMM from random-init teacher",
    "kd": "vanilla KD student", "fitnets": "FitNets student", "multitask": "multi-task student",
    "truth": "ground-truth student", "no_layer": "CMM w/o layer decomposition",
    "no_task": "CMM w/o task decomposition", "no_data": "CMM w/o data decomposition",
    "teacher-zero-latency": "teacher LLM at zero latency",
    "cmm-teacher-latency": "CMM at the teacher's latency",
}


@dataclass(frozen=True)
class PolicySpec:
    """One backtested policy. ``slug``: its folder; ``name``: registry name, teacher folder
    (``teacher`` or ``teacher-random``) or mixture variant; ``gate``: the mixture's gate (None:
    Hájek when the mixture has it, else its only gate); ``chain``: ``main`` or ``control`` (the
    random-init teacher's distillation); ``seeded``: backtested once per seed (False: once per
    dataset, see :func:`cmm.strategy.policy.policy_seeded`); ``latency``: charged its own
    latency, none (``zero``) or the teacher's (``teacher``)."""

    slug: str
    label: str
    source: Source
    name: str
    gate: str | None = None
    chain: str = "main"
    seeded: bool = True
    latency: Literal["own", "zero", "teacher"] = "own"

    def to_json(self) -> dict:
        """The fields, those two at their defaults left out: a stage key names only what
        differs from the policies of earlier versions, whose stages stay valid."""
        out = asdict(self)
        if out["seeded"]:
            del out["seeded"]
        if out["latency"] == "own":
            del out["latency"]
        return out


def label_of(slug: str) -> str:
    """The report's name of a policy a run backtests (``slug``: its folder)."""
    return LABELS[slug] if slug in LABELS else policy_label(slug)


def policy_specs(config: RunConfig, available: list[str]) -> tuple[list[PolicySpec],
                                                                   dict[str, list[str]],
                                                                   list[dict]]:
    """Every policy to backtest, the slugs of each table, and the policies left out (with
    why)."""
    specs: dict[str, PolicySpec] = {}

    def add(spec: PolicySpec) -> str:
        specs.setdefault(spec.slug, spec)
        return spec.slug

    gates = tuple(config.moe.gates)
    main_gate = "hajek" if "hajek" in gates else gates[0]
    cmm_label = label_of("cmm") if main_gate == "hajek" else f"CMM ({main_gate})"
    cmm = add(PolicySpec("cmm", cmm_label, "mixture", "cmm", main_gate))
    teacher = add(PolicySpec("teacher", label_of("teacher"), "teacher", "teacher"))
    skipped: list[dict] = []
    main = [teacher, cmm]
    for b in config.distill.baselines:
        main.append(add(PolicySpec(b, label_of(b), "mixture", b)))
    registry = [b for b in config.baselines if b != "oracle"]
    for name in registry:
        main.append(add(PolicySpec(name, label_of(name), "registry", name,
                                   seeded=policy_seeded(name))))
    for name in config.rl:
        if name in available:
            main.append(add(PolicySpec(name, label_of(name), "registry", name)))
        else:
            skipped.append({"policy": name, "reason": "not registered (the RL stage is not "
                                                      "installed in this version)"})
    if "oracle" in config.baselines:
        main.append(add(PolicySpec("oracle", label_of("oracle"), "registry", "oracle",
                                   seeded=policy_seeded("oracle"))))
    ablations = [cmm] + [add(PolicySpec(a, label_of(a), "mixture", a))
                         for a in config.distill.ablations]
    gate_rows = []
    for g in gates:
        slug = cmm if g == main_gate else f"cmm-{g}"
        gate_rows.append(add(PolicySpec(slug, label_of(slug), "mixture", "cmm", g)))
    backbone = [teacher]
    if config.controls.random_teacher:
        backbone.append(add(PolicySpec("teacher-random", label_of("teacher-random"), "teacher",
                                       "teacher-random")))
        if config.controls.random_distill:
            backbone += [cmm, add(PolicySpec("cmm-random", label_of("cmm-random"), "mixture",
                                             "cmm", main_gate, chain="control"))]
    tables = {"main": main, "ablations": ablations if config.distill.ablations else [],
              "gates": gate_rows if len(gates) > 1 else [], "backbone":
              backbone if len(backbone) > 1 else []}
    crash = (list(config.robustness.crash_policies) if config.robustness.crash_policies
             is not None else main)
    unknown = [c for c in crash if c not in specs]
    if unknown:
        from cmm.errors import InputError

        raise InputError("unknown policy in robustness.crash_policies",
                         field="robustness.crash_policies", expected=", ".join(specs),
                         got=unknown)
    tables["robustness"] = main
    tables["latency_price"] = [
        add(PolicySpec("teacher-zero-latency", label_of("teacher-zero-latency"), "teacher",
                       "teacher", latency="zero")),
        teacher, cmm,
        add(PolicySpec("cmm-teacher-latency", label_of("cmm-teacher-latency"), "mixture", "cmm",
                       main_gate, latency="teacher"))]
    tables["crash"] = crash if config.robustness.flash_crash is not None else []
    return list(specs.values()), tables, skipped


# ------------------------------------------------------------------- building and replaying


def run_seed(c: RunConfig) -> int:
    """The run seed of a :func:`cmm.pipeline.run.seeded` configuration (its students'; its
    teacher's may be shared with other run seeds): it seeds the learned policies and names a
    seeded replay."""
    return c.distill.train.seed


def build_policy(spec: PolicySpec, ds, target, c: RunConfig, chain: dict, settings: dict,
                 latency_ns: int | None) -> tuple[Any, dict]:
    """The fitted policy for ``spec`` and anything extra to save beside its backtest."""
    from cmm.strategy.policy import PrecomputedPolicy, Predictions, get_policy

    if spec.source == "registry":
        policy = get_policy(spec.name, settings or None)
        if spec.seeded and policy.config is not None \
                and "seed" in type(policy.config).model_fields and "seed" not in settings:
            policy = get_policy(spec.name, {**settings, "seed": run_seed(c)})
        return policy.fit(ds), {}
    if spec.source == "teacher":
        t_dir = Path(chain["teacher_dir"])
        if target is ds and (t_dir / "features" / "test.safetensors").is_file():
            from cmm.teacher.features import load_features

            pred = load_features(t_dir, SPLIT, ds).pred.astype(np.float64)
        elif target is ds and (t_dir / TEACHER_PREDICTIONS_FILE).is_file():
            pred = np.load(t_dir / TEACHER_PREDICTIONS_FILE)
        else:
            from cmm.teacher.pipeline import teacher_predict

            pred = teacher_predict(t_dir, ds, target.windows(SPLIT), c.teacher.infer_batch_size,
                                   c.teacher.device)
        from cmm.teacher.policy import teacher_latency_ns

        # the rule of `cmm backtest --policy teacher` too: measured when the teacher was fitted
        latency_ns = teacher_latency_ns(t_dir, _given(latency_ns, settings))
        policy = PrecomputedPolicy({SPLIT: Predictions.from_array(pred)}, latency_ns,
                                   name=spec.slug)
        return policy, {}
    # a mixture through the `cmm` policy
    from cmm.moe.artefact import META_FILE as MIXTURE_META_FILE
    from cmm.moe.policy import CmmPolicy, mixture_latency_ns  # registers "cmm"

    folder = Path(chain["moe_dir"]) / spec.name
    meta = read_json(folder / MIXTURE_META_FILE)
    gates = list(meta.get("gates", {})) or chain.get("gates", {}).get(spec.name, ["mean"])
    gate = spec.gate if spec.gate in gates else ("hajek" if "hajek" in gates else gates[0])
    # the rule of `cmm backtest --policy cmm` too: measured when the mixture stage made it
    latency_ns = mixture_latency_ns(folder, meta, gate, ds, _given(latency_ns, settings),
                                    repeats=c.moe.latency_repeats, warmup=c.moe.latency_warmup)
    policy = CmmPolicy(CmmPolicy.config_class(artefact=str(folder), gate=gate,
                                              latency_ns=latency_ns))
    policy.fit(ds)
    policy.name = spec.slug
    return policy, {"gate": gate, "weights": spec.slug == "cmm" and target is ds}


def _given(latency_ns: int | None, settings: dict) -> int | None:
    """The latency a replay is told to charge: ``latency_ns`` (a crash replay: its original's),
    else the settings' (the price of latency, ``policy_settings``); None: the policy's own."""
    return latency_ns if latency_ns is not None else settings.get("latency_ns")


def replay(policy, target, c: RunConfig, out: Path, spec: PolicySpec, extra: dict) -> dict:
    """Replay ``policy`` on the test split of ``target`` and write its backtest's files to
    ``out`` (those of `cmm backtest`; CMM's expert weights too, where ``extra`` asks); the
    stage's result."""
    from cmm.backtest.artefacts import write_backtest
    from cmm.backtest.runner import run_backtest

    result = run_backtest(target, policy, SPLIT, ladder=c.ladder, config=c.backtest)
    for w in result.warnings:
        log.warning(w)
    # the files `cmm backtest` writes too, by the same function
    metrics = write_backtest(out, result, policy=spec.to_json(), latency_ns=policy.latency_ns,
                             gate=extra.get("gate")).metrics
    if extra.get("weights"):
        _save_weights(policy, target, out)
    return {"latency_ns": int(policy.latency_ns), "EPnL": metrics["EPnL"],
            "episodes": metrics["episodes"], "gate": extra.get("gate")}


def _save_weights(policy, ds, out: Path) -> None:
    """The mixture's per-decision expert weights on the test split, with each sample's time and
    regime (the report's "expert weights over time" figure), and its test prediction metrics
    as the teacher's evaluation computes them, up/flat/down of the mid included
    (``prediction.json``: the report's prediction table)."""
    from cmm.teacher.evaluate import regression_metrics
    from cmm.yardsticks import flat_threshold_bps

    samples = ds.split_samples(SPLIT)
    regimes = np.asarray(ds.regimes(SPLIT))
    quoter = policy.quoter_
    gate_regimes = regimes if quoter.gate == "regime" else None
    pred, weights = quoter.predict_batch(ds.windows(SPLIT), gate_regimes)
    write_json(out / PREDICTION_FILE, {
        "split": SPLIT, "gate": quoter.gate, "windows": len(pred),
        "metrics": regression_metrics(pred, ds.targets(SPLIT), flat_threshold_bps(ds))})
    meta = quoter.meta
    names = [e.get("name", f"expert {i}").split("/")[-1]
             for i, e in enumerate(meta.get("experts", []))]
    experts = {t: [names[i] if i < len(names) else f"expert {i}"
                   for i, _ in meta.get("routes", {}).get(t, [])]
               for t in quoter.mixture.tasks}
    with atomic_path(out / GATE_WEIGHTS_FILE) as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, weights=weights.astype(np.float32),
                                ts_ns=samples["ts_ns"].to_numpy(),
                                session=samples["session"].to_numpy(), regime=regimes,
                                tasks=np.array(list(quoter.mixture.tasks)),
                                experts=np.array([";".join(experts[t])
                                                  for t in quoter.mixture.tasks]))
