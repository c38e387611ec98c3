"""Which policies a run backtests, under which names, and how each is built.

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

Registry policies whose fit does not use the seed (:data:`SEED_INDEPENDENT`: fixed spread,
Avellaneda-Stoikov, the perfect-forecast ladder, the ridge and LightGBM yardsticks, the last
with its own fixed ``YardstickConfig.seed``) are backtested once per dataset (``seeded``
False) and paired with every seed's learned policies on the same episodes.

The price of latency (method.md, "Backtest and metrics") adds two replays per seed: the teacher
charged no latency (``latency`` "zero", a hypothetical instant LLM) and CMM charged the
teacher's latency (``latency`` "teacher").
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Literal

from cmm.config import RunConfig

Source = Literal["registry", "teacher", "mixture"]

LABELS = {
    "teacher": "teacher LLM", "teacher-random": "teacher LLM (random-init backbone)",
    "cmm": "CMM (Hájek-MoE)", "cmm-mean": "CMM, mean of experts",
    "cmm-router": "CMM, input-router gate", "cmm-regime": "CMM, hard regime routing",
    "cmm-hajek": "CMM (Hájek-MoE)", "cmm-random": "CMM from random-init teacher",
    "kd": "vanilla KD student", "fitnets": "FitNets student", "multitask": "multi-task student",
    "truth": "ground-truth student", "no_layer": "CMM w/o layer decomposition",
    "no_task": "CMM w/o task decomposition", "no_data": "CMM w/o data decomposition",
    "fixed": "fixed spread", "as": "Avellaneda-Stoikov", "oracle": "perfect-forecast ladder",
    "ppo": "PPO", "dqn": "DQN", "ridge": "ridge (hand features)",
    "lgbm": "LightGBM (hand features)",
    "teacher-zero-latency": "teacher LLM at zero latency",
    "cmm-teacher-latency": "CMM at the teacher's latency",
}

# Registry policies whose fit and replay do not depend on the run's seed.
SEED_INDEPENDENT = frozenset({"fixed", "as", "oracle", "ridge", "lgbm"})


@dataclass(frozen=True)
class PolicySpec:
    """One backtested policy. ``slug``: its folder; ``name``: registry name, teacher folder
    (``teacher`` or ``teacher-random``) or mixture variant; ``gate``: the mixture's gate (None:
    Hájek when the mixture has it, else its only gate); ``chain``: ``main`` or ``control`` (the
    random-init teacher's distillation); ``seeded``: backtested once per seed (False: once per
    dataset, see :data:`SEED_INDEPENDENT`); ``latency``: charged its own latency, none
    (``zero``) or the teacher's (``teacher``)."""

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


def _label(slug: str) -> str:
    return LABELS.get(slug, slug)


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
    cmm = add(PolicySpec("cmm", _label("cmm") if main_gate == "hajek" else f"CMM ({main_gate})",
                         "mixture", "cmm", main_gate))
    teacher = add(PolicySpec("teacher", _label("teacher"), "teacher", "teacher"))
    skipped: list[dict] = []
    main = [teacher, cmm]
    for b in config.distill.baselines:
        main.append(add(PolicySpec(b, _label(b), "mixture", b)))
    registry = [b for b in config.baselines if b != "oracle"]
    for name in registry:
        main.append(add(PolicySpec(name, _label(name), "registry", name,
                                   seeded=name not in SEED_INDEPENDENT)))
    for name in config.rl:
        if name in available:
            main.append(add(PolicySpec(name, _label(name), "registry", name)))
        else:
            skipped.append({"policy": name, "reason": "not registered (the RL stage is not "
                                                      "installed in this version)"})
    if "oracle" in config.baselines:
        main.append(add(PolicySpec("oracle", _label("oracle"), "registry", "oracle",
                                   seeded="oracle" not in SEED_INDEPENDENT)))
    ablations = [cmm] + [add(PolicySpec(a, _label(a), "mixture", a))
                         for a in config.distill.ablations]
    gate_rows = []
    for g in gates:
        slug = cmm if g == main_gate else f"cmm-{g}"
        gate_rows.append(add(PolicySpec(slug, _label(slug), "mixture", "cmm", g)))
    backbone = [teacher]
    if config.controls.random_teacher:
        backbone.append(add(PolicySpec("teacher-random", _label("teacher-random"), "teacher",
                                       "teacher-random")))
        if config.controls.random_distill:
            backbone += [cmm, add(PolicySpec("cmm-random", _label("cmm-random"), "mixture",
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
        add(PolicySpec("teacher-zero-latency", _label("teacher-zero-latency"), "teacher",
                       "teacher", latency="zero")),
        teacher, cmm,
        add(PolicySpec("cmm-teacher-latency", _label("cmm-teacher-latency"), "mixture", "cmm",
                       main_gate, latency="teacher"))]
    tables["crash"] = crash if config.robustness.flash_crash is not None else []
    return list(specs.values()), tables, skipped
