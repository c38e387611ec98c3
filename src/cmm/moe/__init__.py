"""Hajek-MoE and the decision path (method.md, "Hajek-MoE").

Stage ``cmm moe``: per task, gates over the frozen experts fitted on validation; each variant
saved as a mixture (safetensors + JSON); the :class:`Quoter` runs the CMM live, one window in,
predictions, weights and ladder orders out, with no torch. Modules: ``gates``, ``mixture``
(torch form and gate fitting), ``fused`` (numpy form), ``artefact`` (save/load), ``quoter``,
``latency``, ``policy`` (the ``cmm`` backtest policy), ``pipeline`` (the stage).
"""

# The files the moe stage leaves in its folder beside one folder per mixture (its outputs in the
# stage contract, cmm.pipeline.graph.Stage.outputs); its writer and its readers use these names.
EVALUATION_FILE = "evaluation.json"
EVALUATION_TABLE_FILE = "evaluation.md"
OUTPUTS = (EVALUATION_FILE, EVALUATION_TABLE_FILE)

__all__ = ["Decision", "Quoter"]


def __getattr__(name: str):
    # the Quoter on first use: the stage graph and the report import the file names above
    # without paying numba's import cost
    if name in __all__:
        from cmm.moe import quoter

        return getattr(quoter, name)
    raise AttributeError(f"module 'cmm.moe' has no attribute {name!r}")
