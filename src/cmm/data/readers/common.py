"""What several readers share: numbers and prices read from text fields, the clock of a text
capture, and the closing numbers of a :class:`~cmm.data.events.ReadReport`.

Every error is an :class:`~cmm.errors.InputError` naming the file, the line and the field.
"""

from __future__ import annotations

import math

import numpy as np

from cmm.data.events import ReadReport
from cmm.errors import InputError

__all__ = ["price_ticks", "parse_number", "LineClock", "finish_report"]


def price_ticks(value: float, tick: float, *, file, line, field: str) -> int:
    """A positive finite price as integer ticks; prices off the tick grid are an error."""
    if not (isinstance(value, float) and math.isfinite(value)) or value <= 0:
        raise InputError("invalid price", file=file, line=line, field=field,
                         expected="a finite price > 0", got=value)
    ticks = round(value / tick)
    if ticks <= 0 or abs(value / tick - ticks) > 1e-6 * max(1.0, abs(ticks)) + 1e-6:
        raise InputError("price is not a multiple of the instrument's tick_size", file=file,
                         line=line, field=field, expected=f"a multiple of {tick}", got=value)
    return ticks


def parse_number(text, *, file, line, field: str) -> float:
    """A finite number written as text (or given as a JSON number)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise InputError("not a number", file=file, line=line, field=field, got=text) from None
    if not math.isfinite(value):
        raise InputError("not a finite number", file=file, line=line, field=field, got=text)
    return value


class LineClock:
    """The epoch-millisecond timestamps of a text capture, line by line: one that goes
    backwards is refused (naming the line that set the last one); first and last are kept."""

    def __init__(self, path) -> None:
        self.path = path
        self.first: int | None = None
        self.last: int | None = None
        self.last_line = 0

    def advance(self, ms: int, lineno: int) -> None:
        if self.last is not None and ms < self.last:
            raise InputError(f"timestamp goes backwards (line {self.last_line} has {self.last})",
                             file=self.path, line=lineno, field="timestamp",
                             expected=f">= {self.last}", got=ms)
        self.last, self.last_line = ms, lineno
        if self.first is None:
            self.first = ms

    @property
    def first_ns(self) -> int | None:
        return None if self.first is None else self.first * 1_000_000

    @property
    def last_ns(self) -> int | None:
        return None if self.last is None else self.last * 1_000_000


def finish_report(report: ReadReport, events: np.ndarray, first_ts: int | None,
                  last_ts: int | None) -> None:
    """Set the report's event count and first / last local times: those of the events, or
    ``first_ts`` / ``last_ts`` (the file's own times) when there are none."""
    report.events = len(events)
    if len(events):
        report.first_local_ts = int(events["local_ts"][0])
        report.last_local_ts = int(events["local_ts"][-1])
    else:
        report.first_local_ts, report.last_local_ts = first_ts, last_ts
