"""Download a dataset's raw files from their source URLs, with sha256 verification.

Each file is streamed into a temporary file beside its target and renamed only after its
checksum matches, so an interrupted or corrupted download never leaves a file behind.
"""

from __future__ import annotations

import hashlib
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from cmm.data.spec import load_dataset_spec
from cmm.errors import CmmError, InputError
from cmm.io import atomic_path, default_data_dir, sha256_file


def fetch_dataset(name_or_path: str, data_dir: str | Path | None = None, force: bool = False,
                  timeout: float = 60.0) -> Iterator[tuple[Path, str]]:
    """Yield ``(path, status)`` per source file: 'present' (checksum already matches) or
    'fetched'. Raises CmmError on a network failure or a checksum mismatch."""
    spec = load_dataset_spec(name_or_path, data_dir=data_dir)
    base = Path(data_dir) if data_dir is not None else Path(spec.base_dir or default_data_dir())
    sources = spec.sources
    if not sources:
        raise InputError(f"dataset '{spec.name}' lists no sources to fetch", field="sources")
    for source in sources:
        target = Path(source.path) if Path(source.path).is_absolute() else base / source.path
        if (not force and target.is_file()
                and (source.sha256 is None or sha256_file(target) == source.sha256)):
            yield target, "present"
            continue
        if source.url is None:
            raise InputError("no URL to fetch from", field="sources.url", file=source.path)
        _download(source.url, target, source.sha256, timeout)
        yield target, "fetched"


def _download(url: str, target: Path, sha256: str | None, timeout: float) -> None:
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp, atomic_path(target) as tmp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with open(tmp, "wb") as out, Progress(TextColumn(target.name), BarColumn(),
                                                   DownloadColumn(), TransferSpeedColumn(),
                                                   transient=True) as bar:
                task = bar.add_task("download", total=total)
                while chunk := resp.read(1 << 16):
                    out.write(chunk)
                    digest.update(chunk)
                    bar.advance(task, len(chunk))
            if sha256 is not None and digest.hexdigest() != sha256:
                raise InputError("checksum mismatch after download; file discarded", file=target,
                                 field="sha256", expected=sha256, got=digest.hexdigest())
    except OSError as exc:  # URLError, HTTPError, timeouts
        raise CmmError(f"{url}: download failed ({exc}); nothing was written to {target}") from None
