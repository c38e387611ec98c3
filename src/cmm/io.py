"""Where files live, and how they are written: atomically, and cached by content hash."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cmm.errors import InputError, StaleArtefactError

PROJECT_ROOT_MARKER = "pyproject.toml"


def default_data_dir() -> Path:
    """The raw-data folder: ``CMM_DATA_DIR``, else ``../shared/data`` seen from the project root
    or the working directory when it exists, else a user cache folder."""
    env = os.environ.get("CMM_DATA_DIR")
    if env:
        return Path(env).expanduser().resolve()
    here = Path(__file__).resolve()
    candidates = [Path.cwd() / ".." / "shared" / "data"]
    for parent in here.parents:
        if (parent / PROJECT_ROOT_MARKER).exists():
            candidates.insert(0, parent / ".." / "shared" / "data")
            break
    for candidate in candidates:
        if candidate.is_dir():
            return candidate.resolve()
    return user_cache_dir() / "data"


def user_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cmm"


def default_cache_dir() -> Path:
    """Derived artefacts (prepared datasets, converted weights): ``CMM_CACHE_DIR`` or
    ``~/.cache/cmm``."""
    env = os.environ.get("CMM_CACHE_DIR")
    return Path(env).expanduser().resolve() if env else user_cache_dir()


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it over ``target``.

    On any exception the temporary file is removed, so a reader never sees half a file.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file private (0600); give it the mode a plain open() would
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@functools.cache
def _umask() -> int:
    # read once: os.umask can only be read by setting it, which races with other threads
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``target``; on success it replaces ``target`` whole."""
    import shutil

    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private (0700), as mkdir would not
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def read_artefact_meta(folder: str | Path, meta_file: str, tensor_file: str, *, kind: str,
                       schema_version: int, command: str) -> tuple[dict, Path]:
    """The JSON half of a saved ``<meta_file>`` + ``<tensor_file>`` artefact, checked: both
    files present (else InputError) and of this ``kind`` and schema (else StaleArtefactError);
    ``command`` is what makes the artefact. Returns the meta and the tensor file's path."""
    folder = Path(folder)
    meta_path, tensor_path = folder / meta_file, folder / tensor_file
    for path in (meta_path, tensor_path):
        if not path.is_file():
            raise InputError(f"no {kind} artefact here; run `{command}` first", file=path)
    meta = json.loads(meta_path.read_text())
    if meta.get("kind") != kind or meta.get("schema_version") != schema_version:
        raise StaleArtefactError(f"{meta_path}: {meta.get('kind')} schema "
                                 f"{meta.get('schema_version')}, expected {kind} schema "
                                 f"{schema_version}; run `{command}` again")
    return meta, tensor_path


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n")


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON-serialisable: {type(obj).__name__}")


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a JSON-able object, independent of key order: the cache key of an artefact."""
    text = json.dumps(obj, sort_keys=True, default=_json_default, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]
