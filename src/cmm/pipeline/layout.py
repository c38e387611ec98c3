"""Where a run keeps its teachers: the one rule the pipeline and the report both follow.

``teacher.seeds`` unset (None): one teacher per run seed, seeded with it, in the seed's own
folder, ``<run>/<dataset>/seed<k>/teacher`` (``teacher-random``, ``control/teacher``).
``teacher.seeds`` a list: one teacher per entry; run seed ``config.seeds[i]`` distils teacher
seed ``teacher.seeds[i % len(teacher.seeds)]``, whose folder the run seeds sharing it share:
``<run>/<dataset>/teacher-seed<t>/teacher`` (``teacher-random``, ``control/teacher``), its
features under it. Probes, students, gates and backtests stay per run seed.

``config`` is a :class:`~cmm.config.RunConfig` or its JSON form (the manifest's ``config``;
a manifest written before ``teacher.seeds`` existed reads as unset).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SHARED_TEACHER = "teacher-seed{}"  # <dataset>/teacher-seed<t>/: a teacher shared by run seeds


def _field(obj: Any, name: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(name, default)
    return getattr(obj, name, default)


def teacher_seed_list(config: Any) -> list[int] | None:
    """``teacher.seeds`` of ``config`` as a list (None: unset, one teacher per run seed)."""
    seeds = _field(_field(config, "teacher", {}), "seeds")
    return None if seeds is None else [int(s) for s in seeds]


def teacher_seed(config: Any, run_seed: int) -> int:
    """The seed of the teacher that run seed ``run_seed`` distils (its own when
    ``teacher.seeds`` is unset)."""
    shared = teacher_seed_list(config)
    if shared is None:
        return int(run_seed)
    run_seeds = [int(s) for s in _field(config, "seeds", ())]
    if run_seed not in run_seeds:
        raise ValueError(f"seed {run_seed} is not one of the run's seeds {run_seeds}")
    return shared[run_seeds.index(run_seed) % len(shared)]


def teacher_seeds(config: Any) -> dict[str, int]:
    """Per run seed (as a string, the manifest's keys), the teacher seed it distils."""
    return {str(s): teacher_seed(config, int(s)) for s in _field(config, "seeds", ())}


def teacher_folder(run_dir: str | Path, d_slug: str, run_seed: int, config: Any,
                   name: str = "teacher") -> Path:
    """The folder of the teacher ``name`` (``teacher``, ``teacher-random`` or
    ``control/teacher``) that run seed ``run_seed`` of dataset ``d_slug`` reads."""
    base = Path(run_dir) / d_slug
    if teacher_seed_list(config) is None:
        return base / f"seed{run_seed}" / name
    return base / SHARED_TEACHER.format(teacher_seed(config, run_seed)) / name


def teacher_folders(run_dir: str | Path, d_slug: str, config: Any,
                    name: str = "teacher") -> list[Path]:
    """Every distinct folder of the teacher ``name`` of the dataset, in the order of the
    run seeds that first read it (a shared teacher once)."""
    out: list[Path] = []
    for s in _field(config, "seeds", ()):
        folder = teacher_folder(run_dir, d_slug, int(s), config, name)
        if folder not in out:
            out.append(folder)
    return out
