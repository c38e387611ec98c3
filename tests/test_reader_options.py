"""Reader options of the order CSV (format D): a capture that names and encodes its columns
otherwise reads to the very events of Bitstamp's file, through a YAML spec's ``reader:`` too.

The real file comes from ``cmm.io.default_data_dir()``; its first rows are rewritten in tmp_path
with renamed, reordered columns, base-unit volumes, microsecond times, 0/1 sides and order_*
actions.
"""

from __future__ import annotations

import csv
import io
import lzma
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cmm.config import Instrument, OrderCsvOptions
from cmm.data.readers import get_reader
from cmm.data.readers.ordercsv import read_order_csv
from cmm.data.spec import load_dataset_spec
from cmm.errors import InputError
from cmm.io import default_data_dir

BTC = Instrument(tick_size=0.01, lot_size=1e-8, maker_fee=0.0025, taker_fee=0.0025)
ORDERS = default_data_dir() / "bitstamp" / "btcusd_20150501_orders.csv.xz"
N_ROWS = 3000
HEALTH = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
# Bitstamp's header names -> the capture's, and the matching ``reader:`` options.
RENAMED = {"id": "order_id", "timestamp": "ts_us", "exchange.timestamp": "exchange_timestamp",
           "price": "px", "volume": "size", "action": "event", "direction": "side"}
ORDER = ["ts_us", "event", "side", "px", "size", "order_id", "venue", "exchange_timestamp"]
OPTIONS = {"columns": {"id": "order_id", "timestamp": "ts_us", "price": "px", "volume": "size",
                       "action": "event", "direction": "side"},
           "time_unit": "us", "volume_unit": "base",
           "actions": {"created": "order_created", "changed": "order_changed",
                       "deleted": "order_deleted"},
           "directions": {"bid": 0, "ask": 1}}
SPEC = """\
name: my-orders
format: order-csv
files: [custom.csv]
instrument: {tick_size: 0.01, lot_size: 0.00000001, maker_fee: 0.0025, taker_fee: 0.0025}
reader:
  columns: {id: order_id, timestamp: ts_us, price: px, volume: size, action: event,
            direction: side}
  time_unit: us
  volume_unit: base
  actions: {created: order_created, changed: order_changed, deleted: order_deleted}
  directions: {bid: 0, ask: 1}
"""


@pytest.fixture(scope="module")
def original() -> tuple[list[str], list[dict[str, str]]]:
    if not ORDERS.is_file():
        pytest.skip(f"real data file missing: {ORDERS}")
    reader = csv.DictReader(io.StringIO(lzma.decompress(ORDERS.read_bytes()).decode()))
    rows = [row for _, row in zip(range(N_ROWS), reader)]
    return list(reader.fieldnames), rows


def write_csv(path: Path, header: list[str], rows: list[list[str]]) -> Path:
    with path.open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)
    return path


@pytest.fixture(scope="module")
def reference(original, tmp_path_factory):
    """The original rows, as Bitstamp writes them, read with the defaults."""
    header, rows = original
    p = write_csv(tmp_path_factory.mktemp("ref") / "orders.csv", header,
                  [[r[h] for h in header] for r in rows])
    return read_order_csv(p, BTC)


def satoshi_to_base(text: str) -> str:
    """Integer satoshi -> exact decimal BTC, trailing zeros dropped ('200000000' -> '2.0')."""
    v = int(text)
    whole, frac = divmod(v, 10**8)
    return f"{whole}.{f'{frac:08d}'.rstrip('0') or '0'}"


def custom_row(r: dict[str, str]) -> dict[str, str]:
    """One Bitstamp row in the other capture's encoding, under Bitstamp's names."""
    return {"id": r["id"], "timestamp": str(int(r["timestamp"]) * 1000),
            "exchange.timestamp": r["exchange.timestamp"], "price": r["price"],
            "volume": satoshi_to_base(r["volume"]), "action": "order_" + r["action"],
            "direction": {"bid": "0", "ask": "1"}[r["direction"]]}


def write_custom(path: Path, rows: list[dict[str, str]]) -> Path:
    out = []
    for r in rows:
        c = {RENAMED[k]: v for k, v in custom_row(r).items()}
        c["venue"] = "bitstamp"
        out.append([c[h] for h in ORDER])
    return write_csv(path, ORDER, out)


def same_read(got, want) -> None:
    (events, report), (ref_events, ref_report) = got, want
    assert events.dtype == ref_events.dtype
    assert events.tobytes() == ref_events.tobytes()  # identical, field for field
    assert report.lines == ref_report.lines and report.events == ref_report.events
    assert report.messages == ref_report.messages and report.repairs == ref_report.repairs
    assert (report.first_local_ts, report.last_local_ts) == (ref_report.first_local_ts,
                                                             ref_report.last_local_ts)


# -- the options model ------------------------------------------------------------------------
def test_defaults_are_bitstamps():
    o = OrderCsvOptions()
    assert (o.time_unit, o.volume_unit) == ("ms", "satoshi")
    assert o.columns.volume == "volume" and o.columns.id == "id"
    assert o.columns.exchange_timestamp == ("exchange.timestamp", "exchange_timestamp")
    assert (o.actions.created, o.actions.changed, o.actions.deleted) == ("created", "changed",
                                                                          "deleted")
    assert (o.directions.bid, o.directions.ask) == ("bid", "ask")


def test_options_validate_numbers_as_words():
    o = OrderCsvOptions.model_validate(OPTIONS)
    assert (o.directions.bid, o.directions.ask) == ("0", "1")
    assert o.columns.exchange_timestamp == ("exchange.timestamp", "exchange_timestamp")


# -- the rewritten capture reads to identical events ------------------------------------------
def test_other_encoding_reads_identical_events(original, reference, tmp_path):
    _, rows = original
    p = write_custom(tmp_path / "custom.csv", rows)
    got = read_order_csv(p, BTC, OrderCsvOptions.model_validate(OPTIONS))
    same_read(got, reference)
    assert got[1].timestamp_unit == "us"
    assert got[1].messages["created"] > 0 and got[1].messages["deleted"] > 0


def test_yaml_spec_reader_options(original, reference, tmp_path):
    _, rows = original
    write_custom(tmp_path / "custom.csv", rows)
    (tmp_path / "my.yaml").write_text(SPEC)
    spec = load_dataset_spec(tmp_path / "my.yaml")
    opts = spec.reader_options
    assert isinstance(opts, OrderCsvOptions)
    assert opts == OrderCsvOptions.model_validate(OPTIONS)
    assert spec.file_paths() == [tmp_path / "custom.csv"]
    got = get_reader("order-csv")(spec.file_paths()[0], spec.instrument, opts)
    same_read(got, reference)


def test_exchange_timestamp_is_optional(original, reference, tmp_path):
    header, rows = original
    kept = [h for h in header if h != "exchange.timestamp"]
    p = write_csv(tmp_path / "no_exch.csv", kept, [[r[h] for h in kept] for r in rows])
    with pytest.raises(InputError, match=r"exchange\.timestamp or exchange_timestamp.*"
                                         r"reader\.columns\.exchange_timestamp \(null"):
        read_order_csv(p, BTC)
    opts = OrderCsvOptions.model_validate({"columns": {"exchange_timestamp": None}})
    same_read(read_order_csv(p, BTC, opts), reference)


def test_lot_size_finer_than_satoshi(tmp_path):
    """Base volumes keep the lot size's decimals when it has more than 8; finer is an error."""
    inst = Instrument(tick_size=0.01, lot_size=1e-10)
    opts = OrderCsvOptions(volume_unit="base")
    header = "id,timestamp,exchange.timestamp,price,volume,action,direction\n"
    p = tmp_path / "fine.csv"
    p.write_text(header + "1,1000,1000,99.00,0.0000000003,created,bid\n")
    events, _ = read_order_csv(p, inst, opts)
    assert events["qty"][-1] == pytest.approx(3e-10, rel=1e-12)
    with pytest.raises(InputError, match=r"fine\.csv:2, field 'volume': volume is finer"):
        read_order_csv(p, BTC, opts)


# -- errors name the option to set ------------------------------------------------------------
def test_header_mismatch_names_option_and_columns_found(original, tmp_path):
    _, rows = original
    p = write_custom(tmp_path / "custom.csv", rows[:10])
    with pytest.raises(InputError) as exc:
        read_order_csv(p, BTC)
    text = str(exc.value)
    assert f"{p}:1, field 'id'" in text
    assert "missing CSV column(s): id, timestamp, price, volume, action, direction" in text
    for canon in ("id", "timestamp", "price", "volume", "action", "direction"):
        assert f"reader.columns.{canon}" in text
    assert "reader.columns.exchange_timestamp" not in text  # the file has exchange_timestamp
    assert "columns found: " + ", ".join(ORDER) in text
    # only volume left unmapped: only it is named
    cols = {k: v for k, v in OPTIONS["columns"].items() if k != "volume"}
    with pytest.raises(InputError) as exc:
        read_order_csv(p, BTC, OrderCsvOptions.model_validate({**OPTIONS, "columns": cols}))
    text = str(exc.value)
    assert "field 'volume'" in text and "missing CSV column(s): volume;" in text
    assert "set reader.columns.volume in the dataset spec" in text
    assert text.count("reader.columns.") == 1
    assert "columns found: " + ", ".join(ORDER) in text


@pytest.mark.parametrize("drop, field, option, expected, got", [
    ("actions", "event", "reader.actions",
     "'created' (created) / 'changed' (changed) / 'deleted' (deleted)", "order_"),
    ("directions", "side", "reader.directions", "'bid' (bid) / 'ask' (ask)", ""),
])
def test_unknown_action_or_direction_names_option(original, tmp_path, drop, field, option,
                                                  expected, got):
    _, rows = original
    p = write_custom(tmp_path / "custom.csv", rows[:10])
    opts = OrderCsvOptions.model_validate({k: v for k, v in OPTIONS.items() if k != drop})
    with pytest.raises(InputError) as exc:
        read_order_csv(p, BTC, opts)
    text = str(exc.value)
    assert f"{p}:2, field '{field}'" in text
    assert f"set {option} in the dataset spec" in text
    assert f"expected {expected}, got '{got}" in text


def test_unit_mistakes_name_the_option(original, tmp_path):
    _, rows = original
    p = write_custom(tmp_path / "custom.csv", rows[:10])
    no_time = OrderCsvOptions.model_validate({k: v for k, v in OPTIONS.items()
                                              if k != "time_unit"})
    with pytest.raises(InputError, match=r"custom\.csv:2, field 'ts_us': timestamp too large "
                                         r"for reader\.time_unit 'ms'.*set reader\.time_unit"):
        read_order_csv(p, BTC, no_time)
    no_volume = OrderCsvOptions.model_validate({k: v for k, v in OPTIONS.items()
                                                if k != "volume_unit"})
    # row 2's "2.0" is a whole number (read as 2 satoshi, as today); row 3's 1.78855669 is not
    with pytest.raises(InputError, match=r"custom\.csv:3, field 'size': not an integer.*"
                                         r"reader\.volume_unit.*base"):
        read_order_csv(p, BTC, no_volume)


# -- YAML errors are located ------------------------------------------------------------------
@pytest.mark.parametrize("edit, line, field, message", [
    (lambda t: t.replace("  time_unit: us\n", "  time_unit: us\n  xyz: 1\n"), 9, "reader.xyz",
     "unknown field"),
    (lambda t: t.replace("direction: side}", "direction: side, side: x}"), 7,
     "reader.columns.side", "unknown field"),
    (lambda t: t.replace("time_unit: us", "time_unit: minutes"), 8, "reader.time_unit",
     "Input should be"),
    (lambda t: t.replace("volume_unit: base", "volume_unit: btc"), 9, "reader.volume_unit",
     "Input should be"),
    (lambda t: t.replace("{bid: 0, ask: 1}", "{bid: 0, ask: 0}"), 11, "reader.directions",
     "distinct"),
    (lambda t: t.replace("deleted: order_deleted", "deleted: order_created"), 10,
     "reader.actions", "distinct"),
    (lambda t: t.replace("{bid: 0, ask: 1}", "{bid: 0, sell: 1}"), 11, "reader.directions.sell",
     "unknown field"),
])
def test_bad_reader_options_name_yaml_line_and_field(tmp_path, edit, line, field, message):
    path = tmp_path / "bad.yaml"
    text = edit(SPEC)
    assert text != SPEC
    path.write_text(text)
    with pytest.raises(InputError, match=message) as exc:
        load_dataset_spec(path)
    assert f"{path}:{line}, field '{field}'" in str(exc.value)


# -- property: any renaming and order of the columns ------------------------------------------
NAMES = st.text(st.sampled_from("abcdefghijklmnopqrstuvwxyz_.0123456789 ABC"), min_size=1,
                max_size=12).map(str.strip).filter(bool)


@settings(max_examples=25, deadline=None, suppress_health_check=HEALTH)
@given(data=st.data())
def test_property_renamed_reordered_columns_read_the_same(original, reference, tmp_path,
                                                          data):
    header, rows = original
    canon = {"id": "id", "timestamp": "timestamp", "exchange.timestamp": "exchange_timestamp",
             "price": "price", "volume": "volume", "action": "action",
             "direction": "direction"}
    names = data.draw(st.lists(NAMES, min_size=len(canon) + 2, max_size=len(canon) + 2,
                               unique=True), label="names")
    new = dict(zip(canon, names))  # Bitstamp's name -> the file's
    extras = names[len(canon):]
    order = data.draw(st.permutations([*new.values(), *extras]), label="order")
    out = []
    for r in rows:
        cells = {new[h]: r[h] for h in canon}
        cells.update({e: "x" for e in extras})
        out.append([cells[h] for h in order])
    p = write_csv(tmp_path / "renamed.csv", order, out)
    opts = OrderCsvOptions.model_validate({"columns": {canon[h]: new[h] for h in canon}})
    same_read(read_order_csv(p, BTC, opts), reference)


def test_default_header_error_lists_found_columns_for_renamed_file(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("a,b\n1,2\n")
    with pytest.raises(InputError, match=re.escape("(columns found: a, b)")):
        read_order_csv(p, BTC)
