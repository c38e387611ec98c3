"""Readers: one per source format, each turning one raw file into raw canonical events.

A reader is a function ``read(path, instrument, options) -> (events, ReadReport)`` registered
under its format name with :func:`register_reader`; ``options`` is the spec's ``reader:`` mapping
as the format's typed model. ``cmm.config.READER_FORMATS`` names both, per format: the one
table of formats. Events are hftbacktest ``event_dtype`` rows in file order with nanosecond
timestamps; :func:`cmm.data.events.finalize_events` orders them later.
Errors are :class:`cmm.errors.InputError` naming the file, the line or record and the field.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from cmm.config import READER_FORMATS, FrozenModel, Instrument
from cmm.data.events import ReadReport
from cmm.errors import UnknownNameError

Reader = Callable[[Path, Instrument, FrozenModel], tuple[np.ndarray, ReadReport]]

_READERS: dict[str, Reader] = {}
# Per format: the files a reader opens besides the one it is given (e.g. LOBSTER's order book
# beside its message file), so that a dataset's cache key hashes every byte it reads.
_COMPANIONS: dict[str, Callable[[Path], list[Path]]] = {}
_BUILTIN = {name: module for name, (module, _) in READER_FORMATS.items()}


def register_reader(name: str, companions: Callable[[Path], list[Path]] | None = None
                    ) -> Callable[[Reader], Reader]:
    def decorate(fn: Reader) -> Reader:
        _READERS[name] = fn
        if companions is not None:
            _COMPANIONS[name] = companions
        return fn

    return decorate


def companion_files(name: str, path: Path) -> list[Path]:
    """The files the ``name`` reader opens besides ``path`` itself."""
    get_reader(name)
    fn = _COMPANIONS.get(name)
    return fn(Path(path)) if fn else []


def get_reader(name: str) -> Reader:
    if name not in _READERS and name in _BUILTIN:
        # Imported on first use, so reading one format never pays for the others' imports.
        importlib.import_module(f"cmm.data.readers.{_BUILTIN[name]}")
    if name not in _READERS:
        raise UnknownNameError("data format", name, sorted(set(_READERS) | set(_BUILTIN)))
    return _READERS[name]


def reader_names() -> list[str]:
    return sorted(set(_READERS) | set(_BUILTIN))
