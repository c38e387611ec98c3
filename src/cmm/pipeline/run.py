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
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from cmm.backtest.artefacts import FILES as BACKTEST_OUTPUTS
from cmm.config import RunConfig
from cmm.data import META_FILE as PREPARED_META_FILE
from cmm.distill import OUTPUTS as DISTILL_OUTPUTS
from cmm.errors import InputError
from cmm.io import atomic_path, default_cache_dir, write_json
from cmm.io import file_lock, remove_stale_temporaries
from cmm.moe import OUTPUTS as MOE_OUTPUTS
from cmm.pipeline.executors import Executor, run_in_process
from cmm.pipeline.graph import Stage, StageGraph
from cmm.pipeline.layout import RunLayout, teacher_seed, teacher_seeds
from cmm.pipeline.policies import SPLIT, TEACHER_PREDICTIONS_FILE, PolicySpec, build_policy
from cmm.pipeline.policies import policy_specs, replay
from cmm.pipeline.policies import run_seed
from cmm.pipeline.runinfo import git_revision, machine
from cmm.pipeline.stages import Display, StageResult, StageRunner, Timings, jsonable
from cmm.probe import OUTPUTS as PROBE_OUTPUTS
from cmm.probe import PROBE_FILE
from cmm.teacher import FEATURES_OUTPUTS
from cmm.teacher import OUTPUTS as TEACHER_OUTPUTS

log = logging.getLogger("cmm.run")


def _setup_logging(path: Path) -> logging.Handler:
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    return handler


def _write_config(path: Path, config: RunConfig) -> None:
    import yaml

    with atomic_path(path) as tmp:
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


class Pipeline:
    """One run of the configuration: its stage graph (:meth:`graph`), run by an executor, each
    stage skipped when already done, then the manifest and the report."""

    def __init__(self, config: RunConfig, root: str | Path = "runs", *,
                 base_dir: str | Path | None = None, command: str | None = None,
                 progress: bool = True, force: tuple[str, ...] = (),
                 config_file: str | Path | None = None,
                 executor: Executor = run_in_process) -> None:
        from cmm.pipeline.checks import Source

        self.config = config
        self.source = Source.of(config_file)  # where errors about the settings point
        self.run_dir = (Path(root) / config.name).resolve()
        self.layout = RunLayout(self.run_dir, config)
        self.base_dir = Path(base_dir) if base_dir else Path.cwd()
        self.command = command or " ".join(["cmm", *sys.argv[1:]])
        self.progress = progress
        self.force = force
        self.executor = executor  # runs the graph's stages (cmm.pipeline.executors)
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
        self.run_dir.mkdir(parents=True, exist_ok=True)
        handler = _setup_logging(self.layout.log_file)
        try:
            log.info("run %s: %s", self.config.name, self.command)
            _write_config(self.layout.config_file, self.config)
            started = datetime.now(timezone.utc).isoformat(timespec="seconds")
            info = {"command": self.command, "git": git_revision(), "machine": machine(),
                    "started": started, "cwd": str(Path.cwd())}
            write_json(self.layout.run_info, info)
            graph = self.graph()
            for s in self.skipped:
                log.info("policy %s left out: %s", s["policy"], s["reason"])
            self.manifest = {"schema_version": 1, "name": self.config.name, **info,
                             "config": self.config.model_dump(mode="json"),
                             "seeds": list(self.config.seeds),
                             # per run seed, the seed of the teacher it distils
                             "teacher_seeds": teacher_seeds(self.config),
                             "policies": [s.to_json() for s in self.specs],
                             "tables": self.tables, "skipped": self.skipped, "datasets": []}
            with Display(self.progress) as display:
                self.runner = StageRunner(display, Timings.in_cache(), self.force)
                display.plan({**{s.id: self.runner.estimate(s) for s in graph},
                              "report": self.runner.timings.estimate("report", "")})
                self.executor(graph, self.runner)
                self.manifest["datasets"] = [self._manifest_entry(e, self.runner.results)
                                             for e in self._entries]
                self.manifest["stages"] = [{"stage": k, "seconds": r.seconds,
                                            "cached": r.cached}
                                           for k, r in self.runner.results.items()]
                write_json(self.layout.manifest, self.manifest)
                self._report()
            log.info("finished: %s", self.layout.report_html)
        finally:
            log.removeHandler(handler)
            handler.close()
        return self.run_dir

    def plan(self) -> dict:
        """What the run's graph allows, without running it: the stages, their estimated
        seconds from scratch (last time in this folder, else this machine's last time of the
        kind, else a prior), how many are done already (marked with the same key), the total
        stage time and the critical path (no executor finishes sooner, however many workers)."""
        from cmm.pipeline.stages import read_marker

        self.check()
        graph = self.graph()
        runner = StageRunner(Display(enabled=False),
                             Timings.in_cache())
        seconds: dict[str, float] = {}
        done = 0
        by_kind: dict[str, dict] = {}
        for s in graph:
            marker = read_marker(s.folder)
            if marker is not None and marker.get("key") == s.key:
                done += 1
            est = runner.estimate(s) or 0.0  # the estimate the run's display would show
            seconds[s.id] = est
            k = by_kind.setdefault(s.kind, {"stages": 0, "seconds": 0.0})
            k["stages"] += 1
            k["seconds"] += est
        critical, path = graph.critical_path(seconds)
        return {"stages": len(graph), "done": done, "total_s": sum(seconds.values()),
                "critical_s": critical, "critical_path": path, "by_kind": by_kind,
                "seconds": seconds}

    # ------------------------------------------------------------------------------ graph
    def graph(self) -> StageGraph:
        """Every stage of the run but the report, declared with its folder, inputs and the
        stages it reads (nothing is run or written)."""
        from cmm.strategy.policy import available_policies

        self.specs, self.tables, self.skipped = policy_specs(self.config, available_policies())
        self.shared = {s.slug for s in self.specs if not s.seeded}
        graph = StageGraph()
        self._entries: list[dict] = []  # per dataset, the stage ids its manifest entry reads
        run_config = self.config
        for name in run_config.datasets:
            self.config = run_config.for_dataset(name)  # per_dataset settings in
            try:
                self._entries.append(self._declare_dataset(graph, name))
            finally:
                self.config = run_config
        return graph

    def _dataset_arg(self, name: str) -> str:
        if name.endswith((".yaml", ".yml")) and not Path(name).is_absolute():
            return str((self.base_dir / name).resolve())
        return name

    def _slug(self, name: str) -> str:
        """The dataset's folder in the run: its name (a spec file's ``name:``)."""
        from cmm.data.spec import load_dataset_spec

        return _slug(load_dataset_spec(self._dataset_arg(name)).name)

    def _declare_dataset(self, g: StageGraph, name: str) -> dict:
        """The dataset's stages: data, crash, the seed-independent replays, then each seed's;
        returns what its manifest entry is made of."""
        c = self.config
        d_slug = self._slug(name)
        arg = self._dataset_arg(name)
        source = self.source
        # The data layer caches by the hash of the raw files, the spec and the settings (and
        # writes atomically); this stage records that key in the run folder. Later stages name
        # the data by that key (= ds.cache_key).
        d_key = data_key(arg, c.data)
        ref = DatasetRef(f"{d_slug}/data", arg, c.data)
        plan = _EpisodePlans(c)  # the data's check, the crash stage and the manifest read it

        def prepare(folder: Path, on_progress, reads) -> dict:
            from cmm.data.prepare import prepare_dataset

            ds = prepare_dataset(arg, c.data, progress=False)
            _OPENED[ds.cache_key] = ds
            return {**_data_summary(ds), "prepared": str(ds.folder)}

        def check(result) -> None:  # in the driver, before any stage that reads the data
            from cmm.pipeline.checks import check_splits

            ds = ref.open(result)
            if ds.cache_key != d_key:
                raise RuntimeError(f"internal: data key {ds.cache_key} differs from the "
                                   f"stage's {d_key}")
            check_splits(ds, c, source, name, c.datasets.index(name))
            plan(ds, source)

        g.add(Stage(ref.stage_id, "data", self.layout.data(d_slug),
                           {"dataset": name, "key": d_key}, prepare, scope=d_slug,
                           aliases=(d_key,), checks=check))
        entry = {"name": name, "slug": d_slug, "config": c, "data": ref, "plan": plan,
                 "crash": None, "seed_independent": {"backtest": {}, "crash": {}}, "seeds": {}}
        crash = None
        if c.robustness.flash_crash is not None and self.tables.get("crash"):
            crash = self._crash(g, ref, d_key, d_slug, plan)
            entry["crash"] = crash.id
        shared = {}
        for spec in self.specs:
            if not spec.seeded:
                shared[spec.slug] = self._backtest(g, ref, d_key, d_slug, c, spec, {}, None)
        for slug in self.tables.get("crash", []):
            if slug in self.shared:
                spec = self._spec(slug)
                entry["seed_independent"]["crash"][slug] = self._backtest(
                    g, ref, d_key, d_slug, c, spec, {}, None, crash, shared[slug]).id
        entry["seed_independent"]["backtest"] = {k: s.id for k, s in shared.items()}
        for seed in c.seeds:
            entry["seeds"][str(seed)] = self._declare_seed(g, ref, d_key, d_slug, seed, crash)
        return entry

    def _spec(self, slug: str) -> PolicySpec:
        return next(s for s in self.specs if s.slug == slug)

    def _crash(self, g: StageGraph, ref: DatasetRef, d_key: str, d_slug: str,
               plan: _EpisodePlans) -> Stage:
        c = self.config
        inputs = {"data": d_key, "flash_crash": jsonable(c.robustness.flash_crash),
                  "episode_s": c.backtest.episode_s, "decision_every": c.backtest.decision_every}

        def work(out: Path, on_progress, reads) -> dict:
            from cmm.pipeline.stress import build_crash_dataset

            ds = ref(reads)
            cds = build_crash_dataset(ds, plan(ds), c.backtest.episode_s,
                                      c.robustness.flash_crash, out / "prepared")
            return {"key": cds.cache_key, "crashes": cds.meta["stress"]["crashes"]}

        return g.add(Stage(f"{d_slug}/crash", "crash", self.layout.crash(d_slug), inputs, work,
                           reads=(ref.stage_id,), scope=d_slug))

    def _manifest_entry(self, entry: dict, results: dict) -> dict:
        """A dataset's manifest entry, from the finished stages its ``entry`` names."""
        from cmm.pipeline.stress import episode_volatility, most_volatile

        c = entry["config"]
        ds = entry["data"].open(results[entry["data"].stage_id])
        plan = entry["plan"](ds, self.source)
        vol = episode_volatility(ds, plan)
        volatile = most_volatile(vol, c.robustness.volatile_fraction)
        out = {"name": entry["name"], "slug": entry["slug"], "dataset": ds.name,
               "cache_key": ds.cache_key, **_data_summary(ds), "episode_s": c.backtest.episode_s,
               "episodes": {"session": plan.episode_session.tolist(),
                            "start_ns": plan.episode_start_ns.tolist(),
                            "end_ns": plan.episode_end_ns.tolist(),
                            "volatility": vol.tolist(), "volatile": volatile.tolist()},
               "seeds": {}}
        if entry["crash"] is not None:
            out["crash"] = {"crashes": results[entry["crash"]].info["crashes"],
                            "settings": c.robustness.flash_crash.model_dump(mode="json")}

        def replays(ids: dict) -> dict:
            got: dict = {"backtest": {}, "crash": {}}
            for slug, sid in ids["backtest"].items():
                got["backtest"][slug] = {"key": results[sid].key,
                                         "latency_ns": results[sid].info["latency_ns"]}
            for slug, sid in ids["crash"].items():
                got["crash"][slug] = {"key": results[sid].key}
            return got

        out["seed_independent"] = replays(entry["seed_independent"])
        out["seeds"] = {seed: replays(ids) for seed, ids in entry["seeds"].items()}
        return out

    # ------------------------------------------------------------------------------- seed
    def _declare_seed(self, g: StageGraph, ref: DatasetRef, d_key: str, d_slug: str, seed: int,
                      crash: Stage | None) -> dict:
        """Run seed ``seed``'s stages; returns the ids of its replays by policy slug."""
        c = seeded(self.config, seed)
        chains: dict = {"main": self._chain(g, ref, d_key, d_slug, c, seed, c.teacher,
                                            distill=True)}
        if c.controls.random_teacher:
            random_teacher = c.teacher.model_copy(update={
                "backbone": c.teacher.backbone.model_copy(update={"init": "random"})})
            if c.controls.random_distill:
                chains["control"] = self._chain(g, ref, d_key, d_slug, c, seed, random_teacher,
                                                distill=True, teacher_name="control/teacher",
                                                control=True)
            else:
                chains["control"] = self._chain(g, ref, d_key, d_slug, c, seed, random_teacher,
                                                distill=False, teacher_name="teacher-random")
        chains["rl"] = {s.name: self._rl(g, ref, d_key, d_slug, c, seed, s.name)
                        for s in self.specs if s.source == "registry" and s.name in c.rl}
        backtests: dict[str, Stage] = {}
        # own latencies first: "cmm-teacher-latency" is charged the teacher's
        for spec in sorted((s for s in self.specs if s.seeded), key=lambda s: s.latency != "own"):
            latency_of = backtests["teacher"] if spec.latency == "teacher" else None
            backtests[spec.slug] = self._backtest(g, ref, d_key, d_slug, c, spec, chains, seed,
                                                  latency_of=latency_of)
        crashes = {slug: self._backtest(g, ref, d_key, d_slug, c, self._spec(slug), chains, seed,
                                        crash, backtests[slug]).id
                   for slug in self.tables.get("crash", []) if slug not in self.shared}
        return {"backtest": {k: s.id for k, s in backtests.items()}, "crash": crashes}

    def _chain(self, g: StageGraph, ref: DatasetRef, d_key: str, d_slug: str, c: RunConfig,
               seed: int, teacher_cfg, distill: bool, teacher_name: str = "teacher",
               control: bool = False) -> dict[str, Stage]:
        """Teacher fit, features, probe, experts, mixtures (or, for the plain control, the fit
        and its test predictions) of run seed ``seed``, by stage name. ``teacher_name``: the
        teacher's folder as :func:`cmm.pipeline.layout.teacher_folder` names it;
        ``control``: the probe, experts and mixtures under the seed's ``control/``."""
        L = self.layout
        teacher, feats = self._teacher(g, ref, d_key, d_slug, seed, teacher_cfg, teacher_name,
                                       distill)
        if feats is None:
            return {"teacher": teacher}
        probe_dir = L.probe(d_slug, seed, control)
        t_id, f_id = teacher.id, feats.id

        def probe(folder: Path, on_progress, reads) -> dict:
            from cmm.probe.pipeline import run_probe

            result = run_probe(reads[t_id].folder, ref(reads), c.probe, folder,
                               teacher_cfg.device, on_progress)
            return {"assignment": result["all"]["assignment"],
                    "paper_pattern": result.get("paper_pattern")}

        pr = g.add(Stage(L.stage_id(probe_dir), "probe", probe_dir,
                         {"teacher": teacher.key, "probe": jsonable(c.probe)}, probe,
                         reads=(ref.stage_id, t_id, f_id), scope=d_slug, resources=_TORCH,
                         outputs=PROBE_OUTPUTS))
        p_id = pr.id

        def experts(folder: Path, on_progress, reads) -> dict:
            from cmm.distill.pipeline import run_distill

            meta = run_distill(ref(reads), reads[t_id].folder, c.distill, folder,
                               probe_path=reads[p_id].folder / PROBE_FILE,
                               on_done=lambda k, n: on_progress("students", k, n))
            return {"assignment": meta["assignment"], "parameters": meta["parameters"]}

        distill_dir = L.distill(d_slug, seed, control)
        dist = g.add(Stage(L.stage_id(distill_dir), "distill", distill_dir,
                           {"features": feats.key, "probe": pr.key,
                            "distill": jsonable(c.distill)}, experts,
                           reads=(ref.stage_id, t_id, f_id, p_id), scope=d_slug,
                           resources=_TORCH, outputs=DISTILL_OUTPUTS))
        x_id = dist.id

        def mixtures(folder: Path, on_progress, reads) -> dict:
            from cmm.moe.pipeline import run_moe

            report = run_moe(ref(reads), reads[x_id].folder, c.moe, folder, measure_latency=True,
                             on_progress=on_progress, teacher_dir=reads[f_id].folder.parent)
            return {"latency": report.get("latency"),
                    "gates": {k: v["gates"] for k, v in report["mixtures"].items()}}

        moe_dir = L.moe(d_slug, seed, control)
        # "latency": mixtures store every gate's measured latency (older stages: cmm's only)
        moe = g.add(Stage(L.stage_id(moe_dir), "moe", moe_dir,
                          {"distill": dist.key, "moe": jsonable(c.moe), "latency": "per-gate"},
                          mixtures, reads=(ref.stage_id, f_id, x_id), scope=d_slug,
                          outputs=MOE_OUTPUTS))
        return {"teacher": teacher, "features": feats, "probe": pr, "distill": dist,
                "moe": moe}

    def _teacher_ids(self, d_slug: str, seed: int, name: str) -> tuple[str, str]:
        """The stage ids of the teacher ``name`` that run seed ``seed`` reads and of its
        features: the teacher's folder in the run (``<dataset>/seed<k>/teacher``,
        ``<dataset>/teacher-seed<t>/teacher``), its features beside it."""
        t_id = self.layout.stage_id(self.layout.teacher(d_slug, seed, name))
        return t_id, f"{t_id.rsplit('/', 1)[0]}/features"

    def _teacher(self, g: StageGraph, ref: DatasetRef, d_key: str, d_slug: str, seed: int,
                 teacher_cfg, name: str, distill: bool) -> tuple[Stage, Stage | None]:
        """The fit of the teacher ``name`` that run seed ``seed`` reads and, when it is
        distilled, its features. A teacher shared by several run seeds (``teacher.seeds``) is
        one stage, declared by the first."""
        t_dir = self.layout.teacher(d_slug, seed, name)
        t_id, f_id = self._teacher_ids(d_slug, seed, name)

        def fit(folder: Path, on_progress, reads) -> dict:
            from cmm.teacher.pipeline import run_fit

            ds = ref(reads)
            report = run_fit(ds, teacher_cfg, folder, on_progress)
            if not distill:
                from cmm.teacher.pipeline import teacher_predict

                pred = teacher_predict(folder, ds, ds.windows(SPLIT),
                                       teacher_cfg.infer_batch_size, teacher_cfg.device,
                                       on_progress)
                np.save(folder / TEACHER_PREDICTIONS_FILE, pred)
            return {"fit_seconds": report["fit_seconds"], "stopped_by": report["stopped_by"],
                    "latency_ms": report["latency_ms"]}

        teacher = g.add(Stage(t_id, "teacher", t_dir,
                              {"data": d_key, "teacher": jsonable(teacher_cfg)}, fit,
                              reads=(ref.stage_id,), scope=d_slug, resources=_TORCH,
                              outputs=TEACHER_OUTPUTS))
        if not distill:
            return teacher, None

        def features(folder: Path, on_progress, reads) -> dict:
            from cmm.teacher.features import extract_features
            from cmm.teacher.store import load_teacher

            ds = ref(reads)
            model = load_teacher(reads[t_id].folder, ds, device=teacher_cfg.device)
            index = extract_features(model, ds, reads[t_id].folder,
                                     teacher_cfg.infer_batch_size, on_progress)
            return {"num_blocks": index["num_blocks"], "width": index["width"]}

        feats = g.add(Stage(f_id, "features", t_dir / "features",
                            {"teacher": teacher.key, "batch_size": teacher_cfg.infer_batch_size},
                            features, reads=(ref.stage_id, t_id), scope=d_slug,
                            resources=_TORCH, outputs=FEATURES_OUTPUTS))
        return teacher, feats

    def _rl(self, g: StageGraph, ref: DatasetRef, d_key: str, d_slug: str, c: RunConfig,
            seed: int, algo: str) -> Stage:
        """Train one RL market maker (``cmm rl train``'s function) with the run's ladder and
        backtest settings; the checkpoint best on validation is kept."""
        from cmm.config import RLConfig, validate_model

        cfg = validate_model(RLConfig, {**c.rl_settings, "algo": algo, "seed": run_seed(c),
                                        "ladder": c.ladder.model_dump(),
                                        "backtest": c.backtest.model_dump()},
                             prefix=("rl_settings",))

        def work(out: Path, on_progress, reads) -> dict:
            from cmm.rl.train import train_agent

            result = train_agent(ref(reads), cfg, out)
            return {"training": result.meta.get("training"),
                    "latency": result.meta.get("latency")}

        folder = self.layout.rl(d_slug, seed, algo)
        return g.add(Stage(f"{self.layout.stage_id(folder.parent.parent)}/rl-{algo}", "rl",
                           folder, {"data": d_key, "rl": jsonable(cfg)}, work,
                           reads=(ref.stage_id,), scope=d_slug, resources=_TORCH))

    # --------------------------------------------------------------------------- backtests
    def _backtest(self, g: StageGraph, ref: DatasetRef, d_key: str, d_slug: str, c: RunConfig,
                  spec: PolicySpec, chains: dict, seed: int | None, crash: Stage | None = None,
                  original: Stage | None = None, latency_of: Stage | None = None) -> Stage:
        """One replay of ``spec`` on the test split (``crash``: on the crash stage's copy of
        it, ``original`` the replay it repeats, whose latency it is charged); ``latency_of``:
        the replay whose charged latency this one is charged instead of its own (the price of
        latency); ``seed`` None: a seed-independent policy's one replay."""
        chain = chains.get("control" if spec.chain == "control" or spec.name == "teacher-random"
                           else "main", {})
        if spec.source == "mixture":
            upstream = chain["moe"]
        elif spec.source == "teacher":
            upstream = chain["teacher"]
        else:
            upstream = chains.get("rl", {}).get(spec.name)
        settings = dict(c.policy_settings.get(
            spec.name if spec.source == "registry" else
            ("teacher" if spec.source == "teacher" else "cmm"), {}))
        if spec.latency == "zero" and crash is None:
            settings["latency_ns"] = 0
        inputs = {"data": d_key if crash is None else crash.key,
                  "policy": spec.to_json(), "settings": settings,
                  "upstream": upstream.key if upstream is not None else None,
                  "seed": run_seed(c), "ladder": jsonable(c.ladder),
                  "backtest": jsonable(c.backtest)}
        if not spec.seeded:  # one replay for every seed: the seed is no input of it
            del inputs["seed"]
        if latency_of is not None and crash is None:
            inputs["latency_of"] = latency_of.key
        if original is not None:
            inputs["original"] = original.key
        if spec.slug == "cmm" and crash is None:
            inputs["saves"] = ["weights", "prediction"]  # the report's weights, CMM's metrics
        # the teacher's replay reads its features too (its predictions), which its key names
        # through the teacher's
        reads = [ref.stage_id, *(s.id for s in (crash, original, latency_of, upstream)
                                 if s is not None)]
        if spec.source == "teacher" and "features" in chain:
            reads.append(chain["features"].id)
        up_id = upstream.id if upstream is not None else None
        source = spec.source
        crash_id = crash.id if crash is not None else None
        original_id = original.id if original is not None else None
        latency_id = latency_of.id if latency_of is not None and crash is None else None

        def work(out: Path, on_progress, reads) -> dict:
            ds = ref(reads)
            target = ds if crash_id is None else open_prepared(reads[crash_id].folder /
                                                               "prepared")
            latency = reads[original_id].info["latency_ns"] if original_id else None
            given = dict(settings)
            if latency_id is not None:
                given["latency_ns"] = int(reads[latency_id].info["latency_ns"])
            found: dict = {}  # where the fitted policy is
            if source == "registry" and up_id is not None:  # an RL agent
                given["artefact"] = str(reads[up_id].folder)
            elif source == "teacher":
                found["teacher_dir"] = reads[up_id].folder
            elif source == "mixture":
                found.update(moe_dir=reads[up_id].folder, gates=reads[up_id].info["gates"])
            policy, extra = build_policy(spec, ds, target, c, found, given, latency)
            return replay(policy, target, c, out, spec, extra)

        folder = self.layout.replay(d_slug, spec.slug, seed if spec.seeded else None,
                                    "backtest" if crash is None else "crash")
        return g.add(Stage(self.layout.stage_id(folder), "backtest", folder, inputs, work,
                           reads=tuple(dict.fromkeys(reads)), scope=d_slug,
                           outputs=BACKTEST_OUTPUTS))

    # ------------------------------------------------------------------------------ report
    def _report(self) -> None:
        from cmm.report import build_report

        inputs = {"manifest": {k: v for k, v in self.manifest.items()
                               if k not in ("started", "stages", "command", "cwd", "machine")},
                  "report": jsonable(self.config.report),
                  "keys": {k: r.key for k, r in self.runner.results.items()}}
        run_dir = self.run_dir

        def work(folder: Path, on_progress, reads) -> dict:
            paths = build_report(run_dir, folder)
            return {k: str(v) for k, v in paths.items()}

        report = Stage("report", "report", self.layout.report, inputs, work,
                       reads=tuple(self.runner.results))
        self.runner.run_stage(report)
        from cmm.report.render import copy_to_run_folder

        copy_to_run_folder(self.run_dir)  # RunLayout.report_html and report_md


_TORCH = {"num_cpus": 1, "gpu": True}  # may use a GPU where the teacher's device is one


# Prepared datasets opened in this process, by cache key: every stage of a dataset reads the
# same arrays.
_OPENED: dict = {}


def open_prepared(folder: Path):
    """The prepared-dataset folder ``folder``, opened once per process."""
    from cmm.data.prepare import PreparedDataset

    folder = Path(folder)
    for ds in _OPENED.values():
        if ds.folder == folder:
            return ds
    ds = PreparedDataset(folder)
    _OPENED[ds.cache_key] = ds
    return ds


@dataclass(frozen=True)
class DatasetRef:
    """How a stage's work finds the prepared dataset of the data stage it reads: the folder
    that stage recorded (``info["prepared"]``), else (a data stage marked before it recorded
    its folder) the data layer's cache, by the dataset and its settings."""

    stage_id: str
    arg: str
    config: Any  # DataConfig

    def __call__(self, reads) -> Any:
        return self.open(reads[self.stage_id])

    def open(self, result: StageResult):
        key = result.info.get("cache_key")
        if key in _OPENED:
            return _OPENED[key]
        folder = result.info.get("prepared")
        if folder and (Path(folder) / PREPARED_META_FILE).is_file():
            ds = open_prepared(Path(folder))
            if ds.cache_key == key:
                return ds
        from cmm.data.prepare import prepare_dataset

        ds = prepare_dataset(self.arg, self.config, progress=False)
        _OPENED[ds.cache_key] = ds
        return ds


def episode_plan(ds, c: RunConfig, source=None):
    """The episodes of ``ds``'s test split under ``c``'s backtest settings (an InputError
    located in the configuration file when the split is shorter than one episode)."""
    from cmm.backtest.runner import make_plan

    try:
        return make_plan(ds.split_samples(SPLIT), SPLIT, ds.config.grid.dt_ms * 1_000_000,
                         c.backtest)
    except InputError as exc:
        if source is None:
            raise
        from cmm.pipeline.checks import located

        raise located(exc, source) from None


class _EpisodePlans:
    """The episode plan (:func:`episode_plan`) of a dataset under its run configuration,
    computed once: the data stage's check, the crash stage and the manifest entry all read it."""

    def __init__(self, config: RunConfig) -> None:
        self.config = config
        self._plans: dict[str, Any] = {}  # by the prepared dataset's cache key

    def __call__(self, ds, source=None):
        """The plan of ``ds`` (``source``: where an error in the settings points)."""
        if ds.cache_key not in self._plans:
            self._plans[ds.cache_key] = episode_plan(ds, self.config, source)
        return self._plans[ds.cache_key]


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


def run(config: RunConfig, root: str | Path = "runs", **kw) -> Path:
    """Run every stage of ``config``; returns the run folder."""
    return Pipeline(config, root, **kw).run()
