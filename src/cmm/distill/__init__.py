"""OFDD: orthogonal feature decomposition distillation (method.md, "OFDD").

Stage ``cmm distill``: students per (task, regime[, layer group]) learning the teacher's
layer-group features through a learned projection, its predictions and the truth; the
distillation baselines and the ablations beside them. Modules, in reading order: ``students``
(networks, specs, parameter counting), ``train`` (loss and fit of one student), ``executor``
(where independent fits run), ``plan`` (which students, on which samples), ``pipeline`` (the
stage: inputs checked, artefact written).
"""

# The files the distill stage leaves in its folder (its outputs in the stage contract,
# cmm.pipeline.graph.Stage.outputs); its writer and its readers use these names.
META_FILE = "experts.json"
TENSORS_FILE = "experts.safetensors"
OUTPUTS = (META_FILE, TENSORS_FILE)
