"""Errors a user can act on: each names where (file, line or record, field), what was expected
and what was found. The CLI prints them as one line and exits with status 2."""

from __future__ import annotations

import errno
import os
import re
from pathlib import Path


class CmmError(Exception):
    """Base class of errors that the CLI reports as one line, without a traceback."""


class StaleArtefactError(CmmError):
    """An artefact was made from other data or settings than the ones asked for."""


class InputError(CmmError):
    """Bad input data or configuration, located as precisely as the source allows."""

    def __init__(
        self,
        message: str,
        *,
        file: str | Path | None = None,
        line: int | None = None,
        record: int | None = None,
        field: str | None = None,
        expected: str | None = None,
        got: object | None = None,
    ) -> None:
        self.file = str(file) if file is not None else None
        self.line = line
        self.record = record
        self.field = field
        self.expected = expected
        self.got = got
        self.reason = message
        super().__init__(self._render())

    def _render(self) -> str:
        where = []
        if self.file is not None:
            where.append(self.file + (f":{self.line}" if self.line is not None else ""))
        elif self.line is not None:
            where.append(f"line {self.line}")
        if self.record is not None:
            where.append(f"record {self.record}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        text = (", ".join(where) + ": " if where else "") + self.reason
        if self.expected is not None:
            text += f"; expected {self.expected}"
        if self.got is not None:
            got = repr(self.got)
            text += f", got {got[:80] + '...' if len(got) > 80 else got}"
        return text


class UnknownNameError(CmmError):
    """A name looked up in a registry that does not hold it; lists the valid names."""

    def __init__(self, kind: str, name: str, valid: list[str]) -> None:
        super().__init__(f"unknown {kind} '{name}'; valid: {', '.join(sorted(valid))}")


class CorruptArtefactError(InputError):
    """A file that this project wrote is truncated, overwritten or unreadable: its size or
    sha256 differs from the ones recorded when it was written, or it cannot be parsed."""


# --- OS errors -------------------------------------------------------------------------------

# Where the CLI asks for a report of an internal error (a traceback that is a bug of cmm).
ISSUE_TRACKER = "the cmm issue tracker (with the command, its output and `git rev-parse HEAD`)"

_OS_ERROR_TEXT = re.compile(r"\(os error (\d+)\)")
_HINTS = {errno.ENOSPC: "free some space or write elsewhere (--root, CMM_CACHE_DIR)",
          errno.EDQUOT: "the disk quota is used up: free some space or write elsewhere",
          errno.EROFS: "write elsewhere (--root, CMM_CACHE_DIR)",
          errno.EACCES: "check the permissions or write elsewhere (--root, CMM_CACHE_DIR)",
          errno.EPERM: "check the permissions or write elsewhere (--root, CMM_CACHE_DIR)"}


def os_error(exc: BaseException, path: str | Path | None = None) -> OSError | None:
    """``exc`` as an OSError with an errno, with ``path`` as its file when it names none; None
    when it is no OS error. Libraries doing their I/O in Rust (safetensors, polars) report a
    failed write or read as their own exception whose text says ``(os error N)``: those become
    ``OSError(N, ...)``."""
    if isinstance(exc, CmmError):
        return None
    code = exc.errno if isinstance(exc, OSError) else None
    if code is None:
        m = _OS_ERROR_TEXT.search(str(exc))
        if m is None or int(m.group(1)) not in errno.errorcode:
            return None
        code = int(m.group(1))
        exc = OSError(code, os.strerror(code))
    if exc.filename is None and path is not None:
        exc.filename = str(path)
    return exc


def describe_os_error(exc: OSError) -> str:
    """One line: the path(s), what the OS said, the errno's name (``ENOSPC``) and what to do."""
    code = exc.errno
    name = errno.errorcode.get(code, f"errno {code}") if code is not None else "no errno"
    text = exc.strerror or (os.strerror(code) if code is not None else str(exc)) or "OS error"
    where = ""
    if exc.filename is not None:
        where = str(exc.filename)
        if getattr(exc, "filename2", None) is not None:
            where += f" -> {exc.filename2}"
        where += ": "
    hint = _HINTS.get(code)
    return f"{where}{text[:1].lower() + text[1:]} ({name})" + (f"; {hint}" if hint else "")
