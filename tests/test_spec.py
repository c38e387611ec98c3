"""Dataset specs: the registry is complete and verified, user YAML errors are located."""

from pathlib import Path

import pytest

from cmm.data.spec import builtin_datasets, load_dataset_spec
from cmm.errors import InputError, UnknownNameError
from cmm.io import sha256_file

REQUIRED = {"binance-usdm-btcusdt", "binance-usdm-ethusdt", "binance-spot-btcusdt",
            "binance-spot-ethusdt", "bitstamp-btcusd-2015", "lobster-aapl-sample"}

GOOD = """\
name: my-dataset
format: binance
files: [a.gz, b.gz]
instrument: {tick_size: 0.1, lot_size: 0.001, contract_size: 1.0, inverse: false,
             maker_fee: -0.00005, taker_fee: 0.0007}
grid: {dt_ms: 100, levels: 10}
"""


def test_registry_has_required_datasets_with_verified_sources(data_dir):
    registry = builtin_datasets()
    assert REQUIRED <= set(registry)
    for name, spec in registry.items():
        assert spec.sources, name
        listed = {s.path for s in spec.sources}
        assert set(spec.files) <= listed, name
        for source in spec.sources:
            assert source.url and source.url.startswith("https://"), (name, source.path)
            assert sha256_file(data_dir / source.path) == source.sha256, (name, source.path)


def test_user_spec_resolves_files_relative_to_yaml(tmp_path):
    (tmp_path / "my.yaml").write_text(GOOD)
    spec = load_dataset_spec(tmp_path / "my.yaml")
    assert spec.file_paths() == [tmp_path / "a.gz", tmp_path / "b.gz"]
    assert spec.instrument.maker_fee == -0.00005 and not spec.instrument.inverse


def test_inverse_instrument_is_representable(tmp_path):
    text = GOOD.replace("contract_size: 1.0, inverse: false", "contract_size: 100.0, inverse: true")
    (tmp_path / "inv.yaml").write_text(text)
    spec = load_dataset_spec(tmp_path / "inv.yaml")
    assert spec.instrument.inverse and spec.instrument.contract_size == 100.0


@pytest.mark.parametrize("edit, line, field, message", [
    (lambda t: t.replace("format: binance\n", ""), None, "format", "required field is missing"),
    (lambda t: t.replace("format: binance", "format: csv"), 2, "format", "Input should be"),
    (lambda t: t.replace("tick_size: 0.1", "tick_size: -0.1"), 4, "instrument.tick_size", "greater than 0"),
    (lambda t: t.replace("lot_size: 0.001", "lot_size: lots"), 4, "instrument.lot_size", "valid number"),
    (lambda t: t.replace("levels: 10}", "levels: 10, depth: 5}"), 6, "grid.depth", "unknown field"),
    (lambda t: t.replace("files: [a.gz, b.gz]", "files: []"), 3, "files", "at least 1"),
])
def test_bad_spec_names_file_line_and_field(tmp_path, edit, line, field, message):
    path = tmp_path / "bad.yaml"
    path.write_text(edit(GOOD))
    with pytest.raises(InputError, match=message) as exc:
        load_dataset_spec(path)
    text = str(exc.value)
    assert str(path) in text and f"field '{field}'" in text
    if line is not None:
        assert f"{path}:{line}" in text


def test_empty_and_invalid_yaml(tmp_path):
    empty = tmp_path / "empty.yaml"
    empty.write_text("")
    with pytest.raises(InputError, match=r"empty\.yaml: empty YAML file"):
        load_dataset_spec(empty)
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nfiles: [a.gz\n")
    with pytest.raises(InputError, match=r"broken\.yaml:\d+: not valid YAML"):
        load_dataset_spec(broken)


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(UnknownNameError, match="valid: .*binance-usdm-btcusdt"):
        load_dataset_spec("no-such-dataset")


def test_registry_paths_resolve_in_data_dir(data_dir):
    spec = load_dataset_spec("lobster-aapl-sample")
    assert spec.file_paths()[0] == (Path(data_dir) / spec.files[0]).resolve()


def test_grid_fields_set_in_the_data_config_override_the_dataset_s_own():
    from cmm.config import DataConfig, GridConfig
    from cmm.data.prepare import _effective_config
    from cmm.data.spec import load_dataset_spec

    spec = load_dataset_spec("bitstamp-btcusd-2015-05-01")  # registered at 1 s, 10 levels
    assert _effective_config(spec, None).grid.dt_ms == 1000
    assert _effective_config(spec, DataConfig()).grid.dt_ms == 1000
    # asking for the default step explicitly is still asking for it
    assert _effective_config(spec, DataConfig(grid=GridConfig(dt_ms=100))).grid.dt_ms == 100
    aapl = load_dataset_spec("lobster-aapl-2012-06-21")  # 1 level: kept when only dt is set
    g = _effective_config(aapl, DataConfig.model_validate({"grid": {"dt_ms": 500}})).grid
    assert (g.dt_ms, g.levels) == (500, 1)
