"""Typed configuration. Every default of cmm lives in this file.

Each pipeline stage gets a frozen pydantic model; YAML files are loaded into them with unknown
keys rejected by name, and errors point at the YAML file, line and field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, ValidationError

from cmm.errors import InputError


class FrozenModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Instrument(FrozenModel):
    """Contract terms. ``inverse``: size in contracts of ``contract_size`` quote units, PnL in the
    base coin (e.g. BTCUSD coin-margined perpetuals); otherwise linear (PnL in quote currency)."""

    tick_size: PositiveFloat
    lot_size: PositiveFloat
    contract_size: PositiveFloat = 1.0
    inverse: bool = False
    maker_fee: float = 0.0  # fraction of traded value; negative = rebate
    taker_fee: float = 0.0


class GridConfig(FrozenModel):
    """Fixed-interval book snapshots (method.md, Data)."""

    dt_ms: PositiveInt = 100
    levels: PositiveInt = 10
    # Book levels further than this fraction from the session's median trade/mid price are
    # ignored by the grid (never by the events): they cannot reach the top `levels` and would
    # make the tick-indexed book needlessly large.
    book_band: float = Field(0.2, gt=0.0, le=1.0)


class FeatureConfig(FrozenModel):
    """Windows, targets and regimes (method.md, Data)."""

    window: PositiveInt = 64  # W: steps per input window
    horizon: PositiveInt = 10  # H: steps ahead for the targets
    vol_window: PositiveInt = 600  # V: steps of trailing realised volatility for regimes
    vol_min_periods: PositiveInt = 20  # fewer returns than this: sigma is undefined (NaN)
    rv_window: PositiveInt = 20  # short realised-volatility input feature


class SplitConfig(FrozenModel):
    """Chronological train/validation/test with a purge gap (default H + W steps)."""

    train: float = Field(0.6, gt=0.0, lt=1.0)
    validation: float = Field(0.2, ge=0.0, lt=1.0)
    test: float = Field(0.2, gt=0.0, lt=1.0)
    purge: int | None = Field(None, ge=0)  # None: horizon + window


class ReaderConfig(FrozenModel):
    """How raw files become canonical events and sessions."""

    # Files whose time ranges are closer than this join into one session.
    join_gap_s: float = Field(5.0, ge=0.0)
    # Added to feed latency by hftbacktest's correct_local_timestamp when local clocks run ahead.
    base_latency_ns: int = Field(0, ge=0)


class DataConfig(FrozenModel):
    grid: GridConfig = GridConfig()
    features: FeatureConfig = FeatureConfig()
    splits: SplitConfig = SplitConfig()
    reader: ReaderConfig = ReaderConfig()


DatasetFormat = Literal["binance", "bitstamp-log", "order-csv", "lobster", "hftbacktest-npz"]

M = TypeVar("M", bound=BaseModel)


def _key_lines(node: yaml.Node, prefix: tuple = ()) -> dict[tuple, int]:
    """Map each key path in a YAML document to its 1-based line number."""
    lines: dict[tuple, int] = {prefix: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            path = prefix + (key.value,)
            lines[path] = key.start_mark.line + 1
            lines.update({k: v for k, v in _key_lines(value, path).items() if k != path})
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            lines.update(_key_lines(item, prefix + (i,)))
    return lines


def read_yaml(path: str | Path) -> tuple[Any, dict[tuple, int]]:
    """Parse a YAML file; return the data and a map from key paths to line numbers."""
    path = Path(path)
    if not path.is_file():
        raise InputError("file not found", file=path)
    text = path.read_text()
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise InputError(
            f"not valid YAML ({getattr(exc, 'problem', exc)})",
            file=path,
            line=mark.line + 1 if mark else None,
        ) from None
    if node is None:
        raise InputError("empty YAML file", file=path, expected="a mapping")
    return data, _key_lines(node)


def validate_model(model: type[M], data: Any, *, file: str | Path | None = None,
                   lines: dict[tuple, int] | None = None, prefix: tuple = ()) -> M:
    """Validate ``data`` into ``model``; the first error becomes an InputError that names the
    file, the YAML line and the dotted field path."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = prefix + tuple(err["loc"])
        line = None
        if lines:
            for cut in range(len(loc), -1, -1):
                if loc[:cut] in lines:
                    line = lines[loc[:cut]]
                    break
        field = ".".join(str(p) for p in loc) or None
        kind = err["type"]
        if kind == "missing":
            message = "required field is missing"
        elif kind == "extra_forbidden":
            message = "unknown field"
        else:
            message = err["msg"]
        return_got = None if kind == "missing" else err.get("input")
        raise InputError(message, file=file, line=line, field=field,
                         got=return_got if kind != "extra_forbidden" else None) from None


def load_yaml_model(model: type[M], path: str | Path) -> M:
    data, lines = read_yaml(path)
    return validate_model(model, data, file=path, lines=lines)
