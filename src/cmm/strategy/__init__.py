"""Market-making policies and the trapezoidal quote ladder.

- :mod:`cmm.strategy.policy`: the policy interface (predictions or quotes, latency) and registry;
- :mod:`cmm.strategy.ladder`: the ladder (numba kernel + :func:`~cmm.strategy.ladder.quote_ladder`);
- :mod:`cmm.strategy.baselines`: ``fixed``, ``as`` (Avellaneda-Stoikov) and ``oracle``.
"""
