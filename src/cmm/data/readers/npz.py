"""hftbacktest ``.npz`` (or ``.npy``) event files.

The array is ``np.load(path)["data"]``, or the file's only array; it must be one-dimensional with
hftbacktest's ``event_dtype`` fields (``ev, exch_ts, local_ts, px, qty, order_id, ival, fval``;
another layout of the same fields is converted). Timestamps are taken as nanoseconds.

Flags: files written by hftbacktest are already *finalized*: ``correct_event_order`` has split
rows whose exchange and local orders differ into an exchange copy (``EXCH_EVENT``) and a local
copy (``LOCAL_EVENT``), and flagged the rest with both. Feeding that to
:func:`cmm.data.events.finalize_events` again is wrong: rows already split would be split again
(hftbacktest's validation then fails with "exchange events are out of order", or, where it does
not, events would be doubled). So when any row carries these flags the reader returns the local
view: rows with ``LOCAL_EVENT`` (local copies and shared rows), in file order, which is local
timestamp order, with both flags cleared. Exchange-only copies are dropped
(``repairs["exchange_copies_dropped"]``), as are rows with neither flag, which hftbacktest never
processes (``repairs["unflagged_dropped"]``). ``finalize_events`` then rebuilds exactly the same
exchange and local views (the tests check the round trip). Files without flags are raw events and
are returned as they are.

Event kinds: depth, trade, depth clear and depth snapshot are kept; best-bid/offer events
(``DEPTH_BBO_EVENT``) are dropped with a report warning (the full depth carries them); other
kinds (order-by-order L3 events) are an error.
"""

from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from cmm.config import Instrument, NoReaderOptions
from cmm.data.events import (
    DEPTH_CLEAR_EVENT,
    DEPTH_EVENT,
    DEPTH_SNAPSHOT_EVENT,
    EVENT_TYPE_MASK,
    EXCH_EVENT,
    EXCH_LOCAL_FLAGS,
    LOCAL_EVENT,
    TRADE_EVENT,
    ReadReport,
    check_raw_events,
    event_dtype,
)
from cmm.data.readers import register_reader
from cmm.data.readers.compressed import read_bytes
from cmm.errors import InputError

__all__ = ["read_hftbacktest_npz", "load_event_array"]

DEPTH_BBO_EVENT = 5
KIND_NAMES = {DEPTH_EVENT: "depth", TRADE_EVENT: "trade", DEPTH_CLEAR_EVENT: "depth_clear",
              DEPTH_SNAPSHOT_EVENT: "depth_snapshot"}


def load_event_array(path: Path) -> np.ndarray:
    """The event array stored in ``path`` (``.npz`` key ``data`` or its only array, or
    ``.npy``), converted to ``event_dtype``; errors name the file and the field."""
    raw = read_bytes(path)
    try:
        loaded = np.load(io.BytesIO(raw), allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise InputError(f"not a readable .npz/.npy file ({exc})", file=path) from None
    if isinstance(loaded, np.lib.npyio.NpzFile):
        with loaded:
            keys = list(loaded.files)
            if "data" in keys:
                key = "data"
            elif len(keys) == 1:
                key = keys[0]
            else:
                raise InputError("cannot tell which array holds the events", file=path,
                                 field="data", expected="an array named 'data' or a single "
                                 "array", got=keys)
            try:
                arr = loaded[key]
            except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
                raise InputError(f"array '{key}' is unreadable ({exc})", file=path,
                                 field=key) from None
    else:
        arr = loaded
    if arr.dtype.names is None:
        raise InputError("array is not an hftbacktest event array", file=path, field="dtype",
                         expected=f"a structured array with fields {', '.join(event_dtype.names)}",
                         got=f"{arr.dtype} with shape {arr.shape}")
    missing = [n for n in event_dtype.names if n not in arr.dtype.names]
    if missing:
        raise InputError("array lacks hftbacktest event fields", file=path, field=missing[0],
                         expected=", ".join(event_dtype.names), got=", ".join(arr.dtype.names))
    if arr.ndim != 1:
        raise InputError("event array is not one-dimensional", file=path, field="shape",
                         expected="shape (n,)", got=arr.shape)
    if arr.dtype == event_dtype:
        return np.ascontiguousarray(arr)
    out = np.zeros(len(arr), event_dtype)
    for name in event_dtype.names:
        try:
            out[name] = arr[name]
        except (TypeError, ValueError) as exc:
            raise InputError(f"field cannot be converted ({exc})", file=path, field=name,
                             expected=str(event_dtype[name]), got=str(arr.dtype[name])) from None
    return out


@register_reader("hftbacktest-npz")
def read_hftbacktest_npz(path: Path, instrument: Instrument,
                         options: NoReaderOptions = NoReaderOptions()) -> tuple[np.ndarray, ReadReport]:
    """Read an hftbacktest event file as raw events; see the module docstring."""
    path = Path(path)
    arr = load_event_array(path)
    report = ReadReport(file=str(path), format="hftbacktest-npz", timestamp_unit="ns",
                        lines=len(arr))
    flags = arr["ev"] & EXCH_LOCAL_FLAGS
    if (flags != 0).any():
        local = (flags & np.uint64(LOCAL_EVENT)) != 0
        exch_only = flags == np.uint64(EXCH_EVENT)
        neither = flags == 0
        if exch_only.any():
            report.repair("exchange_copies_dropped", int(exch_only.sum()))
        if neither.any():
            report.repair("unflagged_dropped", int(neither.sum()))
        local_only = int((flags == np.uint64(LOCAL_EVENT)).sum())
        if local_only != int(exch_only.sum()):
            report.warnings.append(
                f"{int(exch_only.sum())} exchange-only rows but {local_only} local-only rows: "
                "not a file written by correct_event_order; the local view was kept")
        arr = arr[local].copy()
        arr["ev"] &= ~EXCH_LOCAL_FLAGS
        report.warnings.append("finalized hftbacktest events: flags cleared, local view kept")
    kind = arr["ev"] & np.uint64(EVENT_TYPE_MASK)
    bbo = kind == DEPTH_BBO_EVENT
    if bbo.any():
        report.warnings.append(f"{int(bbo.sum())} best-bid/offer events dropped")
        arr, kind = arr[~bbo], kind[~bbo]
    known = np.isin(kind, list(KIND_NAMES))
    if not known.all():
        i = int(np.argmax(~known))
        raise InputError("unsupported event kind", file=path, record=i, field="ev",
                         expected="depth (1), trade (2), depth clear (3) or depth snapshot (4)",
                         got=int(kind[i]))
    for k, name in KIND_NAMES.items():
        n = int((kind == k).sum())
        if n:
            report.count(name, n)
    report.has_snapshot = bool((kind == DEPTH_SNAPSHOT_EVENT).any())
    check_raw_events(arr, path, instrument)
    report.events = len(arr)
    if len(arr):
        report.first_local_ts = int(arr["local_ts"][0])
        report.last_local_ts = int(arr["local_ts"][-1])
    return arr, report
