"""Data: raw exchange files -> canonical events -> a prepared dataset (grid, features, targets,
regimes, splits); see :mod:`cmm.data.prepare`."""

# The files of a prepared dataset's folder; its writer (prepare) and its readers use these names.
META_FILE = "meta.json"
STEPS_FILE = "steps.parquet"
FEATURES_FILE = "features.parquet"
SAMPLES_FILE = "samples.parquet"
