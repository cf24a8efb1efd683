"""GPT-2 without position embeddings: the backbone of the original Decision Transformer.

The original repo carried a modified copy of transformers' GPT-2 whose only functional change was
dropping the learned position embedding (time enters the DT through ``embed_timestep``). This is a
small re-implementation of that model. Parameter names and shapes equal ``transformers.GPT2Model``
(``h.N.attn.c_attn.weight`` is ``[in, out]`` as in GPT-2's Conv1D), so weights move between the two,
and the test suite checks it equals ``GPT2Model`` with zeroed position embeddings.

One block implementation serves training, full-window evaluation and cached rollout steps (as in
Llama's ``model.py``): ``forward(..., cache=None)``. Given a :class:`~.kv_cache.RollingKVCache`,
the backbone takes one env step's three new tokens, each layer's attention stores their keys and
values in the cache and attends over its ring, and the last layer runs only the state token past
its keys and values (``last_only``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .kv_cache import RollingKVCache, band_matters, window_mask

ACTIVATIONS = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "gelu_new": lambda: nn.GELU(approximate="tanh"),
    "gelu_pytorch_tanh": lambda: nn.GELU(approximate="tanh"),
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "tanh": nn.Tanh,
}


@dataclass
class GPT2Config:
    n_embd: int = 128
    n_layer: int = 3
    n_head: int = 1
    n_inner: int | None = None  # None -> 4 * n_embd
    activation_function: str = "relu"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    window: int | None = None  # sliding-window attention over this many timesteps (kv_cache.py)


class Conv1D(nn.Module):
    """GPT-2's linear layer: weight stored ``[in, out]``, so state dicts match transformers'."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out).normal_(std=0.02))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addmm(self.bias, x.reshape(-1, x.shape[-1]), self.weight).view(
            *x.shape[:-1], -1
        )


class Attention(nn.Module):
    def __init__(self, cfg: GPT2Config, layer_id: int):
        super().__init__()
        self.layer_id = layer_id  # which of a rollout cache's rings is this layer's
        self.n_head = cfg.n_head
        self.c_attn = Conv1D(cfg.n_embd, 3 * cfg.n_embd)
        self.c_proj = Conv1D(cfg.n_embd, cfg.n_embd)
        self.attn_pdrop = cfg.attn_pdrop
        self.resid_dropout = nn.Dropout(cfg.resid_pdrop)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        cache: RollingKVCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """``x [B, T, D]`` -> ``[B, T, D]``, or ``[B, 1, D]`` for the last token alone when
        ``last_only`` (the other tokens need only their keys and values, for later steps)."""
        B, T, D = x.shape
        q, k, v = self.c_attn(x).split(D, dim=2)
        # [B, T, D] -> [B, H, T, D/H]
        q, k, v = (t.view(B, T, self.n_head, D // self.n_head).transpose(1, 2) for t in (q, k, v))
        if cache is not None:
            y = cache.attend(self.layer_id, q[:, :, -1:] if last_only else q, k, v)
        else:
            # No mask (a batch without padding): is_causal, which lets CUDA pick the flash
            # kernel; an explicit mask of any kind rules it out.
            y = F.scaled_dot_product_attention(
                q,
                k,
                v,
                attn_mask=mask,
                dropout_p=self.attn_pdrop if self.training else 0.0,
                is_causal=mask is None,
            )
        y = y.transpose(1, 2).reshape(B, -1, D)
        return self.resid_dropout(self.c_proj(y))


class MLP(nn.Module):
    def __init__(self, cfg: GPT2Config):
        super().__init__()
        inner = cfg.n_inner or 4 * cfg.n_embd
        self.c_fc = Conv1D(cfg.n_embd, inner)
        self.c_proj = Conv1D(inner, cfg.n_embd)
        self.act = ACTIVATIONS[cfg.activation_function]()
        self.dropout = nn.Dropout(cfg.resid_pdrop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(self.act(self.c_fc(x))))


class Block(nn.Module):
    def __init__(self, cfg: GPT2Config, layer_id: int):
        super().__init__()
        self.ln_1 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.attn = Attention(cfg, layer_id)
        self.ln_2 = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        self.mlp = MLP(cfg)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None,
        cache: RollingKVCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        h = self.attn(self.ln_1(x), mask, cache, last_only)
        x = (x[:, -1:] if last_only else x) + h
        return x + self.mlp(self.ln_2(x))


def causal_padding_mask(attention_mask: torch.Tensor | None, T: int, device) -> torch.Tensor | None:
    """Boolean ``[B, 1, T, T]`` mask: causal, and padded keys hidden; None when plain causal
    attention suffices (a batch without padding: the sampler knows it in numpy and the model
    passes None), so that attention runs ``is_causal`` instead of reading a mask.

    A query that sees no real key (a padding position at the left edge) would get NaN from a softmax
    over nothing; letting it see itself keeps its (ignored) output finite, as transformers does.
    """
    if attention_mask is None:
        return None
    causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    keys = attention_mask.bool()[:, None, None, :]  # [B, 1, 1, T]
    eye = torch.eye(T, dtype=torch.bool, device=device)
    return (causal & keys) | eye


class TrajectoryGPT2(nn.Module):
    """``forward(inputs_embeds [B, T, D], attention_mask [B, T]) -> hidden states [B, T, D]``;
    with a rollout ``cache``: a step's new tokens ``[N, n, D]`` -> the last one's ``[N, 1, D]``
    (see :class:`~.kv_cache.RollingKVCache`)."""

    def __init__(self, cfg: GPT2Config):
        super().__init__()
        self.config = cfg
        self.drop = nn.Dropout(cfg.embd_pdrop)
        self.h = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer))
        self.ln_f = nn.LayerNorm(cfg.n_embd, eps=cfg.layer_norm_epsilon)
        # GPT-2 scales the init of residual output projections by 1/sqrt(2 * n_layer).
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * cfg.n_layer))

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: RollingKVCache | None = None,
    ) -> torch.Tensor:
        if cache is not None:
            return self._step(inputs_embeds, cache)
        T = inputs_embeds.shape[1]
        if band_matters(T, self.config.window):
            mask = window_mask(attention_mask, T, self.config.window, inputs_embeds.device)
        else:
            mask = causal_padding_mask(attention_mask, T, inputs_embeds.device)
        x = self.drop(inputs_embeds)
        for block in self.h:
            x = block(x, mask)
        return self.ln_f(x)

    def _step(self, x: torch.Tensor, cache: RollingKVCache) -> torch.Tensor:
        """One env step's new tokens ``x [N, n, D]`` (all three, or a part of the step) through
        the same blocks, with the cache."""
        cache.advance(x.shape[1])  # no positions needed: time enters through the DT's embeddings
        x = self.drop(x)
        last = len(self.h) - 1
        for i, block in enumerate(self.h):
            # .forward: a block compiled for training (--compile) stays eager here, where its
            # graph would be specialised anew for each layer's cache and step.
            x = block.forward(x, None, cache, last_only=i == last)
        return self.ln_f(x)
