"""``cmm run``: every stage, for every dataset and seed, then the report.

The run folder ``<root>/<name>/`` holds

- ``config.yaml`` (the resolved configuration: every default written out), ``run.json`` (the
  command, the git revision, the machine), ``logs/run.log``;
- per dataset ``<dataset>/``: ``data/`` (the prepared dataset's key and summary; the arrays
  stay in the data cache), ``crash/`` (the test split with a flash crash in every episode),
  ``seed-independent/backtest/<policy>/`` and ``seed-independent/crash/<policy>/``: the
  policies whose fit does not use the seed (fixed, as, oracle, ridge, lgbm), replayed once;
- per seed ``<dataset>/seed<k>/``: ``teacher/`` (+ ``features/``), ``probe/``, ``distill/``,
  ``moe/`` (one mixture per variant), ``teacher-random/`` (the control), ``control/`` (CMM
  from the random-init teacher, when asked), ``backtest/<policy>/`` and ``crash/<policy>/``
  (metrics, per-episode table, decision records, fills), ``backtest/teacher-zero-latency/``
  and ``backtest/cmm-teacher-latency/`` (the price of latency);
- with ``teacher.seeds`` set, the teachers apart from the seeds (:mod:`cmm.pipeline.layout`):
  ``<dataset>/teacher-seed<t>/teacher/`` (+ ``features/``), ``teacher-random/`` and
  ``control/teacher/``, fitted once and read by every run seed that distils teacher seed ``t``;
  the seed folders keep the rest;
- ``manifest.json`` (what the report reads), ``report.md``, ``report.html``, ``figures/``.

Each stage is skipped when its folder is complete for the same inputs and settings, its files
match the checksums recorded when it finished, and no stage it reads was redone since (see
:mod:`cmm.pipeline.stages`); interrupted anywhere, the next run resumes with the stage that
was running. ``--force STAGE`` redoes that stage and, by the same rule, every stage below it
down to the report.
"""

from __future__ import annotations

import logging
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from cmm.config import RunConfig
from cmm.errors import InputError
from cmm.io import atomic_path, default_cache_dir, write_json
from cmm.io import file_lock, reading, remove_stale_temporaries
from cmm.pipeline.layout import teacher_folder, teacher_seed, teacher_seeds
from cmm.pipeline.policies import PolicySpec, policy_specs
from cmm.pipeline.stages import Display, StageResult, StageRunner, Timings, jsonable, stage_key

log = logging.getLogger("cmm.run")

SPLIT = "test"
SHARED = "seed-independent"  # <dataset>/seed-independent/: the backtests done once per dataset


def git_revision(where: Path | None = None) -> dict:
    """The commit of the source tree (and whether it has uncommitted changes)."""
    where = where or Path(__file__).resolve().parent
    try:
        rev = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=where, capture_output=True, text=True, check=True,
                               timeout=10).stdout.strip()
        return {"commit": rev, "dirty": bool(dirty)}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def machine() -> dict:
    return {"platform": platform.platform(), "python": platform.python_version(),
            "cpu": platform.processor() or platform.machine(), "cores": os.cpu_count()}


def _setup_logging(run_dir: Path) -> logging.Handler:
    (run_dir / "logs").mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(run_dir / "logs" / "run.log")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def _write_config(run_dir: Path, config: RunConfig) -> None:
    import yaml

    with atomic_path(run_dir / "config.yaml") as tmp:
        tmp.write_text("# resolved configuration of this run: every setting, defaults included\n"
                       + yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False))


def seeded(config: RunConfig, seed: int) -> RunConfig:
    """The configuration of one run seed: the probe, the students and the gates seeded with
    ``seed``; the teacher and its backbone's random init with the seed of the teacher it
    distils (``seed`` itself unless ``teacher.seeds`` is set: see :mod:`cmm.pipeline.layout`)."""
    t = config.teacher
    t_seed = teacher_seed(config, seed)
    teacher = t.model_copy(update={"seed": t_seed,
                                   "backbone": t.backbone.model_copy(update={"seed": t_seed})})
    distill = config.distill.model_copy(update={
        "train": config.distill.train.model_copy(update={"seed": seed})})
    return config.model_copy(update={
        "teacher": teacher, "probe": config.probe.model_copy(update={"seed": seed}),
        "distill": distill, "moe": config.moe.model_copy(update={"seed": seed})})


def run_seed(c: RunConfig) -> int:
    """The run seed of a :func:`seeded` configuration (its students'; its teacher's may be
    shared with other run seeds): it seeds the learned policies and names a seeded replay."""
    return c.distill.train.seed


class Pipeline:
    """One run of the configuration: stages in order, each skipped when already done."""

    def __init__(self, config: RunConfig, root: str | Path = "runs", *,
                 base_dir: str | Path | None = None, command: str | None = None,
                 progress: bool = True, force: tuple[str, ...] = (),
                 config_file: str | Path | None = None) -> None:
        from cmm.pipeline.checks import Source

        self.config = config
        self.source = Source.of(config_file)  # where errors about the settings point
        self.run_dir = (Path(root) / config.name).resolve()
        self.base_dir = Path(base_dir) if base_dir else Path.cwd()
        self.command = command or " ".join(["cmm", *sys.argv[1:]])
        self.progress = progress
        self.force = force
        self.manifest: dict = {}

    # -------------------------------------------------------------------------------- run
    def run(self) -> Path:
        """Every stage, holding the run folder's lock: a second run of the same folder is
        refused (CmmError naming the folder and the pid), never let in to undo the first.
        The whole configuration is checked first, before anything is written."""
        self.check()
        with run_lock(self.run_dir):
            remove_stale_temporaries(self.run_dir)  # of a run killed mid-write
            remove_stale_temporaries(default_cache_dir())  # timings.json
            return self._run()

    def check(self) -> None:
        """What can be known wrong before the first stage (see :mod:`cmm.pipeline.checks`)."""
        from cmm.pipeline.checks import check_run
        from cmm.strategy.policy import available_policies

        check_run(self.config, self.source, self._dataset_arg, available_policies())

    def _run(self) -> Path:
        from cmm.strategy.policy import available_policies

        self.run_dir.mkdir(parents=True, exist_ok=True)
        handler = _setup_logging(self.run_dir)
        try:
            log.info("run %s: %s", self.config.name, self.command)
            _write_config(self.run_dir, self.config)
            started = datetime.now(timezone.utc).isoformat(timespec="seconds")
            info = {"command": self.command, "git": git_revision(), "machine": machine(),
                    "started": started, "cwd": str(Path.cwd())}
            write_json(self.run_dir / "run.json", info)
            specs, tables, skipped = policy_specs(self.config, available_policies())
            for s in skipped:
                log.info("policy %s left out: %s", s["policy"], s["reason"])
            self.specs, self.tables = specs, tables
            self.shared = {s.slug for s in specs if not s.seeded}
            self.manifest = {"schema_version": 1, "name": self.config.name, **info,
                             "config": self.config.model_dump(mode="json"),
                             "seeds": list(self.config.seeds),
                             # per run seed, the seed of the teacher it distils
                             "teacher_seeds": teacher_seeds(self.config),
                             "policies": [s.to_json() for s in specs], "tables": tables,
                             "skipped": skipped, "datasets": []}
            with Display(self.progress) as display:
                self.runner = StageRunner(display, Timings(default_cache_dir() / "timings.json"),
                                          self.force)
                display.plan(self._planned())
                run_config = self.config
                for name in run_config.datasets:
                    self.config = run_config.for_dataset(name)  # per_dataset settings in
                    try:
                        self._dataset(name)
                    finally:
                        self.config = run_config
                self.manifest["stages"] = [{"stage": k, "seconds": r.seconds,
                                            "cached": r.cached}
                                           for k, r in self.runner.results.items()]
                write_json(self.run_dir / "manifest.json", self.manifest)
                self._report()
            log.info("finished: %s", self.run_dir / "report.html")
        finally:
            log.removeHandler(handler)
            handler.close()
        return self.run_dir

    def _planned(self) -> dict[str, float | None]:
        """Every stage id this run goes through, with its estimate (for the total's time left)."""
        t = self.runner.timings
        out: dict[str, float | None] = {}
        c = self.config
        for name in c.datasets:
            d = self._slug(name)
            out[f"{d}/data"] = t.estimate("data", d)
            if c.robustness.flash_crash is not None:
                out[f"{d}/crash"] = t.estimate("crash", d)
            for s in self.specs:
                if not s.seeded:
                    out[f"{d}/{SHARED}/backtest/{s.slug}"] = t.estimate("backtest", d)
            for slug in self.tables.get("crash", []):
                if slug in self.shared:
                    out[f"{d}/{SHARED}/crash/{slug}"] = t.estimate("backtest", d)
            for seed in c.seeds:
                p = f"{d}/seed{seed}"
                t_id, f_id = self._teacher_ids(d, seed, "teacher")  # a shared one once
                out[t_id], out[f_id] = t.estimate("teacher", d), t.estimate("features", d)
                for kind in ("probe", "distill", "moe"):
                    out[f"{p}/{kind}"] = t.estimate(kind, d)
                if c.controls.random_teacher:
                    out[self._teacher_ids(d, seed, "teacher-random")[0]] = \
                        t.estimate("teacher", d)
                for s in self.specs:
                    if s.source == "registry" and s.name in c.rl:
                        out[f"{p}/rl-{s.name}"] = t.estimate("rl", d)
                for s in self.specs:
                    if s.seeded:
                        out[f"{p}/backtest/{s.slug}"] = t.estimate("backtest", d)
                for slug in self.tables.get("crash", []):
                    if slug not in self.shared:
                        out[f"{p}/crash/{slug}"] = t.estimate("backtest", d)
        out["report"] = t.estimate("report", "")
        return out

    # ---------------------------------------------------------------------------- dataset
    def _dataset_arg(self, name: str) -> str:
        if name.endswith((".yaml", ".yml")) and not Path(name).is_absolute():
            return str((self.base_dir / name).resolve())
        return name

    def _slug(self, name: str) -> str:
        """The dataset's folder in the run: its name (a spec file's ``name:``)."""
        from cmm.data.spec import load_dataset_spec

        return _slug(load_dataset_spec(self._dataset_arg(name)).name)

    def _dataset(self, name: str) -> None:
        from cmm.backtest.runner import make_plan
        from cmm.data.prepare import prepare_dataset
        from cmm.pipeline.stress import episode_volatility, most_volatile

        c = self.config
        d_slug = self._slug(name)
        arg = self._dataset_arg(name)
        holder: dict = {}

        def prepare(folder: Path, on_progress) -> dict:
            holder["ds"] = prepare_dataset(arg, c.data, progress=False)
            return _data_summary(holder["ds"])

        # The data layer caches by the hash of the raw files, the spec and the settings (and
        # writes atomically); this stage records that key in the run folder.
        d_key = data_key(arg, c.data)  # = ds.cache_key: how later stages name the data
        data = self.runner.run(f"{d_slug}/data", "data", self.run_dir / d_slug / "data",
                               {"dataset": name, "key": d_key}, prepare, scope=d_slug,
                               provides=(d_key,))
        ds = holder.get("ds") or prepare_dataset(arg, c.data, progress=False)
        if data.info.get("cache_key") != ds.cache_key:
            raise RuntimeError(f"internal: data key {ds.cache_key} differs from the stage's "
                               f"{data.info.get('cache_key')}")
        from cmm.pipeline.checks import check_splits

        check_splits(ds, c, self.source, name, c.datasets.index(name))  # before any model
        try:
            plan = make_plan(ds.split_samples(SPLIT), SPLIT, ds.config.grid.dt_ms * 1_000_000,
                             c.backtest)
        except InputError as exc:  # e.g. a test split shorter than one episode
            from cmm.pipeline.checks import located

            raise located(exc, self.source) from None
        vol = episode_volatility(ds, plan)
        volatile = most_volatile(vol, c.robustness.volatile_fraction)
        entry = {"name": name, "slug": d_slug, "dataset": ds.name, "cache_key": ds.cache_key,
                 **_data_summary(ds), "episode_s": c.backtest.episode_s,
                 "episodes": {"session": plan.episode_session.tolist(),
                              "start_ns": plan.episode_start_ns.tolist(),
                              "end_ns": plan.episode_end_ns.tolist(),
                              "volatility": vol.tolist(), "volatile": volatile.tolist()},
                 "seeds": {}}
        crash_ds, crash_key = None, None
        if c.robustness.flash_crash is not None and self.tables.get("crash"):
            crash_ds, crash_key, crashes = self._crash(ds, plan, d_slug)
            entry["crash"] = {"crashes": crashes,
                              "settings": c.robustness.flash_crash.model_dump(mode="json")}
        self.manifest["datasets"].append(entry)
        entry["seed_independent"] = self._shared(ds, d_slug, crash_ds, crash_key)
        for seed in c.seeds:
            entry["seeds"][str(seed)] = self._seed(ds, d_slug, seed, crash_ds, crash_key)

    def _shared(self, ds, d_slug: str, crash_ds, crash_key) -> dict:
        """The backtests of the policies whose fit does not use the seed, once per dataset
        (``<dataset>/seed-independent/``); the report pairs them with every seed's."""
        base = self.run_dir / d_slug / SHARED
        sid = f"{d_slug}/{SHARED}"
        keys: dict = {"main": {}, "rl": {}}
        out: dict = {"backtest": {}, "crash": {}}
        for spec in self.specs:
            if spec.seeded:
                continue
            res = self._backtest(ds, ds, self.config, spec, keys, base / "backtest" / spec.slug,
                                 f"{sid}/backtest/{spec.slug}", d_slug, None)
            out["backtest"][spec.slug] = {"key": res.key, "latency_ns": res.info["latency_ns"]}
        for slug in self.tables.get("crash", []):
            if slug not in self.shared:
                continue
            spec = next(s for s in self.specs if s.slug == slug)
            orig = self.runner.results[f"{sid}/backtest/{slug}"]
            res = self._backtest(ds, crash_ds, self.config, spec, keys, base / "crash" / slug,
                                 f"{sid}/crash/{slug}", d_slug, (crash_key, orig))
            out["crash"][slug] = {"key": res.key}
        return out

    def _crash(self, ds, plan, d_slug: str):
        from cmm.data.prepare import PreparedDataset
        from cmm.pipeline.stress import build_crash_dataset

        c = self.config
        folder = self.run_dir / d_slug / "crash"
        inputs = {"data": ds.cache_key, "flash_crash": jsonable(c.robustness.flash_crash),
                  "episode_s": c.backtest.episode_s, "decision_every": c.backtest.decision_every}

        def work(out: Path, on_progress) -> dict:
            cds = build_crash_dataset(ds, plan, c.backtest.episode_s, c.robustness.flash_crash,
                                      out / "prepared")
            return {"key": cds.cache_key, "crashes": cds.meta["stress"]["crashes"]}

        res = self.runner.run(f"{d_slug}/crash", "crash", folder, inputs, work, scope=d_slug)
        return PreparedDataset(folder / "prepared"), res.key, res.info["crashes"]

    # ------------------------------------------------------------------------------- seed
    def _seed(self, ds, d_slug: str, seed: int, crash_ds, crash_key) -> dict:
        c = seeded(self.config, seed)
        base = self.run_dir / d_slug / f"seed{seed}"
        sid = f"{d_slug}/seed{seed}"
        chain = self._chain(ds, c, base, sid, d_slug, seed, c.teacher, distill=True)
        keys = {"main": chain}
        if c.controls.random_teacher:
            random_teacher = c.teacher.model_copy(update={
                "backbone": c.teacher.backbone.model_copy(update={"init": "random"})})
            if c.controls.random_distill:
                keys["control"] = self._chain(ds, c, base / "control", f"{sid}/control", d_slug,
                                              seed, random_teacher, distill=True,
                                              teacher_name="control/teacher")
            else:
                keys["control"] = self._chain(ds, c, base, sid, d_slug, seed, random_teacher,
                                              distill=False, teacher_name="teacher-random")
        keys["rl"] = {s.name: self._rl(ds, c, s.name, base / "rl" / s.name, f"{sid}/rl-{s.name}",
                                       d_slug)
                      for s in self.specs if s.source == "registry" and s.name in c.rl}
        out = {"backtest": {}, "crash": {}}
        # own latencies first: "cmm-teacher-latency" is charged the teacher's
        for spec in sorted((s for s in self.specs if s.seeded), key=lambda s: s.latency != "own"):
            latency = None
            if spec.latency == "zero":
                latency = 0
            elif spec.latency == "teacher":
                latency = out["backtest"]["teacher"]["latency_ns"]
            res = self._backtest(ds, ds, c, spec, keys, base / "backtest" / spec.slug,
                                 f"{sid}/backtest/{spec.slug}", d_slug, None, latency)
            out["backtest"][spec.slug] = {"key": res.key, "latency_ns": res.info["latency_ns"]}
        for slug in self.tables.get("crash", []):
            if slug in self.shared:
                continue
            spec = next(s for s in self.specs if s.slug == slug)
            orig = self.runner.results[f"{sid}/backtest/{slug}"]
            res = self._backtest(ds, crash_ds, c, spec, keys, base / "crash" / slug,
                                 f"{sid}/crash/{slug}", d_slug, (crash_key, orig))
            out["crash"][slug] = {"key": res.key}
        return out

    def _chain(self, ds, c: RunConfig, base: Path, sid: str, d_slug: str, seed: int,
               teacher_cfg, distill: bool, teacher_name: str = "teacher") -> dict:
        """Teacher fit, features, probe, experts, mixtures (or, for the plain control, the fit
        and its test predictions) of run seed ``seed``; returns the stage keys and folders.
        ``teacher_name``: the teacher's folder as :func:`cmm.pipeline.layout.teacher_folder`
        names it."""
        teacher, feats, t_dir = self._teacher(ds, d_slug, seed, teacher_cfg, teacher_name,
                                              distill)
        out = {"teacher": teacher.key, "teacher_dir": t_dir}
        if not distill:
            return out

        def probe(folder: Path, on_progress) -> dict:
            from cmm.probe.pipeline import run_probe

            result = run_probe(t_dir, ds, c.probe, folder, teacher_cfg.device, on_progress)
            return {"assignment": result["all"]["assignment"],
                    "paper_pattern": result.get("paper_pattern")}

        pr = self.runner.run(f"{sid}/probe", "probe", base / "probe",
                             {"teacher": teacher.key, "probe": jsonable(c.probe)}, probe,
                             scope=d_slug)

        def experts(folder: Path, on_progress) -> dict:
            from cmm.distill.pipeline import run_distill

            meta = run_distill(ds, t_dir, c.distill, folder, probe_path=base / "probe" /
                               "probe.json",
                               on_done=lambda k, n: on_progress("students", k, n))
            return {"assignment": meta["assignment"], "parameters": meta["parameters"]}

        dist = self.runner.run(f"{sid}/distill", "distill", base / "distill",
                               {"features": feats.key, "probe": pr.key,
                                "distill": jsonable(c.distill)}, experts, scope=d_slug)

        def mixtures(folder: Path, on_progress) -> dict:
            from cmm.moe.pipeline import run_moe

            report = run_moe(ds, base / "distill", c.moe, folder, measure_latency=True,
                             on_progress=on_progress)
            return {"latency": report.get("latency"),
                    "gates": {k: v["gates"] for k, v in report["mixtures"].items()}}

        # "latency": mixtures store every gate's measured latency (older stages: cmm's only)
        moe = self.runner.run(f"{sid}/moe", "moe", base / "moe",
                              {"distill": dist.key, "moe": jsonable(c.moe),
                               "latency": "per-gate"}, mixtures, scope=d_slug)
        out.update({"features": feats.key, "probe": pr.key, "distill": dist.key,
                    "moe": moe.key, "moe_dir": base / "moe", "gates": moe.info["gates"]})
        return out

    def _teacher_ids(self, d_slug: str, seed: int, name: str) -> tuple[str, str]:
        """The stage ids of the teacher ``name`` that run seed ``seed`` reads and of its
        features: the teacher's folder in the run (``<dataset>/seed<k>/teacher``,
        ``<dataset>/teacher-seed<t>/teacher``), its features beside it."""
        t_id = teacher_folder(self.run_dir, d_slug, seed, self.config, name).relative_to(
            self.run_dir).as_posix()
        return t_id, f"{t_id.rsplit('/', 1)[0]}/features"

    def _teacher(self, ds, d_slug: str, seed: int, teacher_cfg, name: str, distill: bool
                 ) -> tuple[StageResult, StageResult | None, Path]:
        """The fit of the teacher ``name`` that run seed ``seed`` reads and, when it is
        distilled, its features: (fit, features or None, folder). A teacher shared by several
        run seeds (``teacher.seeds``) is one stage, run or found done by the first."""
        from cmm.teacher.pipeline import run_fit

        t_dir = teacher_folder(self.run_dir, d_slug, seed, self.config, name)
        t_id, f_id = self._teacher_ids(d_slug, seed, name)

        def fit(folder: Path, on_progress) -> dict:
            report = run_fit(ds, teacher_cfg, folder, on_progress)
            if not distill:
                pred = _teacher_predict(folder, ds, ds, teacher_cfg.infer_batch_size,
                                        teacher_cfg.device, on_progress)
                np.save(folder / "test_predictions.npy", pred)
            return {"fit_seconds": report["fit_seconds"], "stopped_by": report["stopped_by"],
                    "latency_ms": report["latency_ms"]}

        teacher = self._once(t_id, "teacher", t_dir, {"data": ds.cache_key,
                                                      "teacher": jsonable(teacher_cfg)},
                             fit, d_slug)
        if not distill:
            return teacher, None, t_dir

        def features(folder: Path, on_progress) -> dict:
            from cmm.teacher.features import extract_features
            from cmm.teacher.store import load_teacher

            model = load_teacher(t_dir, ds, device=teacher_cfg.device)
            index = extract_features(model, ds, t_dir, teacher_cfg.infer_batch_size,
                                     on_progress)
            return {"num_blocks": index["num_blocks"], "width": index["width"]}

        feats = self._once(f_id, "features", t_dir / "features",
                           {"teacher": teacher.key, "batch_size": teacher_cfg.infer_batch_size},
                           features, d_slug)
        return teacher, feats, t_dir

    def _once(self, stage_id: str, kind: str, folder: Path, inputs: dict, work,
              scope: str) -> StageResult:
        """A stage several run seeds read (a shared teacher, its features): run, or found done,
        by the first; the others get its result (even under ``--force``: redone once)."""
        done = self.runner.results.get(stage_id)
        if done is not None and done.key == stage_key(kind, inputs):
            return done
        return self.runner.run(stage_id, kind, folder, inputs, work, scope=scope)

    def _rl(self, ds, c: RunConfig, algo: str, folder: Path, stage_id: str, d_slug: str
            ) -> StageResult:
        """Train one RL market maker (``cmm rl train``'s function) with the run's ladder and
        backtest settings; the checkpoint best on validation is kept."""
        from cmm.config import RLConfig, validate_model

        cfg = validate_model(RLConfig, {**c.rl_settings, "algo": algo, "seed": run_seed(c),
                                        "ladder": c.ladder.model_dump(),
                                        "backtest": c.backtest.model_dump()},
                             prefix=("rl_settings",))

        def work(out: Path, on_progress) -> dict:
            from cmm.rl.train import train_agent

            result = train_agent(ds, cfg, out)
            return {"training": result.meta.get("training"),
                    "latency": result.meta.get("latency")}

        return self.runner.run(stage_id, "rl", folder, {"data": ds.cache_key,
                                                        "rl": jsonable(cfg)}, work, scope=d_slug)

    # --------------------------------------------------------------------------- backtests
    def _backtest(self, ds, target, c: RunConfig, spec: PolicySpec, keys: dict, folder: Path,
                  stage_id: str, d_slug: str, crash: tuple[str, StageResult] | None,
                  latency_ns: int | None = None) -> StageResult:
        """One replay of ``spec`` on ``target`` (``ds`` or its crashed copy); ``latency_ns``
        replaces the policy's own charged latency (the price of latency)."""
        chain = keys["control"] if spec.chain == "control" or spec.name == "teacher-random" \
            else keys["main"]
        upstream = chain["moe"] if spec.source == "mixture" else (
            chain["teacher"] if spec.source == "teacher" else None)
        settings = dict(c.policy_settings.get(
            spec.name if spec.source == "registry" else
            ("teacher" if spec.source == "teacher" else "cmm"), {}))
        if latency_ns is not None:
            settings["latency_ns"] = int(latency_ns)
        rl = keys.get("rl", {}).get(spec.name) if spec.source == "registry" else None
        if rl is not None:
            upstream = rl.key
        inputs = {"data": target.cache_key if crash is None else crash[0],
                  "policy": spec.to_json(), "settings": settings, "upstream": upstream,
                  "seed": run_seed(c), "ladder": jsonable(c.ladder),
                  "backtest": jsonable(c.backtest)}
        if not spec.seeded:  # one replay for every seed: the seed is no input of it
            del inputs["seed"]
        if crash is not None:
            inputs["original"] = crash[1].key
        if spec.slug == "cmm" and crash is None:
            inputs["saves"] = ["weights", "prediction"]  # the report's weights, CMM's metrics
        if rl is not None:  # not part of the key: the RL stage's key is
            settings = {**settings, "artefact": str(rl.folder)}

        def work(out: Path, on_progress) -> dict:
            latency = crash[1].info["latency_ns"] if crash is not None else None
            policy, extra = _build_policy(spec, ds, target, c, chain, settings, latency)
            return _replay(policy, target, c, out, spec, extra)

        # the teacher's backtest reads its features too, which its key does not name
        reads = (chain["features"],) if spec.source == "teacher" and "features" in chain else ()
        return self.runner.run(stage_id, "backtest", folder, inputs, work, scope=d_slug,
                               after=reads)

    # ------------------------------------------------------------------------------ report
    def _report(self) -> None:
        from cmm.report import build_report

        inputs = {"manifest": {k: v for k, v in self.manifest.items()
                               if k not in ("started", "stages", "command", "cwd", "machine")},
                  "report": jsonable(self.config.report),
                  "keys": {k: r.key for k, r in self.runner.results.items()}}

        def work(folder: Path, on_progress) -> dict:
            paths = build_report(self.run_dir, folder)
            return {k: str(v) for k, v in paths.items()}

        self.runner.run("report", "report", self.run_dir / "report", inputs, work)
        from cmm.report.render import markdown_for

        with atomic_path(self.run_dir / "report.html") as tmp:
            tmp.write_bytes((self.run_dir / "report" / "report.html").read_bytes())
        with atomic_path(self.run_dir / "report.md") as tmp:
            tmp.write_text(markdown_for(self.run_dir, "report"))


# ---------------------------------------------------------------------------------- helpers


def run_lock(run_dir: str | Path):
    """The lock a run holds on its folder for its whole life (``<run>/.lock``; released by the
    OS however the run ends); taking it while another process holds it raises CmmError."""
    run_dir = Path(run_dir).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    return file_lock(run_dir / ".lock", wait=False, what=f"the run folder {run_dir}")


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in name)


def data_key(name_or_spec: str, config) -> str:
    """The data layer's cache key of a dataset (raw files' sha256, spec, settings), computed
    as :func:`cmm.data.prepare.prepare_dataset` does, without preparing anything."""
    from cmm.data.prepare import dataset_key
    from cmm.data.spec import load_dataset_spec

    spec = load_dataset_spec(name_or_spec)
    if spec.grid is not None and config.grid == type(config)().grid:
        config = config.model_copy(update={"grid": spec.grid})  # the spec's grid by default
    return dataset_key(spec, config)[0]


def _data_summary(ds) -> dict:
    m = ds.meta
    return {"cache_key": ds.cache_key, "dataset": ds.name, "split_counts": m["split_counts"],
            "regime_counts": m["regime_counts"], "sessions": len(ds.sessions),
            "instrument": ds.spec.instrument.model_dump(mode="json"),
            "dt_ms": ds.config.grid.dt_ms, "window": ds.config.features.window,
            "horizon": ds.config.features.horizon,
            "hours": sum((s.end_ns - s.start_ns) for s in ds.sessions) / 3.6e12}


def _teacher_predict(teacher_dir: Path, ds, target, batch_size: int, device: str,
                     on_progress=None) -> np.ndarray:
    """(N, 3) predictions in the data's units of the teacher in ``teacher_dir`` on the test
    windows of ``target`` (the dataset itself or its crashed copy)."""
    import torch

    from cmm.teacher.fit import predict_windows
    from cmm.teacher.store import load_teacher

    model = load_teacher(teacher_dir, ds, device=device)
    with torch.inference_mode():
        pred_std, _ = predict_windows(model, target.windows(SPLIT), batch_size,
                                      on_progress=on_progress or (lambda *a: None),
                                      stage="teacher predictions")
        return model.to_units(torch.from_numpy(pred_std)).numpy().astype(np.float64)


def _build_policy(spec: PolicySpec, ds, target, c: RunConfig, chain: dict, settings: dict,
                  latency_ns: int | None):
    """The fitted policy for ``spec`` and anything extra to save beside its backtest."""
    import json

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
        elif target is ds and (t_dir / "test_predictions.npy").is_file():
            pred = np.load(t_dir / "test_predictions.npy")
        else:
            pred = _teacher_predict(t_dir, ds, target, c.teacher.infer_batch_size,
                                    c.teacher.device)
        from cmm.teacher.policy import teacher_latency_ns

        # the rule of `cmm backtest --policy teacher` too: measured when the teacher was fitted
        latency_ns = teacher_latency_ns(t_dir, _given(latency_ns, settings))
        policy = PrecomputedPolicy({SPLIT: Predictions.from_array(pred)}, latency_ns,
                                   name=spec.slug)
        return policy, {}
    # a mixture through the `cmm` policy
    from cmm.moe.policy import CmmPolicy, mixture_latency_ns  # registers "cmm"

    folder = Path(chain["moe_dir"]) / spec.name
    with reading(folder / "mixture.json"):
        meta = json.loads((folder / "mixture.json").read_text())
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


def _replay(policy, target, c: RunConfig, out: Path, spec: PolicySpec, extra: dict) -> dict:
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
    write_json(out / "prediction.json", {
        "split": SPLIT, "gate": quoter.gate, "windows": len(pred),
        "metrics": regression_metrics(pred, ds.targets(SPLIT), flat_threshold_bps(ds))})
    meta = quoter.meta
    names = [e.get("name", f"expert {i}").split("/")[-1]
             for i, e in enumerate(meta.get("experts", []))]
    experts = {t: [names[i] if i < len(names) else f"expert {i}"
                   for i, _ in meta.get("routes", {}).get(t, [])]
               for t in quoter.mixture.tasks}
    with atomic_path(out / "weights.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, weights=weights.astype(np.float32),
                                ts_ns=samples["ts_ns"].to_numpy(),
                                session=samples["session"].to_numpy(), regime=regimes,
                                tasks=np.array(list(quoter.mixture.tasks)),
                                experts=np.array([";".join(experts[t])
                                                  for t in quoter.mixture.tasks]))


def run(config: RunConfig, root: str | Path = "runs", **kw) -> Path:
    """Run every stage of ``config``; returns the run folder."""
    return Pipeline(config, root, **kw).run()
