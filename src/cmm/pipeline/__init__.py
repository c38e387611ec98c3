"""The end-to-end run (``cmm run``): every stage in order, each skipped when its artefact for
the same inputs and settings is already there (``stages``); the robustness scenarios
(``stress``); which policies are backtested (``policies``); the orchestration (``run``)."""
