"""``per_dataset``: settings one dataset of a run takes instead of the run's (a market whose
sessions are too short for the run's episodes), and nothing else changes."""

from __future__ import annotations

import pytest

from cmm.config import RunConfig
from cmm.errors import InputError


def _config(**kw) -> RunConfig:
    return RunConfig(datasets=("lobster-goog-2012-06-21", "binance-usdm-btcusdt"),
                     backtest={"episode_s": 120}, **kw)


def test_only_the_named_dataset_takes_its_episode_length():
    c = _config(per_dataset={"binance-usdm-btcusdt": {"episode_s": 30}})
    assert c.for_dataset("binance-usdm-btcusdt").backtest.episode_s == 30
    goog = c.for_dataset("lobster-goog-2012-06-21")
    assert goog is c and goog.backtest.episode_s == 120
    # everything else of the dataset's configuration is the run's (so are its stage keys)
    other = c.for_dataset("binance-usdm-btcusdt")
    assert other.backtest.model_dump() == {**c.backtest.model_dump(), "episode_s": 30.0}
    assert other.model_dump(exclude={"backtest"}) == c.model_dump(exclude={"backtest"})


def test_an_override_for_a_dataset_not_in_the_run_is_refused():
    with pytest.raises(ValueError, match="not in datasets"):
        _config(per_dataset={"bitstamp-btcusd-2015-05-01": {"episode_s": 30}})


def test_the_run_check_sees_a_crash_longer_than_a_dataset_s_episodes(tmp_path):
    from cmm.cli.run import load_run_config
    from cmm.pipeline.checks import Source, check_run
    from cmm.strategy.policy import available_policies

    path = tmp_path / "run.yaml"
    path.write_text("name: x\ndatasets: [lobster-goog-2012-06-21, binance-usdm-btcusdt]\n"
                    "backtest: {episode_s: 120}\n"
                    "per_dataset: {binance-usdm-btcusdt: {episode_s: 10}}\n"
                    "robustness: {flash_crash: {fall_s: 3, hold_s: 2, recover_s: 10}}\n")
    config = load_run_config(path)
    with pytest.raises(InputError, match="crash"):
        check_run(config, Source.of(path), lambda name: name, available_policies())
