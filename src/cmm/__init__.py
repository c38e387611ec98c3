"""cmm: Cooperative Market Making.

Distils an order-book LLM into a mixture of small, fast experts that quote as a market maker,
and evaluates them on real exchange data in an hftbacktest replay.
"""

import os as _os

# There is no model hub here; transformers must never try to reach one unless a user opts in.
_os.environ.setdefault("HF_HUB_OFFLINE", "1")
_os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

__version__ = "0.1.0"
