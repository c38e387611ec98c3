"""Raw files -> sessions of canonical events -> grid, features, targets, regimes, splits.

The result is a folder of plain artefacts, cached by a hash of the raw files' contents, the
dataset spec and the data settings, and written atomically (a half-built folder is never seen):

- ``events_<session>.npz``: finalized hftbacktest event arrays (key ``data``), one per session;
- ``steps.parquet``: one row per grid step (book levels, trade flow, mid, spread, sigma, valid);
- ``features.parquet``: unscaled per-step input features, aligned with ``steps``;
- ``samples.parquet``: one row per decision point (window end): split, regime, targets;
- ``meta.json``: settings, file hashes, sessions, reader reports, repairs, scaler, thresholds,
  and ``checksums``: the size and sha256 of every file above.

A folder is checked against its checksums: :class:`PreparedDataset` checks every file's size
when it opens the folder and a file's sha256 before its first read in the process;
:func:`prepare_dataset` checks every size and sha256 (once per process while the files are
unchanged: ~0.3 s per 80 MB on a busy core) and rebuilds a folder that fails (truncated,
overwritten or unparsable file), saying which file it was. Folders written before checksums
were recorded are checked for readability only.
"""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from cmm.config import DataConfig, GridConfig
from cmm.data import FEATURES_FILE, META_FILE, SAMPLES_FILE, STEPS_FILE
from cmm.data import features as F
from cmm.data.events import (
    DEPTH_EVENT,
    DEPTH_SNAPSHOT_EVENT,
    EVENT_TYPE_MASK,
    LOCAL_EVENT,
    TRADE_EVENT,
    ReadReport,
    finalize_events,
)
from cmm.data.grid import build_snapshots
from cmm.data.readers import companion_files, get_reader
from cmm.data.spec import DatasetSpec, load_dataset_spec
from cmm.data.windows import Windows
from cmm.errors import CorruptArtefactError, InputError
from cmm.io import atomic_dir, default_cache_dir, sha256_file, stable_hash, write_json
from cmm.io import check_file, check_folder, folder_checksums, read_parquet, reading
from cmm.io import file_lock, remove_stale_temporaries
from cmm.codeversion import code_version
from cmm.vocabulary import REGIMES, SPLITS

SCHEMA_VERSION = 3  # 2: volume target in lots; 3: trailing_volume_lots feature
SPLIT_IDS = {s: i for i, s in enumerate(SPLITS)}  # the samples' split_id
log = logging.getLogger("cmm.data")


@dataclass(frozen=True)
class SessionInfo:
    id: int
    files: list[str]
    start_ns: int  # time of step 0 (local clock)
    end_ns: int  # time of the last step
    n_steps: int


def _effective_config(spec: DatasetSpec, config: DataConfig | None) -> DataConfig:
    """The data settings for ``spec``: its own grid, with each grid field that ``config`` sets
    explicitly taking precedence (so ``grid: {dt_ms: 100}`` asks for 100 ms even on a dataset
    registered at 1 s, and keeps that dataset's level count)."""
    config = config or DataConfig()
    if spec.grid is None:
        return config
    grid = config.grid
    own = grid.model_dump(include=grid.model_fields_set) if "grid" in config.model_fields_set else {}
    return config.model_copy(update={"grid": GridConfig.model_validate(
        {**spec.grid.model_dump(), **own})})


def _progress():
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeElapsedColumn(), transient=True)


def dataset_key(spec: DatasetSpec, config: DataConfig) -> tuple[str, list[dict]]:
    files, companions = [], []
    for path in spec.file_paths():
        if path.is_dir():
            raise InputError("a folder where a data file is expected", file=path,
                             expected="a file")
        if not path.is_file():
            raise InputError("data file not found (run `cmm data fetch "
                             f"{spec.name}` or set CMM_DATA_DIR)", file=path)
        files.append({"path": str(path), "sha256": sha256_file(path)})
        # Companions that are missing are left to the reader, which names what it expected.
        companions += [sha256_file(c) for c in companion_files(spec.format, path) if c.is_file()]
    spec_part = spec.model_dump(exclude={"base_dir", "description", "sources"})
    key = stable_hash({"schema": SCHEMA_VERSION, "spec": spec_part, "config": config.model_dump(),
                       "files": [f["sha256"] for f in files], "companions": companions,
                       "code": code_version("dataset")})  # the readers' and preparation's source
    return key, files


def prepare_dataset(name_or_spec: str | Path | DatasetSpec, config: DataConfig | None = None,
                    cache_dir: str | Path | None = None, progress: bool = True) -> PreparedDataset:
    """Build (or load from cache) the prepared artefacts of a dataset."""
    spec = name_or_spec if isinstance(name_or_spec, DatasetSpec) else load_dataset_spec(name_or_spec)
    config = _effective_config(spec, config)
    key, files = dataset_key(spec, config)
    root = Path(cache_dir) if cache_dir else default_cache_dir() / "prepared"
    folder = root / f"{spec.name}-{key}"
    remove_stale_temporaries(root)  # of builds killed before they could clean up
    # One build per key at a time: a second process waits, then loads what the first built.
    with file_lock(root / f".{folder.name}.lock", wait=True,
                   what=f"the preparation of {folder}"):
        if (folder / META_FILE).is_file():
            try:
                return PreparedDataset(folder, verify=True)
            except CorruptArtefactError as exc:  # heal: rebuild the folder, replacing it whole
                message = f"data cache: {exc}; rebuilding {folder.name}"
                log.warning(message)
                print(message, file=sys.stderr, flush=True)
        with atomic_dir(folder) as tmp:
            _build(spec, config, key, files, tmp, progress)
        return PreparedDataset(folder)


def _join_sessions(reads: list[tuple[Path, np.ndarray, object]], gap_ns: int) -> list[list[int]]:
    order = sorted(range(len(reads)), key=lambda i: reads[i][2].first_local_ts or 0)
    sessions: list[list[int]] = []
    last_end = None
    for i in order:
        report = reads[i][2]
        if last_end is not None and report.first_local_ts - last_end <= gap_ns:
            sessions[-1].append(i)
        else:
            sessions.append([i])
        last_end = max(last_end or 0, report.last_local_ts)
    return sessions


def _ffill_rows(a: np.ndarray, valid: np.ndarray) -> np.ndarray:
    idx = np.where(valid, np.arange(len(valid)), 0)
    np.maximum.accumulate(idx, out=idx)
    return a[idx]


@dataclass
class SessionArrays:
    """One session on the grid: book and flow per step, features, sigma, decision points."""

    ts_ns: np.ndarray  # (n,) step times, local clock
    valid: np.ndarray  # (n,) full, uncrossed book at this step (else the last book is carried)
    book: dict[str, np.ndarray]  # bid_px, bid_sz, ask_px, ask_sz (n, L); buy_vol, sell_vol, trade_count (n,)
    mid: np.ndarray
    spread: np.ndarray  # ticks
    sigma: np.ndarray
    features: np.ndarray  # (n, F) unscaled
    sample_steps: np.ndarray  # steps t with a full valid window behind and horizon ahead
    targets: np.ndarray  # (len(sample_steps), 3)
    repairs: dict[str, int]

    @property
    def n_steps(self) -> int:
        return len(self.ts_ns)


def build_session(events: np.ndarray, inst, config: DataConfig,
                  why: dict | None = None) -> SessionArrays | None:
    """Grid, features, sigma and targets of one session's finalized events (None when no step
    ever has a full, uncrossed book; then ``why``, if given, gets ``visible_levels``: the most
    levels any step shows on both sides, or ``depth_events: 0`` when there is no book at all)."""
    grid, fcfg = config.grid, config.features
    dt_ns = grid.dt_ms * 1_000_000
    W, H, L = fcfg.window, fcfg.horizon, grid.levels
    local = events[(events["ev"] & LOCAL_EVENT) != 0]
    if len(local) == 0:
        return None
    kind = local["ev"] & EVENT_TYPE_MASK
    # The book is known from the first snapshot on; without one, from the first full book.
    snap_ts = local["local_ts"][kind == DEPTH_SNAPSHOT_EVENT]
    first_ts = int(snap_ts[0]) if len(snap_ts) else int(local["local_ts"][0])
    start = (first_ts // dt_ns + 1) * dt_ns
    # Centre of the book's price band, from what is known at the first step only (a band set
    # from later prices would let the future decide which levels the past sees).
    priced = (local["px"] > 0) & (local["qty"] > 0) & (kind != TRADE_EVENT)
    if not priced.any():  # trades only: no book to centre a band on
        if why is not None:
            why["depth_events"] = 0
        return None
    known = local["px"][priced & (local["local_ts"] <= start)]
    ref = float(np.median(known if len(known) else local["px"][priced][:100]))
    n_steps = int((int(local["local_ts"][-1]) - start) // dt_ns) + 1
    if n_steps <= 0:
        return None
    snaps = build_snapshots(local, start, dt_ns, n_steps, L, inst.tick_size,
                            ref * (1 - grid.book_band), ref * (1 + grid.book_band),
                            inst.contract_size, inst.inverse)
    bid0, ask0 = snaps["bid_px"][:, 0], snaps["ask_px"][:, 0]
    valid = (~np.isnan(snaps["bid_px"]).any(axis=1) & ~np.isnan(snaps["ask_px"]).any(axis=1)
             & (bid0 < ask0))
    if not valid.any():
        if why is not None:
            shown = np.minimum((~np.isnan(snaps["bid_px"])).sum(axis=1),
                               (~np.isnan(snaps["ask_px"])).sum(axis=1))
            why["visible_levels"] = int(shown.max()) if len(shown) else 0
        return None
    first_valid = int(np.argmax(valid))
    sl = slice(first_valid, None)
    valid = valid[sl]
    # pop: each raw level array is dropped as soon as its carried copy exists (a day at 100 ms)
    book = {k: _ffill_rows(snaps.pop(k)[sl], valid) for k in ("bid_px", "bid_sz", "ask_px", "ask_sz")}
    book.update({k: snaps[k][sl] for k in ("buy_vol", "sell_vol", "trade_count")})
    n = len(valid)
    ts = (start + (np.arange(n) + first_valid) * dt_ns).astype(np.int64)
    mid, spread = F.mid_and_spread(book, inst.tick_size)
    sig = F.sigma(mid, fcfg)
    feats = F.step_features(book, inst.tick_size, fcfg, inst.lot_size)
    # Decision points: a full window behind, the full horizon ahead, every step in both valid.
    t = np.arange(W - 1, n - H)
    if len(t):
        bad = np.concatenate([[0], np.cumsum(~valid)])
        t = t[(bad[t + H + 1] - bad[t - W + 1] == 0) & np.isfinite(sig[t])]
    y = F.targets(mid, spread, book["buy_vol"] + book["sell_vol"], t, H, inst.lot_size)
    repairs = {"crossed_levels_removed": int(snaps["crossed_repairs"]),
               "levels_out_of_band": int(snaps["out_of_band"]),
               "leading_steps_dropped": first_valid, "invalid_steps_carried": int((~valid).sum())}
    return SessionArrays(ts, valid, book, mid, spread, sig, feats, t, y, repairs)


def _build(spec: DatasetSpec, config: DataConfig, key: str, files: list[dict], out: Path,
           progress: bool) -> None:
    """Read ``files``, grid each session and write the dataset's artefacts into ``out``."""
    grid, fcfg = config.grid, config.features
    inst = spec.instrument
    reads = _read_files(spec, files, progress)
    W, H, L = fcfg.window, fcfg.horizon, grid.levels
    step_tables, feature_tables, sample_parts, sessions, repairs = [], [], [], [], []
    global_offset = 0
    for sid, members in enumerate(_join_sessions(reads, int(config.reader.join_gap_s * 1e9))):
        events = _session_events(reads, members, config.reader.base_latency_ns)
        np.savez(out / events_file(sid), data=events)
        why: dict = {}
        arrays = build_session(events, inst, config, why)
        del events
        if arrays is None:
            repairs.append({"session": sid, "skipped": "no step with a full, uncrossed book",
                            **why})
            continue
        n, ts = arrays.n_steps, arrays.ts_ns
        step_tables.append(pl.DataFrame({
            "session": np.full(n, sid, np.int32), "step": np.arange(n, dtype=np.int32),
            "ts_ns": ts, "valid": arrays.valid, **step_columns(arrays, L)}))
        feature_tables.append(pl.DataFrame(arrays.features.astype(np.float32), schema=F.feature_names(L)))
        sample_parts.append(_sample_table(sid, arrays, global_offset))
        global_offset += n
        sessions.append({"id": sid, "files": [str(reads[i][0]) for i in members],
                         "start_ns": int(ts[0]), "end_ns": int(ts[-1]), "n_steps": n})
        repairs.append({"session": sid, **arrays.repairs})

    _check_windows(spec.name, sessions, repairs, sample_parts, config)
    purge = config.splits.purge if config.splits.purge is not None else H + W
    samples, train, thresholds = _split_and_label(spec.name, pl.concat(sample_parts), config,
                                                  purge)
    steps_df = pl.concat(step_tables)
    feats_df = pl.concat(feature_tables)
    mean, std = _scaler(steps_df, feats_df, train)
    counts = {s: int((samples["split"] == s).sum()) for s in SPLITS}
    write_tables(out, steps_df, feats_df, samples, {
        "schema_version": SCHEMA_VERSION, "key": key, "name": spec.name,
        "spec": spec.model_dump(exclude={"base_dir"}), "config": config.model_dump(),
        "files": files, "sessions": sessions, "reports": [r[2].to_dict() for r in reads],
        "repairs": repairs, "purge_steps": purge, "split_counts": counts,
        "regime_thresholds": list(thresholds),
        "regime_counts": {s: np.bincount(samples.filter(pl.col("split") == s)["regime"].to_numpy(),
                                         minlength=len(REGIMES)).tolist() for s in SPLITS},
        "feature_names": F.feature_names(L), "scaler_mean": mean.tolist(), "scaler_std": std.tolist(),
    })


def _read_files(spec: DatasetSpec, files: list[dict], progress: bool
                ) -> list[tuple[Path, np.ndarray | None, ReadReport]]:
    """(path, raw events, report) of each file, read by the spec's reader."""
    reader = get_reader(spec.format)
    reads = []
    with _progress() as bar:
        task = bar.add_task(f"reading {spec.name}", total=len(files), visible=progress)
        for f in files:
            events, report = reader(Path(f["path"]), spec.instrument, spec.reader_options)
            reads.append((Path(f["path"]), events, report))
            bar.advance(task)
    return reads


def _session_events(reads: list, members: list[int], base_latency_ns: int) -> np.ndarray:
    """The finalized events of one session (the raw events of its ``members`` joined); the
    members' raw arrays are released. A session without depth events is an error."""
    raw = np.concatenate([reads[i][1] for i in members])
    for i in members:  # a full day's raw arrays are hundreds of MB: keep only the reports
        reads[i] = (reads[i][0], None, reads[i][2])
    kind = raw["ev"] & EVENT_TYPE_MASK
    if not ((kind == DEPTH_EVENT) | (kind == DEPTH_SNAPSHOT_EVENT)).any():
        only = "only trades" if (kind == TRADE_EVENT).any() else "no book or trade events"
        raise InputError(f"no depth events: the capture holds {only}; a dataset needs the "
                         "order book (depth diffs or snapshots)",
                         file=", ".join(str(reads[i][0]) for i in members))
    del kind
    return finalize_events(raw, base_latency_ns)


def step_columns(arrays: SessionArrays, levels: int) -> dict[str, np.ndarray]:
    """The per-step columns of ``steps.parquet`` computed from a session's events (all but
    ``session``, ``step``, ``ts_ns`` and ``valid``), in the file's column order."""
    table = {}
    for side in ("bid", "ask"):
        for lv in range(levels):
            table[f"{side}_px_{lv}"] = arrays.book[f"{side}_px"][:, lv]
            table[f"{side}_sz_{lv}"] = arrays.book[f"{side}_sz"][:, lv]
    table.update(buy_vol=arrays.book["buy_vol"], sell_vol=arrays.book["sell_vol"],
                 trade_count=arrays.book["trade_count"], mid=arrays.mid,
                 spread_ticks=arrays.spread, sigma=arrays.sigma)
    return table


def _sample_table(sid: int, arrays: SessionArrays, global_offset: int) -> pl.DataFrame:
    """One session's decision points: step, time, sigma, targets and mid (no split yet)."""
    t, y, ts = arrays.sample_steps, arrays.targets, arrays.ts_ns
    return pl.DataFrame({
        "session": np.full(len(t), sid, np.int32), "step": t.astype(np.int32),
        "global_step": (t + global_offset).astype(np.int64), "ts_ns": ts[t],
        "sigma": arrays.sigma[t], "y_mid": y[:, 0], "y_spread": y[:, 1], "y_volume": y[:, 2],
        "mid": arrays.mid[t],
    })


def _check_windows(name: str, sessions: list[dict], repairs: list[dict],
                   sample_parts: list[pl.DataFrame], config: DataConfig) -> None:
    """Refuse a dataset without a window, saying why (too few levels, no full book, sessions
    too short)."""
    grid, fcfg = config.grid, config.features
    W, H, L = fcfg.window, fcfg.horizon, grid.levels
    shown = [r["visible_levels"] for r in repairs if "visible_levels" in r]
    if not sessions and shown and max(shown) < L:  # every session lacks the levels asked for
        raise InputError(f"dataset '{name}' yields no windows: no step has {L} visible "
                         f"levels on both sides; the book shows at most {max(shown)} (within "
                         "grid.book_band of the price): lower grid.levels", field="grid.levels",
                         expected=f"<= {max(shown)}", got=L)
    if not sessions:
        raise InputError(f"dataset '{name}' yields no windows: no step has a full, "
                         f"uncrossed book of {L} levels a side")
    if not sample_parts or sum(len(p) for p in sample_parts) == 0:
        raise InputError(f"dataset '{name}' yields no windows: sessions are shorter than "
                         f"window + horizon = {W + H} steps of {grid.dt_ms} ms")


def _split_and_label(name: str, samples: pl.DataFrame, config: DataConfig, purge: int
                     ) -> tuple[pl.DataFrame, pl.DataFrame, tuple]:
    """The samples with their split (purged ones dropped), regime and row number; the training
    samples; and the regime thresholds, from the training samples only."""
    split = F.chronological_splits(samples["global_step"].to_numpy(), config.splits, purge)
    samples = samples.with_columns(pl.Series("split_id", split)).filter(pl.col("split_id") >= 0)
    names = np.array(SPLITS)
    samples = samples.with_columns(pl.Series("split", names[samples["split_id"].to_numpy()]))
    train = samples.filter(pl.col("split") == "train")
    if len(train) == 0:
        raise InputError(f"dataset '{name}' has no training windows after the purge gap")
    thresholds = F.regime_thresholds(train["sigma"].to_numpy())
    samples = samples.with_columns(
        pl.Series("regime", F.assign_regimes(samples["sigma"].to_numpy(), thresholds)))
    samples = samples.with_row_index("sample").with_columns(pl.col("sample").cast(pl.Int64))
    return samples, train, thresholds


def _scaler(steps_df: pl.DataFrame, feats_df: pl.DataFrame, train: pl.DataFrame
            ) -> tuple[np.ndarray, np.ndarray]:
    """Mean and std of the features, from the steps that training windows cover, and nothing
    later."""
    last_train = train.group_by("session").agg(pl.col("step").max())
    mask = np.zeros(len(steps_df), bool)
    sess = steps_df["session"].to_numpy()
    step = steps_df["step"].to_numpy()
    for s, last in last_train.iter_rows():
        mask |= (sess == s) & (step <= last)
    fx = feats_df.to_numpy()[mask].astype(np.float64)
    mean, std = fx.mean(axis=0), fx.std(axis=0)
    std[std < 1e-12] = 1.0
    return mean, std


def events_file(session_id: int) -> str:
    """The name of a session's event file in a prepared-dataset folder."""
    return f"events_{session_id}.npz"


def write_tables(out: Path, steps: pl.DataFrame, features: pl.DataFrame, samples: pl.DataFrame,
                 meta: dict) -> None:
    """Write a prepared dataset's tables into folder ``out``, then its ``meta.json``: ``meta``
    with the ``checksums`` of every file in the folder (the event files written before too)."""
    steps.write_parquet(out / STEPS_FILE)
    features.write_parquet(out / FEATURES_FILE)
    samples.write_parquet(out / SAMPLES_FILE)
    write_json(out / META_FILE, {**meta,
                                 "checksums": folder_checksums(out, exclude=(META_FILE,))})


class PreparedDataset:
    """Read-only view of a prepared dataset folder. Every file's size is checked on opening
    (``verify``: every sha256 too), a file's sha256 before its first read in the process; a
    mismatch or an unparsable file raises :class:`CorruptArtefactError` naming it."""

    def __init__(self, folder: str | Path, verify: bool = False) -> None:
        self.folder = Path(folder)
        with reading(self.folder / META_FILE):
            self.meta = json.loads((self.folder / META_FILE).read_text())
        self.checksums: dict[str, dict] = self.meta.get("checksums") or {}
        bad = check_folder(self.folder, self.checksums, checksum=verify)
        if bad is not None:
            raise CorruptArtefactError(bad[1], file=bad[0])
        if self.meta.get("schema_version") != SCHEMA_VERSION:
            raise InputError("prepared dataset has another schema version; prepare it again",
                             file=self.folder / META_FILE, field="schema_version",
                             expected=str(SCHEMA_VERSION), got=self.meta.get("schema_version"))
        self.spec = DatasetSpec.model_validate(self.meta["spec"])
        self.config = DataConfig.model_validate(self.meta["config"])
        self.cache_key: str = self.meta["key"]
        self.feature_names: list[str] = self.meta["feature_names"]
        self.sessions = [SessionInfo(**s) for s in self.meta["sessions"]]
        self.regime_thresholds = tuple(self.meta["regime_thresholds"])
        self.steps = read_parquet(self.artefact(STEPS_FILE))
        self.samples = read_parquet(self.artefact(SAMPLES_FILE))
        self._features: np.ndarray | None = None

    def artefact(self, name: str) -> Path:
        """The path of the folder's file ``name``, checked against its recorded size and
        sha256 (read once per process) before it is used."""
        path = self.folder / name
        if name in self.checksums:
            why = check_file(path, self.checksums[name])
            if why is not None:
                raise CorruptArtefactError(why, file=path)
        return path

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def instrument(self):
        return self.spec.instrument

    def events(self, session_id: int) -> np.ndarray:
        path = self.artefact(events_file(session_id))
        with reading(path), np.load(path) as z:
            return z["data"]

    def scaled_features(self) -> np.ndarray:
        """(n_steps, F) float32 features of every session, back to back in ``steps`` order,
        scaled with training statistics; read once and shared by every window view."""
        if self._features is None:
            raw = read_parquet(self.artefact(FEATURES_FILE)).to_numpy().astype(np.float64)
            scaled = (raw - np.asarray(self.meta["scaler_mean"])) / np.asarray(self.meta["scaler_std"])
            self._features = scaled.astype(np.float32)
        return self._features

    def split_samples(self, split: str | None = None) -> pl.DataFrame:
        if split is None:
            return self.samples
        if split not in SPLIT_IDS:
            raise InputError("unknown split", field="split", expected="train, validation or test", got=split)
        return self.samples.filter(pl.col("split") == split)

    def windows(self, split: str | None = None) -> Windows:
        """(N, W, F) float32 input windows ending at each sample's step, as a view over the
        shared feature array (see :class:`cmm.data.windows.Windows`)."""
        W = self.config.features.window
        s = self.split_samples(split)
        offsets = np.zeros(max(x.id for x in self.sessions) + 1, np.int64)
        first = 0
        for x in self.sessions:  # steps.parquet holds the sessions back to back in this order
            offsets[x.id] = first
            first += x.n_steps
        starts = offsets[s["session"].to_numpy()] + s["step"].to_numpy().astype(np.int64) - W + 1
        return Windows(self.scaled_features(), starts, W)

    def targets(self, split: str | None = None) -> np.ndarray:
        s = self.split_samples(split)
        return s.select("y_mid", "y_spread", "y_volume").to_numpy().astype(np.float32)

    def regimes(self, split: str | None = None) -> np.ndarray:
        return self.split_samples(split)["regime"].to_numpy().astype(np.int8)

    def __repr__(self) -> str:
        c = self.meta["split_counts"]
        return (f"PreparedDataset({self.name!r}, sessions={len(self.sessions)}, "
                f"train={c['train']}, validation={c['validation']}, test={c['test']})")
