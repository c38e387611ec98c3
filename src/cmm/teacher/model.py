"""The teacher: order-book window -> patches -> LLM backbone -> pooled state -> three heads.

Read top to bottom: the patch adapter, the typed output, then the model. Shapes in comments:
``B`` windows, ``W`` steps, ``F`` features, ``P`` patches, ``d`` backbone width, ``L`` blocks.

The adapter follows GPT4TS (Zhou et al., 2023): the window is cut into patches along time, each
patch is flattened and mapped by one linear layer to the backbone's width, and the sequence of
patch vectors goes into the backbone as ``inputs_embeds`` (no tokenizer). Heads read the mean
(or last) over positions of the backbone's final hidden state (after its final norm) and predict
the standardised targets; ``predict`` returns them in the data's units. With ``level_skip`` a
linear skip from the window's level (each feature's last value and trailing means, the ridge
yardstick's inputs) is added to the heads: the backbone explains what the level does not.
The backbone runs under bf16 autocast where ``cmm.teacher.device`` says it helps; the read-out
stays fp32.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from cmm.config import TeacherConfig
from cmm.errors import InputError
from cmm.teacher.backbone import Backbone
from cmm.teacher.device import autocast
from cmm.vocabulary import TASKS


class PatchAdapter(nn.Module):
    """(B, W, F) windows -> (B, P, d) patch embeddings, P = 1 + (W - patch_len) // stride."""

    def __init__(self, window: int, n_features: int, patch_len: int, stride: int, width: int,
                 embed_rms: float = 1.0) -> None:
        super().__init__()
        if patch_len > window:
            raise InputError("patch longer than the window", field="teacher.patch_len",
                             expected=f"<= window ({window})", got=patch_len)
        self.window, self.n_features = window, n_features
        self.patch_len, self.stride = patch_len, stride
        self.num_patches = 1 + (window - patch_len) // stride
        self.proj = nn.Linear(patch_len * n_features, width)
        # Inputs are standardised (unit variance): start the embeddings at the RMS of the
        # backbone's own token embeddings, so the first block sees inputs of a familiar scale.
        nn.init.normal_(self.proj.weight, std=embed_rms / (patch_len * n_features) ** 0.5)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 3 or x.shape[1] != self.window or x.shape[2] != self.n_features:
            raise InputError("window batch of the wrong shape", field="windows",
                             expected=f"(B, {self.window}, {self.n_features})",
                             got=tuple(x.shape))
        patches = x.unfold(1, self.patch_len, self.stride)  # (B, P, F, patch_len)
        patches = patches.transpose(2, 3).reshape(x.shape[0], self.num_patches, -1)
        return self.proj(patches)  # (B, P, d)


def window_level(x: torch.Tensor, spans: tuple[int, ...]) -> torch.Tensor:
    """(B, W, F) -> (B, (1 + len(spans)) F): the last step's features, then their means over the
    last ``min(k, W)`` steps for each ``k`` in ``spans``; the torch twin of
    ``cmm.yardsticks.summary_features`` (same order, tested equal)."""
    W = x.shape[1]
    parts = [x[:, -1]] + [x[:, W - min(int(k), W):].mean(dim=1) for k in spans]
    return torch.cat(parts, dim=-1)


def _make_head(width: int, hidden: int) -> nn.Module:
    if hidden == 0:
        return nn.Linear(width, 1)
    return nn.Sequential(nn.Linear(width, hidden), nn.GELU(), nn.Linear(hidden, 1))


@dataclass
class TeacherOutput:
    """``y``: (B, 3) standardised predictions (mid, spread, volume). ``hidden``: (B, L, d) the
    pooled output of every block, when asked for."""

    y: torch.Tensor
    hidden: torch.Tensor | None = None


class _Replay(nn.Module):
    """Stands in for a block during ``forward_from``: returns a given tensor, or its input."""

    def __init__(self, value: torch.Tensor | None, as_tuple: bool) -> None:
        super().__init__()
        self.value, self.as_tuple = value, as_tuple

    def forward(self, hidden_states, *args, **kwargs):
        out = hidden_states if self.value is None else self.value
        return (out,) if self.as_tuple else out


class TeacherModel(nn.Module):
    def __init__(self, backbone: Backbone, window: int, n_features: int,
                 config: TeacherConfig, target_mean=None, target_std=None) -> None:
        super().__init__()
        self.config = config
        self.backbone_info = backbone.describe()
        self.body = backbone.body
        self.blocks = backbone.blocks
        embed = backbone.lm.get_input_embeddings()
        embed_rms = float(embed.weight.detach().pow(2).mean().sqrt()) if embed is not None else 1.0
        self.adapter = PatchAdapter(window, n_features, config.patch_len, config.patch_stride,
                                    backbone.width, embed_rms)
        self.heads = nn.ModuleList(_make_head(backbone.width, config.head_hidden) for _ in TASKS)
        self.level_head = None
        if config.level_skip:
            # Set once by the fit's ridge (the closed-form least squares on every training
            # window, its penalty chosen on validation; zero until then) and held fixed:
            # mini-batch steps on it only walk away from that optimum (on the GOOG day they
            # raised the validation loss at every learning rate tried).
            self.level_head = nn.Linear((1 + len(config.level_spans)) * n_features, len(TASKS))
            nn.init.zeros_(self.level_head.weight)
            nn.init.zeros_(self.level_head.bias)
            self.level_head.requires_grad_(False)
        mean = torch.zeros(len(TASKS)) if target_mean is None else torch.as_tensor(target_mean)
        std = torch.ones(len(TASKS)) if target_std is None else torch.as_tensor(target_std)
        self.register_buffer("target_mean", mean.float().clone())
        self.register_buffer("target_std", std.float().clone())
        # Per-dimension standardisation of the pooled state before the heads, set from training
        # windows by the fit (``fit.init_heads``): LLM hidden states have a few dimensions
        # thousands of times larger than the rest.
        self.register_buffer("feat_mean", torch.zeros(backbone.width))
        self.register_buffer("feat_std", torch.ones(backbone.width))
        self._block_returns_tuple: bool | None = None

    # -- shapes --------------------------------------------------------------------------------
    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_patches(self) -> int:
        return self.adapter.num_patches

    @property
    def width(self) -> int:
        return int(self.backbone_info["width"])

    # -- forward -------------------------------------------------------------------------------
    def _pool(self, h: torch.Tensor) -> torch.Tensor:  # (B, P, d) -> (B, d)
        return h[:, -1] if self.config.pooling == "last" else h.mean(dim=1)

    def pooled_final(self, last: torch.Tensor) -> torch.Tensor:  # (B, P, d) -> (B, d)
        """What the heads read: the pooled final state, standardised per dimension."""
        return (self._pool(last) - self.feat_mean) / self.feat_std

    def level(self, x: torch.Tensor) -> torch.Tensor:  # (B, W, F) -> (B, (1 + S) F)
        return window_level(x, self.config.level_spans)

    def _read_out(self, last: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        """(B, P, d) final state [+ (B, W, F) windows for the level skip] -> (B, 3), in fp32."""
        with torch.autocast(device_type=last.device.type, enabled=False):
            pooled = self.pooled_final(last.float())
            y = torch.cat([head(pooled) for head in self.heads], dim=-1)
            if self.level_head is not None:
                if x is None:
                    raise InputError("this teacher's heads read the window's level too",
                                     field="x", expected="the (B, W, F) windows", got=None)
                y = y + self.level_head(self.level(x.float()))
        return y

    def _body(self, embeds: torch.Tensor) -> torch.Tensor:
        with autocast(self.config.precision, embeds.device, len(embeds)):
            return self.body(inputs_embeds=embeds, use_cache=False).last_hidden_state

    def final_state(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's final hidden state (B, P, d) for windows x."""
        return self._body(self.adapter(x))

    @contextlib.contextmanager
    def record_blocks(self) -> Iterator[list[torch.Tensor]]:
        """Collect every block's output tokens (B, P, d), in order, during the forward passes
        run inside the block."""
        outputs: list[torch.Tensor] = []

        def hook(_module, _args, out):
            if self._block_returns_tuple is None:
                self._block_returns_tuple = isinstance(out, tuple)
            outputs.append(out[0] if isinstance(out, tuple) else out)

        handles = [b.register_forward_hook(hook) for b in self.blocks]
        try:
            yield outputs
        finally:
            for h in handles:
                h.remove()

    def forward(self, x: torch.Tensor, hidden: bool = False) -> TeacherOutput:
        embeds = self.adapter(x)  # (B, P, d)
        if not hidden:
            return TeacherOutput(self._read_out(self._body(embeds), x))
        with self.record_blocks() as blocks:
            last = self._body(embeds)
        pooled = torch.stack([self._pool(h) for h in blocks], dim=1)  # (B, L, d)
        return TeacherOutput(self._read_out(last, x), pooled)

    def block_outputs(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Every block's output tokens [(B, P, d)] * L and the standardised predictions (B, 3)."""
        with self.record_blocks() as blocks:
            last = self._body(self.adapter(x))
        return list(blocks), self._read_out(last, x)

    def forward_from(self, block: int, h: torch.Tensor, x: torch.Tensor | None = None
                     ) -> torch.Tensor:
        """Predictions (B, 3) when block ``block`` outputs ``h`` (B, P, d): the blocks before
        and at ``block`` are skipped (replayed), the rest run as usual. What the probe uses to
        perturb one block without recomputing the ones below it. ``x``: the windows of the same
        rows, for the level skip (which no block changes)."""
        if self._block_returns_tuple is None:
            with torch.no_grad(), self.record_blocks():
                self._body(h[:1])
        saved = [self.blocks[i] for i in range(block + 1)]
        try:
            for i in range(block):
                self.blocks[i] = _Replay(None, self._block_returns_tuple)
            self.blocks[block] = _Replay(h, self._block_returns_tuple)
            last = self._body(torch.zeros_like(h))
        finally:
            for i, module in enumerate(saved):
                self.blocks[i] = module
        return self._read_out(last, x)

    def to_units(self, y: torch.Tensor) -> torch.Tensor:
        """Standardised predictions -> the data's units (bps, ticks, log1p volume)."""
        return y * self.target_std + self.target_mean

    def to_units_np(self, y: np.ndarray) -> np.ndarray:
        """``to_units`` for a numpy array (N, 3), wherever the model lives."""
        std = self.target_std.detach().cpu().numpy()
        mean = self.target_mean.detach().cpu().numpy()
        return (np.asarray(y, np.float64) * std + mean).astype(np.float32)

    @torch.no_grad()
    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return self.to_units(self.forward(x).y)

    # -- which parameters train -----------------------------------------------------------------
    def trainable_state(self) -> dict[str, torch.Tensor]:
        """The fitted part of the model (adapter, heads, target scaling, tuned norms or LoRA):
        everything that is not the backbone's frozen weights."""
        names = {n for n, p in self.named_parameters() if p.requires_grad}
        state = self.state_dict()
        return {k: v.detach().clone() for k, v in state.items()
                if k in names or k.startswith(("adapter.", "heads.", "level_head.", "target_",
                                               "feat_"))}


def _is_norm(module: nn.Module) -> bool:
    name = type(module).__name__.lower()
    return isinstance(module, nn.LayerNorm) or "rmsnorm" in name or "layernorm" in name


def build_teacher(backbone: Backbone, window: int, n_features: int, config: TeacherConfig,
                  target_mean=None, target_std=None) -> TeacherModel:
    """A teacher whose trainable parameters are set by ``config.finetune``: the adapter and
    heads always; plus the backbone's norm layers (``layernorm``), LoRA adapters injected
    with peft into ``config.lora_targets`` (``lora``), or both (``layernorm+lora``). The rest of
    the backbone is frozen. ``config.depth`` keeps the first blocks only."""
    for p in backbone.lm.parameters():
        p.requires_grad_(False)
    if config.depth:
        _truncate(backbone, config.depth)
    if config.finetune in ("lora", "layernorm+lora"):
        try:
            from peft import LoraConfig, inject_adapter_in_model
        except ImportError:  # pragma: no cover - peft is a dependency
            raise InputError("LoRA needs the peft package", field="teacher.finetune",
                             expected="peft installed (pip install peft)", got="lora") from None
        lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha,
                          target_modules=list(config.lora_targets), lora_dropout=0.0)
        try:
            inject_adapter_in_model(lora, backbone.body)
        except ValueError as exc:
            raise InputError(f"LoRA target modules not found in the backbone ({exc})",
                             field="teacher.lora_targets", expected="module names such as "
                             "q_proj, v_proj (Llama) or c_attn (GPT-2)",
                             got=list(config.lora_targets)) from None
        for name, p in backbone.body.named_parameters():
            p.requires_grad_("lora_" in name)
    if config.finetune in ("layernorm", "layernorm+lora"):
        for module in backbone.body.modules():
            if _is_norm(module):
                for p in module.parameters(recurse=False):
                    p.requires_grad_(True)
    model = TeacherModel(backbone, window, n_features, config, target_mean, target_std)
    return model


def _truncate(backbone: Backbone, depth: int) -> None:
    """Keep the first ``depth`` blocks (the final norm stays): GPT4TS's shallow backbone."""
    if depth > len(backbone.blocks):
        raise InputError("backbone depth beyond its blocks", field="teacher.depth",
                         expected=f"<= {len(backbone.blocks)} (0: all)", got=depth)
    del backbone.blocks[depth:]
    # transformers' Llama loops over layers[:num_hidden_layers]; describe() reports the depth
    backbone.lm.config.num_hidden_layers = depth
