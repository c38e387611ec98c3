"""Canonical events: hftbacktest's ``event_dtype`` arrays.

Readers produce *raw* events (type and side flags, exchange and local timestamps in ns, price,
quantity) in file order. :func:`finalize_events` then applies hftbacktest's own latency and
ordering corrections, which add the ``EXCH_EVENT`` / ``LOCAL_EVENT`` flags, so the same array
feeds both the grid and the backtest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from hftbacktest.data.validation import (
    correct_event_order,
    correct_local_timestamp,
    validate_event_order,
)
from hftbacktest.types import (
    BUY_EVENT,
    DEPTH_CLEAR_EVENT,
    DEPTH_EVENT,
    DEPTH_SNAPSHOT_EVENT,
    EXCH_EVENT,
    LOCAL_EVENT,
    SELL_EVENT,
    TRADE_EVENT,
    event_dtype,
)

from cmm.errors import InputError

__all__ = [
    "BUY_EVENT", "SELL_EVENT", "DEPTH_EVENT", "TRADE_EVENT", "DEPTH_CLEAR_EVENT",
    "DEPTH_SNAPSHOT_EVENT", "EXCH_EVENT", "LOCAL_EVENT", "event_dtype", "EVENT_TYPE_MASK",
    "ReadReport", "finalize_events", "check_raw_events", "range_checks", "quietly",
    "MAX_PRICE_TICKS", "MAX_SIZE_LOTS", "SIDE_FLAG", "EXCH_LOCAL_FLAGS",
]

EVENT_TYPE_MASK = 0xFF  # low byte of `ev` holds the event kind; high bits are flags
# hftbacktest's flag of each book side, indexed by cmm.vocabulary.BID and .ASK (0 and 1)
SIDE_FLAG = (BUY_EVENT, SELL_EVENT)
# the two flags finalize_events sets (exchange-side and local-side view of an event)
EXCH_LOCAL_FLAGS = np.uint64(EXCH_EVENT | LOCAL_EVENT)


@dataclass
class ReadReport:
    """What a reader saw in one file: counts, sequence gaps and repairs, for the user to audit."""

    file: str
    format: str
    lines: int = 0
    events: int = 0
    messages: dict[str, int] = field(default_factory=dict)
    gaps: list[dict] = field(default_factory=list)  # {"line", "expected", "got"}
    repairs: dict[str, int] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    has_snapshot: bool = False
    first_local_ts: int | None = None
    last_local_ts: int | None = None
    timestamp_unit: str | None = None  # as detected in the file ("us", "ns", "ms", "s")

    def count(self, kind: str, n: int = 1) -> None:
        self.messages[kind] = self.messages.get(kind, 0) + n

    def repair(self, kind: str, n: int = 1) -> None:
        self.repairs[kind] = self.repairs.get(kind, 0) + n

    def to_dict(self) -> dict:
        return {
            "file": self.file, "format": self.format, "lines": self.lines, "events": self.events,
            "messages": dict(self.messages), "gaps": list(self.gaps[:100]),
            "gap_count": len(self.gaps), "repairs": dict(self.repairs),
            "warnings": list(self.warnings), "has_snapshot": self.has_snapshot,
            "first_local_ts": self.first_local_ts, "last_local_ts": self.last_local_ts,
            "timestamp_unit": self.timestamp_unit,
        }


class quietly:
    """hftbacktest's converters print progress to stdout; keep our CLI output clean."""

    def __enter__(self):
        import contextlib
        import io

        self._ctx = contextlib.redirect_stdout(io.StringIO())
        return self._ctx.__enter__()

    def __exit__(self, *exc):
        return self._ctx.__exit__(*exc)


# Largest plausible magnitudes, in the instrument's units. hftbacktest keeps prices as int64
# tick indices and walks its book tick by tick between levels (a best level deleted: the next one
# is searched one tick at a time), so a price of 1e19 (1e20 ticks, past int64) makes the replay
# spin forever and one of 1e9 ticks takes a minute per search. 2**31 ticks (int32) is over 100
# times the largest price in ticks of the real captures (spot BTCUSDT asks at 200000 on a 0.01
# tick: 2e7). Sizes must stay exact whole numbers of lots in float64 (the volume targets count
# lots): below 2**53 lots (the real captures: under 1e11).
MAX_PRICE_TICKS = 2**31
MAX_SIZE_LOTS = 2**53


def range_checks(events: np.ndarray, instrument=None) -> list[tuple[np.ndarray, str, str]]:
    """``(bad rows, field, expected)`` for prices and sizes too large for the instrument's tick
    and lot (:data:`MAX_PRICE_TICKS`, :data:`MAX_SIZE_LOTS`); none without an instrument."""
    if instrument is None or len(events) == 0:
        return []
    kind = events["ev"] & EVENT_TYPE_MASK
    priced = (kind == DEPTH_EVENT) | (kind == TRADE_EVENT) | (kind == DEPTH_SNAPSHOT_EVENT)
    tick, lot = float(instrument.tick_size), float(instrument.lot_size)
    max_px, max_qty = MAX_PRICE_TICKS * tick, MAX_SIZE_LOTS * lot
    with np.errstate(invalid="ignore"):
        return [
            (priced & ~(events["px"] < max_px), "px",
             f"a price < {max_px:.10g} (2**31 ticks of {tick:g}; else check "
             "instrument.tick_size)"),
            (priced & ~(events["qty"] < max_qty), "qty",
             f"a size < {max_qty:.10g} (2**53 lots of {lot:g}; else check "
             "instrument.lot_size)"),
        ]


def check_raw_events(events: np.ndarray, file: str | Path, instrument=None) -> None:
    """Reject values no market can produce, naming the record: NaN or non-positive prices, NaN
    or negative quantities, trades of zero size, local timestamps going backwards and, given the
    ``instrument``, prices and sizes past what its tick and lot can hold (:func:`range_checks`).
    """
    if events.dtype != event_dtype:
        raise InputError("array is not an hftbacktest event array", file=file, field="dtype",
                         expected=str(event_dtype), got=str(events.dtype))
    if len(events) == 0:
        return
    kind = events["ev"] & EVENT_TYPE_MASK
    px, qty = events["px"], events["qty"]
    priced = (kind == DEPTH_EVENT) | (kind == TRADE_EVENT) | (kind == DEPTH_SNAPSHOT_EVENT)
    checks = [
        (priced & ~(px > 0), "px", "a finite price > 0"),
        (priced & ~(qty >= 0), "qty", "a finite quantity >= 0"),
        ((kind == TRADE_EVENT) & ~(qty > 0), "qty", "a trade quantity > 0"),
        (~np.isfinite(px) & priced, "px", "a finite price"),
        (~np.isfinite(qty) & priced, "qty", "a finite quantity"),
    ]
    for bad, name, expected in checks + range_checks(events, instrument):
        if bad.any():
            i = int(np.argmax(bad))
            raise InputError("invalid value", file=file, record=i, field=name,
                             expected=expected, got=float(events[name][i]))
    back = np.diff(events["local_ts"]) < 0
    if back.any():
        i = int(np.argmax(back)) + 1
        raise InputError("timestamp goes backwards", file=file, record=i, field="local_ts",
                         expected=f">= {int(events['local_ts'][i - 1])}",
                         got=int(events["local_ts"][i]))


def finalize_events(raw: np.ndarray, base_latency_ns: int = 0) -> np.ndarray:
    """Apply hftbacktest's corrections: non-negative feed latency, then events duplicated and
    ordered so that exchange-side and local-side views are each monotone; flags EXCH/LOCAL set.
    """
    if len(raw) == 0:
        return raw.copy()
    data = raw.copy()
    with quietly():
        data = correct_local_timestamp(data, base_latency_ns)
        data = correct_event_order(
            data,
            np.argsort(data["exch_ts"], kind="mergesort"),
            np.argsort(data["local_ts"], kind="mergesort"),
        )
        validate_event_order(data)
    return data
