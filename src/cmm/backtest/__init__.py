"""Market-making backtest on hftbacktest: plan episodes, replay events with a policy, measure.

- :mod:`cmm.backtest.runner`: :func:`~cmm.backtest.runner.run_backtest` (a prepared dataset and
  a policy) and :func:`~cmm.backtest.runner.replay` (one session's events);
- :mod:`cmm.backtest.engine`: the numba replay kernel and hftbacktest asset builder;
- :mod:`cmm.backtest.metrics`: EPnL, MAP, PnLMAP, RPT, Sharpe, drawdown, volume, fees, fills;
- :mod:`cmm.backtest.artefacts`: the one writer of a backtest's files (``cmm run`` and
  ``cmm backtest`` both);
- :mod:`cmm.backtest.plots`: one PNG per episode.
"""
