"""What ``cmm run`` checks before its first stage, and after each dataset's preparation.

A configuration that cannot finish fails in seconds, not 16 stages in: each error is one
:class:`~cmm.errors.InputError` naming the run configuration's file, the YAML line and the
field (the nearest key written in the file when the field is left at its default).

- :func:`check_run`, before anything is written: every dataset resolves (a registered name or a
  spec file) and its files exist; every policy named (``baselines``, ``policy_settings``,
  ``robustness.crash_policies``, ``report.curve_policies``) is one the run can build, with
  settings its model accepts; ``rl_settings`` are valid RL settings; the flash crash fits
  inside an episode; the split fractions leave no split empty by construction
  (``validation: 0``: the teacher's early stopping and the mixture's gates are fitted on it);
  ``teacher.seeds``, when given, is a non-empty list of distinct seeds.
- :func:`check_splits`, once a dataset is prepared and before any model stage reads it: every
  split holds windows after the purge gaps, for the window and horizon chosen.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cmm.config import RunConfig
from cmm.errors import CmmError, InputError
from cmm.vocabulary import SPLITS

# Settings models of the policies a run builds itself (its policy_settings keys).
BUILT = {"teacher": "cmm.config.TeacherPolicyConfig", "cmm": "cmm.config.CmmPolicyConfig"}


@dataclass
class Source:
    """Where the run configuration came from: its file and the line of each key path."""

    file: Path | None = None
    lines: dict[tuple, int] = field(default_factory=dict)

    @classmethod
    def of(cls, path: str | Path | None) -> Source:
        if path is None:
            return cls()
        from cmm.config import read_yaml

        try:
            return cls(Path(path), read_yaml(path)[1])
        except CmmError:  # already loaded once; without lines the errors still name the field
            return cls(Path(path))

    def line(self, path: tuple) -> int | None:
        """The line of ``path``, else of its nearest ancestor written in the file."""
        for cut in range(len(path), -1, -1):
            if path[:cut] in self.lines:
                return self.lines[path[:cut]]
        return None

    def error(self, message: str, path: tuple, **kw) -> InputError:
        return InputError(message, file=self.file, line=self.line(path),
                          field=".".join(str(p) for p in path), **kw)


def located(exc: InputError, source: Source) -> InputError:
    """``exc``, about a field of the run configuration, pointing at the file and line too."""
    if exc.file is not None or not exc.field:
        return exc
    return source.error(exc.reason, tuple(exc.field.split(".")), expected=exc.expected,
                        got=exc.got)


def check_run(config: RunConfig, source: Source, resolve: Callable[[str], str],
              available: list[str]) -> None:
    """Everything about ``config`` that can be known before its first stage (see the module's
    docstring). ``resolve``: a ``datasets`` entry as ``load_dataset_spec`` takes it;
    ``available``: the registered policy names."""
    _check_datasets(config, source, resolve)
    _check_splits_settings(config, source)
    _check_teacher_seeds(config, source)
    _check_policies(config, source, available)


def _check_datasets(config: RunConfig, source: Source, resolve: Callable[[str], str]) -> None:
    from cmm.data.spec import load_dataset_spec

    for i, name in enumerate(config.datasets):
        where = ("datasets", i)
        try:
            spec = load_dataset_spec(resolve(name))
        except CmmError as exc:
            raise source.error(f"dataset '{name}': {exc}", where) from None
        for path in spec.file_paths():
            if not path.is_file():
                what = "a folder where a data file is expected" if path.is_dir() else \
                    "data file not found"
                raise source.error(f"dataset '{name}': {what}: {path} (run `cmm data fetch "
                                   f"{spec.name}` or set CMM_DATA_DIR)", where)


def _check_splits_settings(config: RunConfig, source: Source) -> None:
    s = config.data.splits
    if s.validation <= 0:
        raise source.error(
            "no validation split: the teacher's early stopping, the students' and the "
            "mixture's gates are fitted on it", ("data", "splits", "validation"),
            expected="a fraction > 0 (default 0.2)", got=s.validation)


def _check_teacher_seeds(config: RunConfig, source: Source) -> None:
    """``teacher.seeds`` (teachers apart from the run seeds): None, or distinct seeds."""
    seeds = config.teacher.seeds
    if seeds is None:
        return
    expected = ("a non-empty list of distinct teacher seeds (run seed i distils "
                "teacher.seeds[i % len]), or none: one teacher per run seed")
    if len(seeds) == 0:
        raise source.error("teacher.seeds is empty: no teacher to distil",
                           ("teacher", "seeds"), expected=expected, got=list(seeds))
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise source.error(f"teacher.seeds repeats {', '.join(map(str, repeated))}: the same "
                           "teacher twice", ("teacher", "seeds"), expected=expected,
                           got=list(seeds))


def _check_policies(config: RunConfig, source: Source, available: list[str]) -> None:
    import importlib

    from cmm.config import RLConfig, validate_model
    from cmm.pipeline.policies import policy_specs
    from cmm.strategy.policy import get_policy

    for i, name in enumerate(config.baselines):
        if name not in available:
            raise source.error(f"unknown policy '{name}'", ("baselines", i),
                               expected="one of " + ", ".join(sorted(available)))
    for name, settings in config.policy_settings.items():
        where = ("policy_settings", name)
        if name in BUILT:
            module, cls = BUILT[name].rsplit(".", 1)
            model = getattr(importlib.import_module(module), cls)
        elif name in config.baselines or name in config.rl:
            policy_cls = type(get_policy(name))
            model = policy_cls.config_class
            if model is None:
                if settings:
                    raise source.error(f"policy '{name}' takes no settings", where,
                                       got=settings)
                continue
        else:
            raise source.error(
                f"settings for '{name}', which this run does not backtest", where,
                expected="a policy of baselines or rl, or teacher / cmm (every teacher and "
                         "every mixture)")
        validate_model(model, settings, file=source.file, lines=source.lines, prefix=where)
    for algo in config.rl:
        validate_model(RLConfig, {**config.rl_settings, "algo": algo, "seed": config.seeds[0],
                                  "ladder": config.ladder.model_dump(),
                                  "backtest": config.backtest.model_dump()},
                       file=source.file, lines=source.lines, prefix=("rl_settings",))
    try:
        specs, tables, _ = policy_specs(config, available)
    except InputError as exc:
        raise located(exc, source) from None
    crash = config.robustness.flash_crash
    if crash is not None and tables.get("crash"):
        from cmm.pipeline.stress import check_crash_fits

        try:
            for episode_s in {config.for_dataset(d).backtest.episode_s for d in config.datasets}:
                check_crash_fits(episode_s, crash)
        except InputError as exc:
            raise located(exc, source) from None
    slugs = {s.slug for s in specs}
    for i, slug in enumerate(config.report.curve_policies or ()):
        if slug not in slugs:
            raise source.error(f"unknown policy '{slug}'", ("report", "curve_policies", i),
                               expected="one of " + ", ".join(sorted(slugs)))


def check_splits(ds, config: RunConfig, source: Source, name: str, index: int) -> None:
    """Every split of the prepared dataset ``ds`` (``datasets[index]``, ``name``) holds
    windows; else say which split is empty and which setting to change (the error points at
    the first of the settings involved that the file writes)."""
    counts = {s: int(ds.meta["split_counts"].get(s, 0)) for s in SPLITS}
    empty = [s for s in SPLITS if counts[s] == 0]
    if not empty:
        return
    f = ds.config.features
    purge = ds.meta.get("purge_steps", f.horizon + f.window)
    why = ("data.splits.purge" if config.data.splits.purge is not None
           else f"horizon {f.horizon} + window {f.window}")
    split = empty[0]
    candidates = [("data", "splits", split), ("data", "splits", "purge"),
                  ("data", "features", "horizon"), ("data", "features", "window")]
    where = next((c for c in candidates if c in source.lines), candidates[0])
    raise source.error(
        f"dataset '{ds.name}' (datasets[{index}]: {name}) has no {' and no '.join(empty)} "
        f"windows: of its {sum(counts.values())} windows (train {counts['train']}, validation "
        f"{counts['validation']}, test {counts['test']}) none is left in the {split} split "
        f"after the purge gap of {purge} steps ({why}) that follows each split boundary; "
        f"raise data.splits.{split}, or lower data.features.horizon, data.features.window or "
        f"data.splits.purge", where)
