"""Where files live, and how they are written: atomically, and cached by content hash."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import os
import re
import socket
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cmm.errors import CmmError, InputError, StaleArtefactError
from cmm.procs import pid_alive

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


# A stage's own checkpoints inside its folder (the teacher fit's): the stage runner keeps this
# subfolder when it redoes an unfinished stage; the stage checks them and removes them when done.
RESUME_DIR = "resume"


@contextlib.contextmanager
def atomic_path(target: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; on success rename it over ``target``.

    On any exception the temporary file is removed, so a reader never sees half a file.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(target.parent, target.name)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=_tmp_suffix(),
                               dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp makes the file private (0600); give it the mode a plain open() would
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    except Exception as exc:
        _raise_located(exc, target)
        raise
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
    remove_stale_temporaries(target.parent, target.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=_tmp_suffix(),
                                dir=target.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes it private (0700), as mkdir would not
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except Exception as exc:
        _raise_located(exc, target)
        raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _raise_located(exc: Exception, target: Path) -> None:
    """An OS error while writing ``target`` (disk full, read-only): name ``target`` when the
    error names no file (``np.savez``, ``write_text``), and raise the OSError hidden in
    safetensors' and polars' own exceptions (``... (os error 28)``) as one."""
    from cmm.errors import os_error

    located = os_error(exc, target)
    if located is not None and located is not exc:
        raise located from exc


# ------------------------------------------------------- temporaries and locks between processes
#
# A temporary of atomic_path / atomic_dir is named ``.<target>.<random>.<pid>@<host>.tmp``: the
# process that writes it. One whose process is gone (killed before it could clean up) is removed
# by remove_stale_temporaries, which writers call on the folder they write to.

_TMP_OWNER = re.compile(r"^\..+\.(\d+)@([A-Za-z0-9_-]*)\.tmp$")


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname())


def owner_tag(pid: int | None = None) -> str:
    """``<pid>@<host>``: how a temporary's name says which process owns it."""
    return f"{os.getpid() if pid is None else pid}@{_host()}"


def _tmp_suffix() -> str:
    return f".{owner_tag()}.tmp"


def remove_stale_temporaries(folder: str | Path, target: str | None = None) -> list[Path]:
    """Remove the temporaries in ``folder`` (of ``target`` only, when given) whose owning
    process is not alive on this machine; returns what was removed. Only ``folder`` itself is
    listed; temporaries of other machines and unnamed (older) ones are left alone."""
    import shutil

    folder = Path(folder)
    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    prefix = f".{target}." if target is not None else "."
    host = _host()
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        m = _TMP_OWNER.match(entry.name)
        if m is None or m.group(2) != host or pid_alive(int(m.group(1))):
            continue
        path = Path(entry.path)
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    return removed


@contextlib.contextmanager
def file_lock(path: str | Path, wait: bool, what: str) -> Iterator[None]:
    """Hold an exclusive lock on the file ``path`` for the ``with`` block.

    ``fcntl.flock``: the OS releases it when the holder exits, however it dies, so a lock is
    never stale. The holder's pid is written into the file for the message others get: with
    ``wait``, "waiting for <what> (pid N) to finish" on stderr, then block until it is free;
    without, raise :class:`CmmError` naming ``what`` and the pid. The holder removes the file
    before it lets go, and a taker checks that the file it locked is still the one at ``path``
    (else it takes the new one), so no lock file is left behind. Where ``fcntl`` is missing
    (Windows): no lock.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    told = False
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _lock_holder(fd)
                if not wait:
                    raise CmmError(f"{what} is in use by another process (pid {holder}); wait "
                                   f"for it to finish, or stop it (lock: {path})") from None
                if not told:
                    print(f"waiting for {what} (pid {holder}) to finish", file=sys.stderr,
                          flush=True)
                    told = True
                fcntl.flock(fd, fcntl.LOCK_EX)
            mine = os.fstat(fd)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                now = None
        except BaseException:
            os.close(fd)
            raise
        if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
            break
        os.close(fd)  # the holder before us removed this file on its way out: take the new one
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)  # releases the lock


def _lock_holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text if text.isdigit() else "unknown"


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
    with reading(meta_path):
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


# --------------------------------------------------------------- checksums of written artefacts
#
# What a stage (stage.json) or the data cache (meta.json) records of each file it wrote: its size
# and sha256. Checking a file costs a stat (size) and, once per process while the file is
# unchanged (same inode, size, mtime and ctime), a read of the whole file (sha256).

_SHA256_SEEN: dict[tuple[int, int, int, int, int], str] = {}


def file_sha256(path: str | Path) -> str:
    """:func:`sha256_file`, read once per process while the file is unchanged."""
    st = os.stat(path)
    sig = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
    digest = _SHA256_SEEN.get(sig)
    if digest is None:
        digest = _SHA256_SEEN[sig] = sha256_file(path)
    return digest


def folder_checksums(folder: str | Path, exclude: tuple[str, ...] = ()) -> dict[str, dict]:
    """``{relative path: {"size", "sha256"}}`` of every file under ``folder`` (recursively),
    except the top-level names in ``exclude`` and temporaries (``.*.tmp``)."""
    folder = Path(folder)
    out: dict[str, dict] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel in exclude or (path.name.startswith(".") and path.name.endswith(".tmp")):
            continue
        out[rel] = {"size": path.stat().st_size, "sha256": file_sha256(path)}
    return out


def check_file(path: str | Path, recorded: dict, checksum: bool = True) -> str | None:
    """Why ``path`` is not the file ``recorded`` (``{"size", "sha256"}``); None when it is."""
    path = Path(path)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing"
    if size != recorded.get("size"):
        return f"{size} bytes where {recorded.get('size')} were written (truncated or replaced)"
    if checksum and recorded.get("sha256") and file_sha256(path) != recorded["sha256"]:
        return "sha256 differs from the one recorded when it was written (overwritten)"
    return None


def check_folder(folder: str | Path, recorded: dict[str, dict], checksum: bool = True
                 ) -> tuple[Path, str] | None:
    """The first file of ``recorded`` (see :func:`folder_checksums`) that differs, and why:
    every size first (cheap), then the checksums; None when all match."""
    folder = Path(folder)
    for with_sha in ((False, True) if checksum else (False,)):
        for rel, rec in recorded.items():
            why = check_file(folder / rel, rec, with_sha)
            if why is not None:
                return folder / rel, why
    return None


@contextlib.contextmanager
def reading(path: str | Path) -> Iterator[None]:
    """Wrap the read of one artefact file: any failure to parse it (truncated parquet,
    safetensors, npz...) becomes one :class:`CorruptArtefactError` naming the file."""
    from cmm.errors import CorruptArtefactError

    try:
        yield
    except (CmmError, MemoryError):
        raise
    except FileNotFoundError as exc:
        raise InputError("file not found", file=path) from exc
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise CorruptArtefactError(f"cannot read it ({type(exc).__name__}: {first}); it is "
                                   "truncated or corrupt: delete it, or the folder of the stage "
                                   "that wrote it, and run again", file=path) from exc


def read_json(path: str | Path) -> Any:
    """A JSON artefact, with a one-line :class:`CorruptArtefactError` on a truncated file."""
    path = Path(path)
    with reading(path):
        return json.loads(path.read_text())


def read_parquet(path: str | Path, **kwargs):
    """``polars.read_parquet`` with a one-line :class:`CorruptArtefactError` on a bad file."""
    import polars as pl

    with reading(path):
        return pl.read_parquet(path, **kwargs)


def load_safetensors(path: str | Path, framework: str = "np") -> dict:
    """The tensors of a safetensors file (``framework`` "np" or "pt"), with a one-line
    :class:`CorruptArtefactError` on a truncated or unreadable file."""
    with reading(path):
        if framework == "pt":
            from safetensors.torch import load_file
        else:
            from safetensors.numpy import load_file
        return load_file(str(path))
