"""The teacher LLM (method.md, Teacher LLM): a pretrained causal LM read through a GPT4TS patch
adapter, fitted to predict mid-price return, spread and volume; its per-block features feed the
probe and the students.

Stages: ``backbone`` (load and cache the LLM), ``model`` (adapter, heads), ``fit`` (training with
early stopping), ``evaluate`` (metrics and baselines), ``latency``, ``features``, ``store``
(the self-describing folder), ``pipeline`` (what the CLI runs).
"""

import os as _os

# The files the teacher stage leaves in its folder, and the features stage in its ``features/``
# (their outputs in the stage contract, cmm.pipeline.graph.Stage.outputs); writers and readers
# use these names.
META_FILE = "teacher.json"
WEIGHTS_FILE = "weights.safetensors"
METRICS_FILE = "metrics.json"
LATENCY_FILE = "latency.json"
OUTPUTS = (META_FILE, WEIGHTS_FILE, METRICS_FILE, LATENCY_FILE)
FEATURES_DIR = "features"
FEATURES_INDEX_FILE = "index.json"
FEATURES_OUTPUTS = (FEATURES_INDEX_FILE,)

# On a machine whose cores are shared, OpenMP threads that spin while waiting make torch several
# times slower (measured: a SmolLM2 training step 10 s instead of 1.8 s on 2 busy cores). Only
# effective when set before torch is first imported.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
