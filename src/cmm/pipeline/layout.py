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


# ------------------------------------------------------------------------------ the run folder

SHARED = "seed-independent"  # <dataset>/seed-independent/: the backtests done once per dataset
CONTROL = "control"  # <seed>/control/: CMM distilled from the random-init teacher
# the teachers a run fits, by their name in teacher_folder: the LLM, the random-init control
# (test predictions only) and the control's teacher when CMM is distilled from it too
TEACHER_NAMES = ("teacher", "teacher-random", f"{CONTROL}/teacher")
SCENARIOS = ("backtest", "crash")  # a replay of the test split as recorded, or flash-crashed
# the report's two documents, in the report stage's folder and, as copies, in the run folder
REPORT_MD = "report.md"
REPORT_HTML = "report.html"


class RunLayout:
    """Every path of a run folder (``<root>/<name>/``), the one owner of its layout: the
    pipeline writes through it, the report and the CLI read through it. ``config`` is a
    :class:`~cmm.config.RunConfig` or its JSON form (a manifest's ``config``); only its seeds
    and teacher settings matter (where the teachers are)."""

    def __init__(self, run_dir: str | Path, config: Any) -> None:
        self.run_dir = Path(run_dir)
        self.config = config

    @classmethod
    def of_manifest(cls, run_dir: str | Path, manifest: dict) -> RunLayout:
        """The layout of a finished run, read from its manifest (one written before
        ``teacher.seeds`` existed: one teacher per seed, in the seed's folder)."""
        return cls(run_dir, {"seeds": manifest["seeds"],
                             "teacher": (manifest.get("config") or {}).get("teacher") or {}})

    @classmethod
    def read(cls, run_dir: str | Path) -> RunLayout:
        """The layout of an existing run folder before its manifest is read: no configuration,
        which the run's own files (:attr:`manifest`...) and the report's folder do not need;
        the teachers' folders do (:meth:`of_manifest`, once the manifest is read)."""
        return cls(run_dir, None)

    # the run's own files
    @property
    def manifest(self) -> Path:
        return self.run_dir / "manifest.json"

    @property
    def config_file(self) -> Path:
        return self.run_dir / "config.yaml"

    @property
    def run_info(self) -> Path:
        return self.run_dir / "run.json"

    @property
    def log_file(self) -> Path:
        return self.run_dir / "logs" / "run.log"

    @property
    def report(self) -> Path:
        """The report stage's folder (``report.md``, ``report.html`` and ``figures/``; the
        run folder holds copies of the two reports)."""
        return self.run_dir / "report"

    @property
    def report_md(self) -> Path:
        """The run folder's copy of the report stage's ``report.md`` (its figure links
        relative to the run folder)."""
        return self.run_dir / REPORT_MD

    @property
    def report_html(self) -> Path:
        """The run folder's copy of the report stage's ``report.html``."""
        return self.run_dir / REPORT_HTML

    # per dataset
    def dataset(self, d_slug: str) -> Path:
        return self.run_dir / d_slug

    def data(self, d_slug: str) -> Path:
        return self.dataset(d_slug) / "data"

    def crash(self, d_slug: str) -> Path:
        """The crash stage's folder; the crashed copy of the dataset is its ``prepared/``."""
        return self.dataset(d_slug) / "crash"

    def shared(self, d_slug: str) -> Path:
        return self.dataset(d_slug) / SHARED

    def seed(self, d_slug: str, run_seed: int) -> Path:
        return self.dataset(d_slug) / f"seed{int(run_seed)}"

    # per run seed
    def teacher(self, d_slug: str, run_seed: int, name: str = "teacher") -> Path:
        return teacher_folder(self.run_dir, d_slug, run_seed, self.config, name)

    def teachers(self, d_slug: str, name: str = "teacher") -> list[Path]:
        return teacher_folders(self.run_dir, d_slug, self.config, name)

    def features(self, d_slug: str, run_seed: int, name: str = "teacher") -> Path:
        return self.teacher(d_slug, run_seed, name) / "features"

    def chain(self, d_slug: str, run_seed: int, control: bool = False) -> Path:
        """Where a seed's probe, distill and moe folders are (the control's under
        ``control/``)."""
        base = self.seed(d_slug, run_seed)
        return base / CONTROL if control else base

    def probe(self, d_slug: str, run_seed: int, control: bool = False) -> Path:
        return self.chain(d_slug, run_seed, control) / "probe"

    def distill(self, d_slug: str, run_seed: int, control: bool = False) -> Path:
        return self.chain(d_slug, run_seed, control) / "distill"

    def moe(self, d_slug: str, run_seed: int, control: bool = False) -> Path:
        return self.chain(d_slug, run_seed, control) / "moe"

    def rl(self, d_slug: str, run_seed: int, algo: str) -> Path:
        return self.seed(d_slug, run_seed) / "rl" / algo

    def replay(self, d_slug: str, policy_slug: str, run_seed: int | None,
               scenario: str = "backtest") -> Path:
        """A policy's replay (``scenario``: ``backtest`` or ``crash``): in the seed's folder,
        or, ``run_seed`` None (a policy whose fit does not use the seed), once per dataset."""
        if scenario not in SCENARIOS:
            raise ValueError(f"scenario {scenario!r} is not one of {SCENARIOS}")
        base = self.shared(d_slug) if run_seed is None else self.seed(d_slug, run_seed)
        return base / scenario / policy_slug

    def policy_replay(self, d_slug: str, policy: dict, run_seed: int,
                      scenario: str = "backtest") -> Path:
        """The replay of a manifest's policy entry that run seed ``run_seed`` reads (a
        seed-independent policy's one replay for every seed)."""
        seeded = policy.get("seeded", True)
        return self.replay(d_slug, policy["slug"], run_seed if seeded else None, scenario)

    def stage_id(self, folder: Path) -> str:
        """A stage's id: its folder relative to the run folder."""
        return Path(folder).relative_to(self.run_dir).as_posix()
