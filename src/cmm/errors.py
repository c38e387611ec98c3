"""Errors a user can act on: each names where (file, line or record, field), what was expected
and what was found. The CLI prints them as one line and exits with status 2."""

from __future__ import annotations

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
