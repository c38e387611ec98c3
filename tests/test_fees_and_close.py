"""Fee tiers, gross and net PnL, the close that walks the visible book (issue 14): known answers
on hand-built books (the helpers and conventions of test_backtest.py: our orders sit inside the
spread, trades go through their price, entry and response latencies 1 ms)."""

from __future__ import annotations

import numpy as np
import pytest
from hftbacktest.types import BUY_EVENT, DEPTH_EVENT, SELL_EVENT
from pydantic import ValidationError
from test_backtest import CFG, LINEAR, ConstantQuotes, TinyDataset, book, buy_trade, ev, \
    sell_trade

from cmm.backtest.metrics import episode_metrics, net_pnl_at, reprice, summarize
from cmm.backtest.runner import run_backtest
from cmm.config import BacktestConfig, FeeTier, Instrument
from cmm.data.spec import builtin_datasets
from cmm.errors import InputError

TIERS = {
    "base": {"maker_fee": -0.0001, "taker_fee": 0.0005, "source": "test: LINEAR's own"},
    "market_maker": {"maker_fee": -0.00005, "taker_fee": 0.00017, "source": "test"},
    "per_unit": {"basis": "quantity", "maker_fee": -0.002, "taker_fee": 0.003, "source": "test"},
}
TIERED = LINEAR.model_copy(update={"fee_tiers": {k: FeeTier(**v) for k, v in TIERS.items()}})
# a NASDAQ-like stock: whole shares, fees per share ($0.0020 rebate to add, $0.0030 to remove)
STOCK = Instrument(
    tick_size=0.01, lot_size=1.0,
    sizing={"max_side_notional": 1e5, "position_limit_notional": 1e6},
    fee_tiers={"base": FeeTier(basis="quantity", maker_fee=-0.002, taker_fee=0.003,
                               source="test"),
               "market_maker": FeeTier(basis="quantity", maker_fee=-0.00295, taker_fee=0.003,
                                       source="test")})


def bid_level(t_ms, px, qty):
    return ev(DEPTH_EVENT, BUY_EVENT, t_ms, px, qty)


def ask_level(t_ms, px, qty):
    return ev(DEPTH_EVENT, SELL_EVENT, t_ms, px, qty)


def one_episode(events, inst, policy, cfg=CFG, decisions=range(100, 1001, 100)):
    ds = TinyDataset(events, inst, list(decisions))
    result = run_backtest(ds, policy, config=cfg)
    return result, result.episodes.sort("episode").row(0, named=True)


# ---------------------------------------------------------------- per-share fees


def test_per_share_fees_known_answer():
    # Book 99.90 / 100.20 (1,000 shares a side). We quote 100 shares @ 100.00 / 100.10.
    events = [*book(1, 99.90, 100.20, 1000.0),
              sell_trade(150, 99.90, 500.0),   # +100 @ 100.00
              buy_trade(250, 100.20, 500.0),   # -100 @ 100.10
              sell_trade(350, 99.90, 500.0),   # +100 @ 100.00 (the re-posted bid)
              *book(2500, 99.90, 100.20, 1000.0)]
    result, e = one_episode(events, STOCK, ConstantQuotes(100.0, 100.1, 100.0))
    assert result.fills["qty"].to_list() == [100.0] * 3
    # cash -10,000 + 10,010 - 10,000 = -9,990; the close sells 100 at the bid 99.90 = +9,990:
    # gross 0. Maker: 300 shares x -$0.002 = -0.6; taker: 100 shares x $0.003 = 0.3.
    assert e["close_qty"] == 100 and e["close_px"] == pytest.approx(99.9, rel=1e-12)
    assert e["close_value"] == pytest.approx(9990.0, rel=1e-12)
    assert e["maker_fee"] == pytest.approx(-0.6, rel=1e-12)
    assert e["close_fee"] == pytest.approx(0.3, rel=1e-12)
    assert e["gross_pnl"] == pytest.approx(0.0, abs=1e-9)
    assert e["pnl"] == pytest.approx(0.6 - 0.3, abs=1e-9)
    # the records' running fee is per share too
    assert result.records["fee"].min() == pytest.approx(-0.6, rel=1e-12)
    m = summarize(result)
    assert m["fee_tier"] == "base"
    assert m["EPnL"] == pytest.approx(0.3, abs=1e-9) and m["EPnL_gross"] == pytest.approx(0.0, abs=1e-9)
    assert m["fees"] == pytest.approx(-0.3, abs=1e-9)
    # the top rebate tier: 300 x -$0.00295 = -0.885
    top = run_backtest(TinyDataset(events, STOCK, list(range(100, 1001, 100))),
                       ConstantQuotes(100.0, 100.1, 100.0),
                       config=CFG.model_copy(update={"fee_tier": "market_maker"}))
    assert top.episodes["maker_fee"][0] == pytest.approx(-0.885, rel=1e-12)
    assert top.episodes["pnl"][0] == pytest.approx(0.885 - 0.3, abs=1e-9)


def test_a_per_unit_fee_out_of_proportion_to_the_price_is_refused():
    # $5 a share on a $100 share is 5 %: a typo for $0.005
    bad = STOCK.model_copy(update={"fee_tiers": {
        "base": FeeTier(basis="quantity", maker_fee=-0.002, taker_fee=5.0, source="typo")}})
    events = [*book(1, 99.90, 100.20, 1000.0), *book(2500, 99.90, 100.20, 1000.0)]
    with pytest.raises(InputError, match=r"fee_tiers.taker_fee.*1 % of one unit"):
        one_episode(events, bad, ConstantQuotes(100.0, 100.1, 100.0))
    with pytest.raises(ValidationError, match="per-unit fee"):
        FeeTier(basis="quantity", maker_fee=0.0, taker_fee=500.0, source="x")
    with pytest.raises(ValidationError, match="fraction of the traded value"):
        FeeTier(maker_fee=0.05, taker_fee=0.0, source="x")
    with pytest.raises(ValidationError, match="at least 1 character"):
        FeeTier(maker_fee=0.0, taker_fee=0.0, source="")


# ---------------------------------------------------------------- the walked close


def _long_then_close(bids, long_qty, cleared_before_close=False):
    """Bids ``bids`` [(px, qty)], ask 100.2; our bid of ``long_qty`` @ 100.0 is filled once at
    150 ms; quotes rest until the episode ends at 1.1 s (ask 101.0, never reached)."""
    events = [*(bid_level(1, px, q) for px, q in bids), ask_level(1, 100.2, 5.0),
              sell_trade(150, 99.9, 50.0)]
    if cleared_before_close:  # the bid side empties after the last decision (1000 ms)
        events += [bid_level(1050, px, 0.0) for px, _ in bids]
    events += [ask_level(2500, 100.2, 5.0)]
    # one fill: the bid is re-posted at every decision but no trade reaches it again
    return one_episode(events, LINEAR, ConstantQuotes(100.0, 101.0, long_qty))


def test_close_walks_the_visible_bids():
    # long 7; bids 5 @ 99.9, 3 @ 99.8: close = 5 x 99.9 + 2 x 99.8 = 699.1
    result, e = _long_then_close([(99.9, 5.0), (99.8, 3.0)], 7.0)
    assert e["close_qty"] == pytest.approx(7.0)
    assert e["close_value"] == pytest.approx(5 * 99.9 + 2 * 99.8, rel=1e-12)
    assert e["close_px"] == pytest.approx(699.1 / 7, rel=1e-12)
    assert e["close_levels"] == 2 and e["close_unfilled_qty"] == 0.0
    assert e["close_fee"] == pytest.approx(0.0005 * 699.1, rel=1e-12)
    assert e["maker_fee"] == pytest.approx(-0.0001 * 700.0, rel=1e-12)
    assert e["gross_pnl"] == pytest.approx(699.1 - 700.0, rel=1e-9)
    assert e["pnl"] == pytest.approx(699.1 - 700.0 + 0.07 - 0.0005 * 699.1, rel=1e-9)


def test_what_the_visible_book_cannot_absorb_closes_one_tick_beyond_it():
    # long 10 on 5 @ 99.9 + 3 @ 99.8: the last 2 close at 99.7, and are counted
    _, e = _long_then_close([(99.9, 5.0), (99.8, 3.0)], 10.0)
    assert e["close_unfilled_qty"] == pytest.approx(2.0)
    assert e["close_value"] == pytest.approx(5 * 99.9 + 3 * 99.8 + 2 * 99.7, rel=1e-12)
    assert e["close_levels"] == 2
    per = episode_metrics(_long_then_close([(99.9, 5.0), (99.8, 3.0)], 10.0)[0])
    assert per["close_unfilled_qty"].to_list() == pytest.approx([2.0])
    # the bid side empty at the close: the last valid touch (99.9) one tick worse, all of it
    _, e = _long_then_close([(99.9, 5.0), (99.8, 3.0)], 7.0, cleared_before_close=True)
    assert e["close_unfilled_qty"] == pytest.approx(7.0) and e["close_levels"] == 0
    assert e["close_px"] == pytest.approx(99.8) and e["close_value"] == pytest.approx(7 * 99.8)


def test_a_short_walks_the_asks_up_skipping_empty_ticks_and_pays_per_unit():
    # short 7 on asks 4 @ 100.2, 2 @ 100.3, none at 100.4, 1 @ 100.5; taker $0.003 a unit
    events = [bid_level(1, 99.9, 5.0), ask_level(1, 100.2, 4.0), ask_level(1, 100.3, 2.0),
              ask_level(1, 100.5, 1.0), buy_trade(150, 100.2, 50.0),
              ask_level(2500, 100.2, 4.0)]
    cfg = CFG.model_copy(update={"fee_tier": "per_unit"})
    _, e = one_episode(events, TIERED, ConstantQuotes(99.0, 100.1, 7.0), cfg=cfg)
    assert e["close_qty"] == pytest.approx(-7.0)
    value = 4 * 100.2 + 2 * 100.3 + 100.5
    assert e["close_value"] == pytest.approx(value, rel=1e-12) and e["close_levels"] == 3
    assert e["close_fee"] == pytest.approx(0.003 * 7, rel=1e-12)
    assert e["maker_fee"] == pytest.approx(-0.002 * 7, rel=1e-12)
    assert e["gross_pnl"] == pytest.approx(7 * 100.1 - value, rel=1e-9)
    assert e["pnl"] == pytest.approx(7 * 100.1 - value + 0.014 - 0.021, rel=1e-9)


def test_a_walk_is_bounded():
    # 2 ticks of walk: 99.9 and 99.8 are seen, 99.7 is not; the rest one tick beyond 99.8
    events = [bid_level(1, 99.9, 1.0), bid_level(1, 99.8, 1.0), bid_level(1, 99.7, 5.0),
              ask_level(1, 100.2, 5.0), sell_trade(150, 99.9, 50.0), ask_level(2500, 100.2, 5.0)]
    cfg = CFG.model_copy(update={"close_walk_ticks": 2})
    _, e = one_episode(events, LINEAR, ConstantQuotes(100.0, 101.0, 4.0), cfg=cfg)
    assert e["close_levels"] == 2 and e["close_unfilled_qty"] == pytest.approx(2.0)
    assert e["close_value"] == pytest.approx(99.9 + 99.8 + 2 * 99.7, rel=1e-12)


# ---------------------------------------------------------------- gross, net, other tiers


def _two_episodes(tier: str):
    # test_backtest's linear scenario: 3 fills in episode 0, 1 in episode 1, closes both ways
    events = [*book(1, 99.9, 100.2, 5.0), sell_trade(150, 99.9, 0.5), buy_trade(250, 100.2, 0.5),
              sell_trade(350, 99.9, 0.5), buy_trade(1500, 100.2, 0.5),
              *book(2500, 99.9, 100.2, 5.0)]
    ds = TinyDataset(events, TIERED, list(range(100, 2001, 100)))
    return run_backtest(ds, ConstantQuotes(100.0, 100.1, 0.01),
                        config=CFG.model_copy(update={"fee_tier": tier}))


@pytest.fixture(scope="module")
def by_tier():
    return {t: _two_episodes(t) for t in TIERS}


def test_gross_is_net_plus_fees(by_tier):
    for tier, r in by_tier.items():
        e = r.episodes
        np.testing.assert_allclose(e["gross_pnl"], e["pnl"] + e["maker_fee"] + e["close_fee"],
                                   rtol=0, atol=1e-12)
        # gross does not depend on the tier
        np.testing.assert_array_equal(e["gross_pnl"], by_tier["base"].episodes["gross_pnl"])
        m = summarize(r)
        assert m["fee_tier"] == tier
        assert m["EPnL_gross"] == pytest.approx(m["EPnL"] + m["fees"] / m["episodes"], abs=1e-12)
    # the base replay's known answer (test_backtest.py): gross = cash + close value
    e = by_tier["base"].episodes.sort("episode")
    np.testing.assert_allclose(e["gross_pnl"], [-0.999 + 0.999, 1.001 - 1.002], atol=1e-12)


@pytest.mark.parametrize("other", ["market_maker", "per_unit", "base"])
def test_net_at_another_tier_equals_a_replay_at_that_tier(by_tier, other):
    r = by_tier["base"]
    got = net_pnl_at(r, other)
    want = by_tier[other].episodes.sort("episode")["pnl"].to_numpy()
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-15)
    # the whole result repriced: every metric as the replay at that tier
    a, b = summarize(reprice(r, other)), summarize(by_tier[other])
    for k, v in b.items():
        if isinstance(v, float):
            assert a[k] == pytest.approx(v, rel=1e-9, abs=1e-15, nan_ok=True), k
        elif k != "per_episode":
            assert a[k] == v, k
    for col, stats in b["per_episode"].items():
        assert a["per_episode"][col]["mean"] == pytest.approx(stats["mean"], rel=1e-9, abs=1e-15)
    np.testing.assert_allclose(reprice(r, other).records["equity"],
                               by_tier[other].records["equity"], rtol=1e-9, atol=1e-15)


def test_unknown_fee_tier_lists_the_instrument_tiers(by_tier):
    with pytest.raises(InputError, match=r"unknown fee tier.*expected one of base, "
                                         r"market_maker, per_unit, got 'nope'"):
        TIERED.fees("nope")
    with pytest.raises(InputError, match="expected one of base, got 'market_maker'"):
        LINEAR.fees("market_maker")
    with pytest.raises(InputError, match="unknown fee tier"):
        net_pnl_at(by_tier["base"], "nope")
    with pytest.raises(InputError, match="unknown fee tier"):
        _two_episodes("nope")


def test_base_tier_rules():
    # no tiers: base is maker_fee/taker_fee as fractions of value
    assert LINEAR.fees() == FeeTier(maker_fee=-0.0001, taker_fee=0.0005,
                                    source="the instrument's maker_fee / taker_fee")
    # a value-basis base must agree with maker_fee/taker_fee where both are given
    with pytest.raises(ValidationError, match="differs from fee_tiers.base.maker_fee"):
        Instrument(tick_size=0.1, lot_size=1.0, maker_fee=0.001,
                   fee_tiers={"base": {"maker_fee": 0.0002, "taker_fee": 0.0, "source": "x"}})
    # a per-share base overrides the value approximation
    goog = builtin_datasets()["lobster-goog-2012-06-21"].instrument
    assert goog.fees().basis == "quantity" and goog.fees().taker_fee == 0.003
    assert goog.maker_fee == -0.0000035


def test_every_registered_instrument_has_base_and_market_maker_tiers_with_sources():
    for name, spec in builtin_datasets().items():
        inst = spec.instrument
        assert {"base", "market_maker"} <= set(inst.fee_tiers), name
        for tier in ("base", "market_maker"):
            assert inst.fees(tier).source.strip(), (name, tier)
        assert inst.fees("market_maker").maker_fee <= inst.fees("base").maker_fee, name
    usdm = builtin_datasets()["binance-usdm-btcusdt"].instrument.fees("market_maker")
    assert (usdm.maker_fee, usdm.taker_fee, usdm.basis) == (-0.00005, 0.00017, "value")


def test_episodes_default_to_five_minutes():
    assert BacktestConfig().episode_s == 300.0
    assert BacktestConfig().fee_tier == "base"
