"""The code version of a stage: a hash of the source of the package modules it runs, in every
stage key and in the prepared-dataset key, so that a fixed bug reruns what it touched instead
of silently reusing results computed before the fix (issue 12).

Which modules a stage runs: its entry modules (:data:`STAGE_ENTRIES`) and every ``cmm`` module
they import, at module level or inside functions (the import graph read from the source with
:mod:`ast`), plus the modules the registries load by name (the readers of
:mod:`cmm.data.readers`, the policies of :data:`cmm.strategy.policy.POLICIES`). The orchestrators
(:mod:`cmm.pipeline.run`, :mod:`cmm.cli`) are not followed, because they import every stage;
``cmm.pipeline.run`` itself is in every run stage's set, since the stages' work functions live
there (not in the prepared dataset's, which ``cmm data prepare`` builds without it).

A module's hash is that of its syntax tree (``ast.dump``), so comments and formatting do not
count and a changed docstring does. Over-inclusion is the safe side: an edit to ``cmm.config``
reruns every stage; a stage never misses an edit of a module it imports.
"""

from __future__ import annotations

import ast
import functools
import hashlib
from pathlib import Path

__all__ = ["STAGE_ENTRIES", "code_version", "stage_modules", "import_graph", "package_modules"]

PACKAGE = Path(__file__).resolve().parent
ORCHESTRATORS = ("cmm.pipeline.run", "cmm.cli", "cmm.__main__")
# Entry modules per stage kind (``StageRunner.run``'s ``kind``); "*": every module under a package
STAGE_ENTRIES: dict[str, tuple[str, ...]] = {
    "dataset": ("cmm.data.prepare", "cmm.data.readers.*"),  # the prepared-dataset cache key
    "data": ("cmm.data.prepare", "cmm.data.readers.*"),
    "crash": ("cmm.pipeline.stress",),
    "teacher": ("cmm.teacher.pipeline",),
    "features": ("cmm.teacher.features",),
    "probe": ("cmm.probe.pipeline",),
    "distill": ("cmm.distill.pipeline",),
    "moe": ("cmm.moe.pipeline", "cmm.moe.latency"),
    "rl": ("cmm.rl.train",),
    "backtest": ("cmm.backtest.runner", "cmm.backtest.metrics", "cmm.backtest.artefacts",
                 "cmm.pipeline.policies", "cmm.moe.latency", "cmm.teacher.fit", "policies"),
    "report": ("cmm.report",),
}


@functools.lru_cache(maxsize=None)
def package_modules(root: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package under ``root``: dotted name -> file."""
    mods = {}
    for path in sorted(root.rglob("*.py")):
        parts = (root.name, *path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        mods[".".join(parts)] = path
    return mods


@functools.lru_cache(maxsize=None)
def _parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(encoding="utf-8"), filename=str(path))


@functools.lru_cache(maxsize=None)
def import_graph(root: Path = PACKAGE) -> dict[str, frozenset[str]]:
    """Module -> the package's modules it imports anywhere in its body (inside functions too).
    ``from a.b import c`` counts as importing ``a.b.c`` where that is a module, else ``a.b``; a
    package's ``__init__`` importing its own modules is not counted as an edge back up."""
    mods = package_modules(root)

    def owner(name: str) -> str | None:
        while name and name not in mods:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in mods.items():
        deps = set()
        for node in ast.walk(_parsed(path)):
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [f"{node.module}.{a.name}" for a in node.names]
            else:
                continue
            for target in targets:
                dep = owner(target) if target.split(".")[0] == root.name else None
                if dep and dep != name and not name.startswith(dep + "."):
                    deps.add(dep)
        graph[name] = frozenset(deps)
    return graph


def _policy_table(mods: dict[str, Path]) -> dict[str, str]:
    """``cmm.strategy.policy.POLICIES``'s modules (policy name -> module), read from its source
    so that this module imports nothing of the package."""
    for node in _parsed(mods["cmm.strategy.policy"]).body:
        target = node.target if isinstance(node, ast.AnnAssign) else (
            node.targets[0] if isinstance(node, ast.Assign) else None)
        if isinstance(target, ast.Name) and target.id == "POLICIES":
            return {name: e["module"] for name, e in ast.literal_eval(node.value).items()}
    raise RuntimeError("internal: cmm.strategy.policy has no POLICIES table")


def _entries(kind: str, root: Path) -> list[str]:
    mods = package_modules(root)
    if kind not in STAGE_ENTRIES:  # a stage kind without a table entry: the whole package
        return sorted(mods)
    out = []
    for entry in STAGE_ENTRIES[kind]:
        if entry == "policies":  # the registry's table names the modules it imports
            out += sorted(set(_policy_table(mods).values()))
        elif entry.endswith(".*"):
            out += [m for m in mods if m.startswith(entry[:-1])]
        else:
            out.append(entry)
    return out


@functools.lru_cache(maxsize=None)
def stage_modules(kind: str, root: Path = PACKAGE) -> tuple[str, ...]:
    """The modules whose source makes up the code version of stage ``kind``."""
    graph = import_graph(root)
    seen: set[str] = set()
    # the run's stages also run cmm.pipeline.run's code; a prepared dataset (shared by every
    # run and by `cmm data prepare`) does not
    todo = [*_entries(kind, root), *(() if kind == "dataset" else ("cmm.pipeline.run",))]
    while todo:
        name = todo.pop()
        if name in seen or name not in graph:
            continue
        seen.add(name)
        if not name.startswith(ORCHESTRATORS):
            todo.extend(graph[name])
    return tuple(sorted(seen))


@functools.lru_cache(maxsize=None)
def code_version(kind: str, root: Path = PACKAGE) -> str:
    """16 hex digits: the hash of the syntax trees of :func:`stage_modules` ``(kind)``."""
    mods = package_modules(root)
    h = hashlib.sha256()
    for name in stage_modules(kind, root):
        h.update(name.encode())
        h.update(ast.dump(_parsed(mods[name])).encode())
    return h.hexdigest()[:16]
