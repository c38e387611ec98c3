"""Latency fields carry their unit in their name (``p50_us`` for the Quoter, ``p50_ms`` for the
teacher, issue "one owner for each idea"), and every reader still takes the older bare names of
run folders and caches already on disk, as the same figure (:func:`cmm.metrics.latency_field`)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cmm.metrics import latency_field

TIMES_NS = np.array([1_000, 2_000, 3_000, 4_000, 5_000], np.int64)  # 1..5 us


def test_latency_field_reads_the_unit_name_then_the_old_bare_one():
    assert latency_field({"p50_us": 3.5}, "p50", "us") == 3.5
    assert latency_field({"p50": 3.5}, "p50", "us") == 3.5  # written before the convention
    assert latency_field({"unit": "us", "p50": 3.5}, "p50", "us") == 3.5
    assert latency_field({"p50_us": 3.5, "p50": 9.0}, "p50", "us") == 3.5  # the new name wins
    assert latency_field({"p99_us": 1.0}, "p50", "us") is None
    with pytest.raises(ValueError, match="stored in ms"):
        latency_field({"unit": "ms", "p50": 3.5}, "p50", "us")
    with pytest.raises(ValueError, match="latency unit"):
        latency_field({"p50": 3.5}, "p50", "µs")


def test_the_quoter_summary_names_its_unit_and_old_mixtures_read_alike():
    from cmm.moe.latency import summarise_ns
    from cmm.moe.pipeline import evaluation_table
    from cmm.moe.policy import stored_latency

    s = summarise_ns(TIMES_NS)
    assert s == {"p50_us": 3.0, "p99_us": pytest.approx(4.96), "mean_us": 3.0, "min_us": 1.0,
                 "n": 5}
    old = {"unit": "us", "p50": 3.0, "p99": s["p99_us"], "mean": 3.0, "min": 1.0, "n": 5}
    new_meta = {"latency": s, "latency_by_gate": {"hajek": s}}
    old_meta = {"latency": old, "latency_by_gate": {"hajek": old}}
    for gate in ("hajek", "router"):  # router: the mixture's one stored figure
        assert stored_latency(new_meta, gate) == stored_latency(old_meta, gate) == 3_000
    report = {"rows": [], "regime_counts": {}}
    note = evaluation_table({**report, "latency": s})
    assert "p50 3.0 us, p99 5.0 us over 5 decisions" in note
    assert evaluation_table({**report, "latency": old}) == note


class _Model(torch.nn.Module):
    """What measure_latency reads of a teacher besides its timed decisions."""

    def __init__(self):
        super().__init__()
        self.adapter = torch.nn.Linear(1, 1)


def test_the_teacher_latency_names_its_unit_and_old_files_read_alike(tmp_path, monkeypatch):
    import cmm.teacher.latency as tl
    from cmm.teacher.policy import teacher_latency_ns

    monkeypatch.setattr(tl, "_time_decisions", lambda model, w, r, wu: TIMES_NS * 1_000)
    lat = tl.measure_latency(_Model(), np.zeros((1, 2, 3), np.float32), repeats=5, warmup=0)
    for threads in ("one_thread", "all_threads"):  # 1..5 ms
        got = lat[threads]
        assert (got["p50_ms"], got["mean_ms"]) == (3.0, 3.0)
        assert got["p99_ms"] == pytest.approx(4.96)
    assert lat["charged_ns"] == 3_000_000

    old = {"unit": "ms", "one_thread": {"threads": 1, "p50": 12.3456789, "p99": 20.0},
           "all_threads": {"threads": 2, "p50": 4.5678901, "p99": 9.0}}
    new = {k: {"threads": v["threads"], "p50_ms": v["p50"], "p99_ms": v["p99"]}
           for k, v in old.items() if k != "unit"}
    assert tl.charged_ns(old) == tl.charged_ns(new) == 4_567_890
    for measured in (old, new):
        (tmp_path / "latency.json").write_text(json.dumps(measured))
        assert teacher_latency_ns(tmp_path) == 4_567_890
        assert teacher_latency_ns(tmp_path, threads="one_thread") == 12_345_679
