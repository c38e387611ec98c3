"""The normalized fluorescent probe (method.md, "Normalized fluorescent probe"): which blocks of
the teacher carry which task, per regime. Modules: ``fluorescent`` (the probe), ``plot``,
``pipeline`` (the stage)."""

# The files the probe stage leaves in its folder (its outputs in the stage contract,
# cmm.pipeline.graph.Stage.outputs); its writer and its readers use these names.
PROBE_FILE = "probe.json"
FIGURE_FILE = "probe.png"
OUTPUTS = (PROBE_FILE, FIGURE_FILE)
