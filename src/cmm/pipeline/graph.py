"""The stage contract and the stage graph of a run.

A :class:`Stage` declares everything a run needs to know about it before it runs:

- ``id`` (its name in the display, ``--force`` patterns and the manifest), ``kind`` (what it
  does: ``teacher``, ``backtest``...; the code version of its key, see
  :mod:`cmm.codeversion`) and ``folder`` (the one folder it writes, a
  :class:`~cmm.pipeline.layout.RunLayout` path);
- ``inputs``: the settings and the keys of what it reads, all its key hashes;
- ``reads``: the ids of the stages whose outputs it reads; they run (or are found done) first,
  their results are handed to its work, and when one is redone it is redone too;
- ``work(folder, on_progress, reads)``: writes its outputs into ``folder`` and returns a small
  JSON-able ``info`` (kept in ``stage.json``); ``reads`` maps each read stage's id to its
  :class:`~cmm.pipeline.stages.StageResult` (folder, info);
- ``outputs``: the files its work must leave in ``folder``, by the names their readers use
  (owned by the stage's package: ``cmm.probe.OUTPUTS``, ``cmm.backtest.artefacts.FILES``...);
  a work that returns without one of them fails, and the stage is not marked done;
- ``resources``: what one run of it asks of a worker (``num_cpus``, ``num_gpus``);
- ``checks``: what the run checks in the driver once it is done or found done (the data
  stage's: every split holds windows), before any stage that reads it.

A :class:`StageGraph` holds the stages in the order they were added, which is a topological
order (a stage may only read stages already in it); any executor runs them in an order that
respects ``reads``, the in-process one in this order. Its contract check: every stage key that a
stage's inputs name belongs to a stage it reads, so a stage's key and its schedule never
disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from cmm.codeversion import code_version
from cmm.io import stable_hash

SCHEMA_VERSION = 1  # of stage.json
ProgressFn = Callable[[str, int, int], None]
Work = Callable[[Path, ProgressFn, Mapping[str, Any]], "dict | None"]


@dataclass(eq=False)
class Stage:
    """One stage of a run (see the module docstring)."""

    id: str
    kind: str
    folder: Path
    inputs: dict
    work: Work
    reads: tuple[str, ...] = ()
    scope: str = ""  # the dataset: the time estimates are kept per kind and scope
    aliases: tuple[str, ...] = ()  # other keys by which later inputs name this one's output
    resources: dict = field(default_factory=lambda: {"num_cpus": 1})
    checks: Callable[[Any], None] | None = None
    outputs: tuple[str, ...] = ()

    @cached_property
    def key(self) -> str:
        return stage_key(self.kind, self.inputs)


def stage_key(kind: str, inputs: dict) -> str:
    """A stage's key: its kind, settings and inputs, and the code version of what it runs
    (:func:`cmm.codeversion.code_version`: an edit of a module it imports gives a new key)."""
    return stable_hash({"stage": kind, "schema": SCHEMA_VERSION, "inputs": inputs,
                        "code": code_version(kind)})


def strings_in(obj: Any) -> Iterator[str]:
    """Every string in a JSON-like object (where a stage's inputs name other stages' keys)."""
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from strings_in(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from strings_in(v)


class StageGraph:
    """The stages of a run in a topological order (see the module docstring)."""

    def __init__(self) -> None:
        self.stages: dict[str, Stage] = {}
        self._owner: dict[str, str] = {}  # stage key or alias -> stage id

    def __iter__(self) -> Iterator[Stage]:
        return iter(self.stages.values())

    def __len__(self) -> int:
        return len(self.stages)

    def __contains__(self, stage_id: str) -> bool:
        return stage_id in self.stages

    def __getitem__(self, stage_id: str) -> Stage:
        return self.stages[stage_id]

    def add(self, stage: Stage) -> Stage:
        """Add ``stage`` (a stage already there under the same id and key, e.g. a teacher
        several run seeds share, is returned instead); checks the contract."""
        have = self.stages.get(stage.id)
        if have is not None:
            if have.key != stage.key:
                raise RuntimeError(f"internal: stage {stage.id} declared twice with different "
                                   f"inputs")
            return have
        for r in stage.reads:
            if r not in self.stages:
                raise RuntimeError(f"internal: stage {stage.id} reads {r}, which is not "
                                   f"declared before it")
        named = {self._owner[s] for s in strings_in(stage.inputs) if s in self._owner}
        missing = named - set(stage.reads)
        if missing:
            raise RuntimeError(f"internal: stage {stage.id}'s inputs name the keys of "
                               f"{sorted(missing)}, which it does not declare it reads")
        self.stages[stage.id] = stage
        for k in (stage.key, *stage.aliases):
            self._owner[k] = stage.id
        return stage

    def dependents(self, stage_id: str) -> list[str]:
        """Every stage that reads ``stage_id``, directly or not, in graph order."""
        below = {stage_id}
        out = []
        for s in self:
            if any(r in below for r in s.reads):
                below.add(s.id)
                out.append(s.id)
        return out

    def critical_path(self, seconds: Mapping[str, float | None]) -> tuple[float, list[str]]:
        """The longest chain of ``reads`` by the stages' ``seconds`` (estimates or measured):
        no executor, however many workers it has, finishes the graph sooner."""
        finish: dict[str, float] = {}
        best: dict[str, str | None] = {}
        for s in self:
            prev = max(s.reads, key=lambda r: finish[r], default=None)
            finish[s.id] = (finish[prev] if prev else 0.0) + float(seconds.get(s.id) or 0.0)
            best[s.id] = prev
        if not finish:
            return 0.0, []
        end = max(finish, key=finish.__getitem__)
        path = [end]
        while best[path[-1]] is not None:
            path.append(best[path[-1]])
        return finish[end], path[::-1]
