"""Readers: one per source format, each turning one raw file into raw canonical events.

A reader is a function ``read(path, instrument) -> (events, ReadReport)`` registered under its
format name with :func:`register_reader`. Events are hftbacktest ``event_dtype`` rows in file
order with nanosecond timestamps; :func:`cmm.data.events.finalize_events` orders them later.
Errors are :class:`cmm.errors.InputError` naming the file, the line or record and the field.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from cmm.config import Instrument
from cmm.data.events import ReadReport
from cmm.errors import UnknownNameError

Reader = Callable[[Path, Instrument], tuple[np.ndarray, ReadReport]]

_READERS: dict[str, Reader] = {}


def register_reader(name: str) -> Callable[[Reader], Reader]:
    def decorate(fn: Reader) -> Reader:
        _READERS[name] = fn
        return fn

    return decorate


def get_reader(name: str) -> Reader:
    _load_builtin_readers()
    if name not in _READERS:
        raise UnknownNameError("data format", name, list(_READERS))
    return _READERS[name]


def reader_names() -> list[str]:
    _load_builtin_readers()
    return sorted(_READERS)


def _load_builtin_readers() -> None:
    # Imported lazily so that a broken optional reader never blocks the others.
    from cmm.data.readers import binance, bitstamp, lobster, npz, ordercsv  # noqa: F401
