"""cmm: Cooperative Market Making.

Distils an order-book LLM into a mixture of small, fast experts that quote as a market maker,
and evaluates them on real exchange data in an hftbacktest replay.
"""

import os as _os

# There is no model hub here; transformers must never try to reach one unless a user opts in.
_os.environ.setdefault("HF_HUB_OFFLINE", "1")
_os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# OpenMP threads that spin while waiting steal the other core on a small shared machine
# (a teacher training step measured 5x slower); must be set before torch is imported.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

__version__ = "0.1.0"


def __getattr__(name: str):
    # `cmm.Quoter` without paying numba's import cost on every `import cmm`.
    if name == "Quoter":
        from cmm.moe import Quoter

        return Quoter
    raise AttributeError(f"module 'cmm' has no attribute {name!r}")
