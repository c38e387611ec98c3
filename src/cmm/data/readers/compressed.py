"""Open plain, gzip, bzip2 or xz files by their magic bytes, turning truncation into an InputError."""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
import zlib
from pathlib import Path

from cmm.errors import InputError


def read_bytes(path: Path) -> bytes:
    """The whole decompressed content of ``path``; truncated or corrupt archives and empty
    files raise InputError naming the file."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", file=path)
    raw = path.read_bytes()
    if not raw:
        raise InputError("empty file", file=path, expected="at least one record")
    try:
        if raw[:2] == b"\x1f\x8b":
            data = gzip.decompress(raw)
        elif raw[:6] == b"\xfd7zXZ\x00":
            data = lzma.decompress(raw)
        elif raw[:3] == b"BZh":
            data = bz2.decompress(raw)
        else:
            data = raw
    except (EOFError, OSError, lzma.LZMAError, zlib.error) as exc:
        raise InputError(f"truncated or corrupt compressed file ({exc})", file=path) from None
    if not re.search(rb"\S", data):  # (data.strip() would copy a whole day's bytes)
        raise InputError("empty file (no records after decompression)", file=path,
                         expected="at least one record")
    return data
