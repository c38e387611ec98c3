"""The report's aggregation (known answers) and its writers."""

from __future__ import annotations

import math

import numpy as np
import polars as pl
import pytest

from cmm.report.blocks import Block, fmt
from cmm.report.render import _html, _md
from cmm.report.tables import PolicyResult, missing_cells


def _episodes(pnl, map_, fills):
    return pl.DataFrame({"episode": list(range(len(pnl))), "pnl": pnl, "map": map_,
                         "fills": fills, "max_drawdown": [0.0] * len(pnl),
                         "volume": [1.0] * len(pnl)})


def test_pooled_episodes_and_per_seed_ratios():
    r = PolicyResult("cmm", "CMM", [_episodes([1.0, 3.0], [1.0, 1.0], [2, 2]),
                                    _episodes([2.0, 6.0], [2.0, 2.0], [4, 4])],
                     latency_ms=[0.2, 0.4], seeds=[0, 1])
    m = r.metrics()
    assert m["EPnL"].mean == pytest.approx(3.0)
    assert m["EPnL"].std == pytest.approx(np.std([1, 3, 2, 6], ddof=1))
    assert m["EPnL"].n == 4
    # PnLMAP per seed: 2/1 and 4/2 -> 2 ± 0; RPT: 4/4 and 8/8 -> 1
    assert m["PnLMAP"].mean == pytest.approx(2.0) and m["PnLMAP"].std == pytest.approx(0.0)
    assert m["RPT"].mean == pytest.approx(1.0)
    sharpe = [2.0 / np.std([1, 3], ddof=1), 4.0 / np.std([2, 6], ddof=1)]
    assert m["Sharpe"].mean == pytest.approx(np.mean(sharpe))
    assert m["latency_ms"].mean == pytest.approx(0.3)
    sub = r.metrics([1])
    assert sub["EPnL"].mean == pytest.approx(4.5) and sub["EPnL"].n == 2


def test_one_seed_has_no_spread_and_zero_map_gives_no_ratio():
    r = PolicyResult("oracle", "oracle", [_episodes([0.0, 0.0], [0.0, 0.0], [0, 0])],
                     latency_ms=[0.0], seeds=[0])
    m = r.metrics()
    assert m["PnLMAP"].n == 0 and math.isnan(m["PnLMAP"].mean)
    assert m["latency_ms"].std is None
    assert fmt(m["PnLMAP"].to_json()) == "–"
    assert fmt({"mean": 1234.5678, "std": 0.01234, "n": 3}) == "1235 ± 0.0123"
    assert fmt({"mean": 2.5e6, "std": None}) == "2,500,000"
    assert fmt({"mean": -26.02, "std": 2.63e-13, "n": 3}) == "-26.02 ± 0"


def test_missing_cells_name_the_table_and_row():
    tables = {"btc": {"main": [{"slug": "cmm", "missing": True},
                               {"slug": "as", "EPnL": {"mean": 1.0}, "MAP": {"mean": None},
                                "latency_ms": {"mean": 0.0}}],
                      "robustness": []}}
    assert missing_cells(tables) == ["btc/main/cmm: no backtest", "btc/main/as/MAP"]


def test_writers_render_the_same_blocks(tmp_path):
    png = tmp_path / "f.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    blocks = [Block("h1", "Title"), Block("p", "run by `cmm run` **now**"),
              Block("table", "cap", ["policy", "EPnL"], [["a|b", "1 ± 2"]]),
              Block("img", "fig", path=png)]
    md = _md(blocks, tmp_path.relative_to(tmp_path))
    assert "# Title" in md and "| a\\|b | 1 ± 2 |" in md and "](f.png)" in md
    html = _html(blocks, "T")
    assert "<code>cmm run</code>" in html and "<b>now</b>" in html
    assert "<caption>cap</caption>" in html and "data:image/png;base64," in html
    assert "a|b" in html


def test_epnl_ranks_per_market_leave_out_the_oracle_and_missing_rows():
    from cmm.report.overview import epnl_ranks

    def row(slug, epnl):
        return {"slug": slug, "EPnL": {"mean": epnl}}

    tables = {"btc": {"main": [row("cmm", -1.0), row("teacher", -2.0), row("oracle", 5.0)]},
              "eth": {"main": [row("cmm", -3.0), row("teacher", 0.5), row("oracle", 9.0)]},
              "bts": {"main": [{"slug": "cmm", "missing": True}, row("teacher", 1.0)]}}
    ranks = epnl_ranks(tables, ["cmm", "teacher", "oracle"])
    assert ranks == {"cmm": [1, 2], "teacher": [2, 1, 1], "oracle": []}
