"""A mixture on disk: one folder, ``mixture.json`` + ``mixture.safetensors``; no pickle.

``mixture.json`` describes itself: schema version, kind, the variant's name, the experts'
specifications and architecture, the routes (task -> [expert, output]), the gates and their
settings, the target scaling, the data (name, cache key, window, features, instrument), the
teacher and probe it was distilled from, every setting, parameter counts and the measured
decision latency. ``mixture.safetensors`` holds the tensors in torch layout:
``experts/<i>/<name>`` and ``gates/<gate>/<task>/<name>``.

Loading needs numpy and safetensors only (:func:`load_fused`); :func:`load_torch` rebuilds the
torch :class:`~cmm.moe.mixture.MixtureModel` for evaluation and tests.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from cmm.io import atomic_path, load_safetensors, read_artefact_meta, write_json
from cmm.moe.fused import FusedMixture

SCHEMA_VERSION = 1
KIND = "cmm.mixture"
META_FILE = "mixture.json"
TENSORS_FILE = "mixture.safetensors"


def save_mixture(folder: str | Path, model, meta: dict) -> Path:
    """Write a torch ``MixtureModel`` (its experts and every gate) and ``meta`` to ``folder``."""
    import torch

    folder = Path(folder)
    tensors: dict[str, np.ndarray] = {}
    for i, student in enumerate(model.students):
        for k, v in student.state_dict().items():
            tensors[f"experts/{i}/{k}"] = v.detach().cpu().numpy().copy()
    gate_settings = {}
    for key, gate in model.gates.items():
        task, name = key.split("/", 1)
        for k, v in gate.state_dict().items():
            tensors[f"gates/{name}/{task}/{k}"] = v.detach().cpu().numpy().copy()
        settings = {"kind": name}
        if hasattr(gate, "temperature"):
            settings["temperature"] = gate.temperature
        if hasattr(gate, "activation"):
            settings["activation"] = gate.activation
        if hasattr(gate, "kernel"):
            settings["kernel_hidden"] = gate.kernel[0].out_features
            settings["dim"] = gate.kernel[2].out_features
        if hasattr(gate, "net"):
            settings["router_hidden"] = (gate.net[0].out_features
                                         if isinstance(gate.net, torch.nn.Sequential) else 0)
        gate_settings[name] = settings
    first = model.students[0]
    full = {
        "schema_version": SCHEMA_VERSION, "kind": KIND, **meta,
        "tasks": list(model.tasks),
        "experts": [s.to_json() for s in model.specs],
        "architecture": {"window": first.window, "n_features": first.n_features,
                         "steps": first.steps, "activation": first.activation},
        "routes": {t: [[i, o] for i, o in r] for t, r in model.routes.items()},
        "gates": gate_settings,
        "y_mean": model.y_mean.tolist(), "y_std": model.y_std.tolist(),
    }
    with atomic_path(folder / TENSORS_FILE) as tmp:
        save_file(tensors, str(tmp), metadata={"schema_version": str(SCHEMA_VERSION),
                                               "kind": KIND})
    write_json(folder / META_FILE, full)
    return folder


def read_mixture(folder: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    meta, tensor_path = read_artefact_meta(folder, META_FILE, TENSORS_FILE, kind=KIND,
                                           schema_version=SCHEMA_VERSION, command="cmm moe")
    return meta, load_safetensors(tensor_path)


def _split(tensors: dict[str, np.ndarray], meta: dict):
    n = len(meta["experts"])
    students = [{} for _ in range(n)]
    gates: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for key, value in tensors.items():
        parts = key.split("/")
        if parts[0] == "experts":
            students[int(parts[1])][parts[2]] = value
        elif parts[0] == "gates":
            gates.setdefault(parts[1], {t: {} for t in meta["tasks"]})[parts[2]][parts[3]] = value
    for name in meta["gates"]:
        gates.setdefault(name, {t: {} for t in meta["tasks"]})
    return students, gates


def fused_from(meta: dict, tensors: dict[str, np.ndarray]) -> FusedMixture:
    students, gates = _split(tensors, meta)
    arch = meta["architecture"]
    return FusedMixture.from_state(
        window=arch["window"], n_features=arch["n_features"], students=students,
        activation=arch["activation"], steps=arch["steps"],
        routes={t: [tuple(r) for r in rs] for t, rs in meta["routes"].items()},
        tasks=tuple(meta["tasks"]), y_mean=meta["y_mean"], y_std=meta["y_std"], gates=gates,
        gate_settings=meta["gates"])


def load_fused(folder: str | Path) -> tuple[FusedMixture, dict]:
    """The numpy decision path of a saved mixture, and its description."""
    meta, tensors = read_mixture(folder)
    return fused_from(meta, tensors), meta


def load_torch(folder: str | Path):
    """The torch ``MixtureModel`` of a saved mixture (experts frozen, gates loaded)."""
    import torch

    from cmm.config import MoEConfig
    from cmm.distill.students import StudentSpec, build_student
    from cmm.vocabulary import TASKS
    from cmm.moe.mixture import MixtureModel

    meta, tensors = read_mixture(folder)
    students_state, gates_state = _split(tensors, meta)
    arch = meta["architecture"]
    specs = [StudentSpec.from_json(d) for d in meta["experts"]]
    students = []
    for spec, state in zip(specs, students_state, strict=True):
        s = build_student(arch["window"], arch["n_features"], len(spec.tasks), spec.expert)
        s.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
        students.append(s.eval())
    routes = {t: [(specs[i].name, o) for i, o in r] for t, r in meta["routes"].items()}
    mean = np.zeros(len(TASKS))
    std = np.ones(len(TASKS))
    for j, t in enumerate(meta["tasks"]):
        mean[TASKS.index(t)], std[TASKS.index(t)] = meta["y_mean"][j], meta["y_std"][j]
    model = MixtureModel(specs, students, routes, mean, std)
    for name, settings in meta["gates"].items():
        cfg = MoEConfig(**{k: settings[k] for k in ("temperature", "activation", "kernel_hidden",
                                                    "dim", "router_hidden") if k in settings})
        model.add_gates((name,), cfg)
        for t in meta["tasks"]:
            state = gates_state[name][t]
            if state:
                model.gates[f"{t}/{name}"].load_state_dict(
                    {k: torch.from_numpy(v) for k, v in state.items()})
    return model.eval(), meta
