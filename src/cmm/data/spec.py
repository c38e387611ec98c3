"""Dataset specifications: the built-in registry and users' own YAML files.

A dataset is a list of raw files of one format and one instrument. Files that continue each
other in time are joined into one session by the preparation step; windows never cross sessions.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, model_validator

from cmm.config import (
    READER_OPTIONS,
    DatasetFormat,
    FrozenModel,
    GridConfig,
    Instrument,
    read_yaml,
    validate_model,
)
from cmm.errors import UnknownNameError
from cmm.io import default_data_dir


class SourceFile(FrozenModel):
    """One raw file: where it lies (relative to the dataset's base folder), where it came from,
    and its sha256 so that a download or a local copy can be verified."""

    path: str
    url: str | None = None
    sha256: str | None = Field(None, pattern=r"^[0-9a-f]{64}$")


class DatasetSpec(FrozenModel):
    name: str = Field(min_length=1)
    format: DatasetFormat
    files: list[str] = Field(min_length=1)  # reader inputs, in any order
    instrument: Instrument
    grid: GridConfig | None = None  # None: the data config's grid
    description: str = ""
    sources: list[SourceFile] = []  # provenance and checksums (may list companion files)
    # Format-specific reader settings, checked against READER_OPTIONS[format] (cmm.config).
    reader: dict[str, Any] = {}
    # Folder that relative paths are resolved against; set by the loader, not by users.
    base_dir: str | None = None

    @model_validator(mode="after")
    def _unique_files(self) -> DatasetSpec:
        if len(set(self.files)) != len(self.files):
            raise ValueError("files must not repeat")
        return self

    def resolve(self, rel: str) -> Path:
        p = Path(rel).expanduser()
        if p.is_absolute():
            return p
        base = Path(self.base_dir) if self.base_dir else default_data_dir()
        return (base / p).resolve()

    def file_paths(self) -> list[Path]:
        return [self.resolve(f) for f in self.files]

    @property
    def reader_options(self) -> FrozenModel:
        """``reader:`` as its format's typed options (defaults filled in)."""
        return validate_model(READER_OPTIONS[self.format], self.reader, prefix=("reader",))


def _validated(data: Any, file: Path | None = None,
               lines: dict[tuple, int] | None = None) -> DatasetSpec:
    """A spec with its ``reader:`` options checked too, errors located in the YAML file."""
    spec = validate_model(DatasetSpec, data, file=file, lines=lines)
    validate_model(READER_OPTIONS[spec.format], spec.reader, file=file, lines=lines,
                   prefix=("reader",))
    return spec


def _registry_raw() -> dict:
    text = resources.files("cmm.data").joinpath("datasets.yaml").read_text()
    return yaml.safe_load(text)["datasets"]


def builtin_datasets() -> dict[str, DatasetSpec]:
    return {name: _validated({"name": name, **entry}) for name, entry in _registry_raw().items()}


def load_dataset_spec(name_or_path: str | Path, data_dir: str | Path | None = None) -> DatasetSpec:
    """A registry name (resolved in ``data_dir``, default :func:`default_data_dir`) or the path
    of a user's YAML spec (files relative to the YAML file)."""
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or Path(text).is_file():
        path = Path(text).expanduser().resolve()
        data, lines = read_yaml(path)
        spec = _validated(data, file=path, lines=lines)
        if spec.base_dir is None:
            spec = spec.model_copy(update={"base_dir": str(path.parent)})
        return spec
    registry = builtin_datasets()
    if text not in registry:
        raise UnknownNameError("dataset", text, list(registry))
    base = Path(data_dir) if data_dir is not None else default_data_dir()
    return registry[text].model_copy(update={"base_dir": str(base)})
