"""Raw files -> sessions of canonical events -> grid, features, targets, regimes, splits.

The result is a folder of plain artefacts, cached by a hash of the raw files' contents, the
dataset spec and the data settings, and written atomically (a half-built folder is never seen):

- ``events_<session>.npz``: finalized hftbacktest event arrays (key ``data``), one per session;
- ``steps.parquet``: one row per grid step (book levels, trade flow, mid, spread, sigma, valid);
- ``features.parquet``: unscaled per-step input features, aligned with ``steps``;
- ``samples.parquet``: one row per decision point (window end): split, regime, targets;
- ``meta.json``: settings, file hashes, sessions, reader reports, repairs, scaler, thresholds.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from cmm.config import DataConfig, GridConfig
from cmm.data import features as F
from cmm.data.events import (
    DEPTH_SNAPSHOT_EVENT,
    EVENT_TYPE_MASK,
    LOCAL_EVENT,
    TRADE_EVENT,
    finalize_events,
)
from cmm.data.grid import build_snapshots
from cmm.data.readers import companion_files, get_reader
from cmm.data.spec import DatasetSpec, load_dataset_spec
from cmm.data.windows import Windows
from cmm.errors import InputError
from cmm.io import atomic_dir, default_cache_dir, sha256_file, stable_hash, write_json

SCHEMA_VERSION = 2  # 2: volume target in lots
SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}


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
                       "files": [f["sha256"] for f in files], "companions": companions})
    return key, files


def prepare_dataset(name_or_spec: str | Path | DatasetSpec, config: DataConfig | None = None,
                    cache_dir: str | Path | None = None, progress: bool = True) -> PreparedDataset:
    """Build (or load from cache) the prepared artefacts of a dataset."""
    spec = name_or_spec if isinstance(name_or_spec, DatasetSpec) else load_dataset_spec(name_or_spec)
    config = _effective_config(spec, config)
    key, files = dataset_key(spec, config)
    root = Path(cache_dir) if cache_dir else default_cache_dir() / "prepared"
    folder = root / f"{spec.name}-{key}"
    if not (folder / "meta.json").is_file():
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


def build_session(events: np.ndarray, inst, config: DataConfig) -> SessionArrays | None:
    """Grid, features, sigma and targets of one session's finalized events (None when no step
    ever has a full, uncrossed book)."""
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
    feats = F.step_features(book, inst.tick_size, fcfg)
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
    grid, fcfg = config.grid, config.features
    inst = spec.instrument
    reader = get_reader(spec.format)
    reads = []
    with _progress() as bar:
        task = bar.add_task(f"reading {spec.name}", total=len(files), visible=progress)
        for f in files:
            events, report = reader(Path(f["path"]), inst, spec.reader_options)
            reads.append((Path(f["path"]), events, report))
            bar.advance(task)

    W, H, L = fcfg.window, fcfg.horizon, grid.levels
    step_tables, feature_tables, sample_parts, sessions, repairs = [], [], [], [], []
    global_offset = 0
    for sid, members in enumerate(_join_sessions(reads, int(config.reader.join_gap_s * 1e9))):
        raw = np.concatenate([reads[i][1] for i in members])
        for i in members:  # a full day's raw arrays are hundreds of MB: keep only the reports
            reads[i] = (reads[i][0], None, reads[i][2])
        events = finalize_events(raw, config.reader.base_latency_ns)
        del raw
        np.savez(out / f"events_{sid}.npz", data=events)
        arrays = build_session(events, inst, config)
        del events
        if arrays is None:
            repairs.append({"session": sid, "skipped": "no step with a full, uncrossed book"})
            continue
        n, ts, valid = arrays.n_steps, arrays.ts_ns, arrays.valid
        table = {"session": np.full(n, sid, np.int32), "step": np.arange(n, dtype=np.int32),
                 "ts_ns": ts, "valid": valid}
        for side in ("bid", "ask"):
            for lv in range(L):
                table[f"{side}_px_{lv}"] = arrays.book[f"{side}_px"][:, lv]
                table[f"{side}_sz_{lv}"] = arrays.book[f"{side}_sz"][:, lv]
        table.update(buy_vol=arrays.book["buy_vol"], sell_vol=arrays.book["sell_vol"],
                     trade_count=arrays.book["trade_count"], mid=arrays.mid,
                     spread_ticks=arrays.spread, sigma=arrays.sigma)
        step_tables.append(pl.DataFrame(table))
        feature_tables.append(pl.DataFrame(arrays.features.astype(np.float32), schema=F.feature_names(L)))

        t, y = arrays.sample_steps, arrays.targets
        sample_parts.append(pl.DataFrame({
            "session": np.full(len(t), sid, np.int32), "step": t.astype(np.int32),
            "global_step": (t + global_offset).astype(np.int64), "ts_ns": ts[t],
            "sigma": arrays.sigma[t], "y_mid": y[:, 0], "y_spread": y[:, 1], "y_volume": y[:, 2],
            "mid": arrays.mid[t],
        }))
        global_offset += n
        sessions.append({"id": sid, "files": [str(reads[i][0]) for i in members],
                         "start_ns": int(ts[0]), "end_ns": int(ts[-1]), "n_steps": n})
        repairs.append({"session": sid, **arrays.repairs})

    if not sample_parts or sum(len(p) for p in sample_parts) == 0:
        raise InputError(f"dataset '{spec.name}' yields no windows: sessions are shorter than "
                         f"window + horizon = {W + H} steps of {grid.dt_ms} ms")
    samples = pl.concat(sample_parts)
    purge = config.splits.purge if config.splits.purge is not None else H + W
    split = F.chronological_splits(samples["global_step"].to_numpy(), config.splits, purge)
    samples = samples.with_columns(pl.Series("split_id", split)).filter(pl.col("split_id") >= 0)
    names = np.array(["train", "validation", "test"])
    samples = samples.with_columns(pl.Series("split", names[samples["split_id"].to_numpy()]))
    train = samples.filter(pl.col("split") == "train")
    if len(train) == 0:
        raise InputError(f"dataset '{spec.name}' has no training windows after the purge gap")
    thresholds = F.regime_thresholds(train["sigma"].to_numpy())
    samples = samples.with_columns(
        pl.Series("regime", F.assign_regimes(samples["sigma"].to_numpy(), thresholds)))
    samples = samples.with_row_index("sample").with_columns(pl.col("sample").cast(pl.Int64))

    steps_df = pl.concat(step_tables)
    feats_df = pl.concat(feature_tables)
    # Scaler from the steps that training windows cover, and nothing later.
    last_train = train.group_by("session").agg(pl.col("step").max())
    mask = np.zeros(len(steps_df), bool)
    sess = steps_df["session"].to_numpy()
    step = steps_df["step"].to_numpy()
    for s, last in last_train.iter_rows():
        mask |= (sess == s) & (step <= last)
    fx = feats_df.to_numpy()[mask].astype(np.float64)
    mean, std = fx.mean(axis=0), fx.std(axis=0)
    std[std < 1e-12] = 1.0

    steps_df.write_parquet(out / "steps.parquet")
    feats_df.write_parquet(out / "features.parquet")
    samples.write_parquet(out / "samples.parquet")
    counts = {s: int((samples["split"] == s).sum()) for s in F.SPLITS}
    write_json(out / "meta.json", {
        "schema_version": SCHEMA_VERSION, "key": key, "name": spec.name,
        "spec": spec.model_dump(exclude={"base_dir"}), "config": config.model_dump(),
        "files": files, "sessions": sessions, "reports": [r[2].to_dict() for r in reads],
        "repairs": repairs, "purge_steps": purge, "split_counts": counts,
        "regime_thresholds": list(thresholds),
        "regime_counts": {s: np.bincount(samples.filter(pl.col("split") == s)["regime"].to_numpy(),
                                         minlength=3).tolist() for s in F.SPLITS},
        "feature_names": F.feature_names(L), "scaler_mean": mean.tolist(), "scaler_std": std.tolist(),
    })


class PreparedDataset:
    """Read-only view of a prepared dataset folder."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.meta = json.loads((self.folder / "meta.json").read_text())
        if self.meta.get("schema_version") != SCHEMA_VERSION:
            raise InputError("prepared dataset has another schema version; prepare it again",
                             file=self.folder / "meta.json", field="schema_version",
                             expected=str(SCHEMA_VERSION), got=self.meta.get("schema_version"))
        self.spec = DatasetSpec.model_validate(self.meta["spec"])
        self.config = DataConfig.model_validate(self.meta["config"])
        self.cache_key: str = self.meta["key"]
        self.feature_names: list[str] = self.meta["feature_names"]
        self.sessions = [SessionInfo(**s) for s in self.meta["sessions"]]
        self.regime_thresholds = tuple(self.meta["regime_thresholds"])
        self.steps = pl.read_parquet(self.folder / "steps.parquet")
        self.samples = pl.read_parquet(self.folder / "samples.parquet")
        self._features: np.ndarray | None = None

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def instrument(self):
        return self.spec.instrument

    def events(self, session_id: int) -> np.ndarray:
        with np.load(self.folder / f"events_{session_id}.npz") as z:
            return z["data"]

    def scaled_features(self) -> np.ndarray:
        """(n_steps, F) float32 features of every session, back to back in ``steps`` order,
        scaled with training statistics; read once and shared by every window view."""
        if self._features is None:
            raw = pl.read_parquet(self.folder / "features.parquet").to_numpy().astype(np.float64)
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
