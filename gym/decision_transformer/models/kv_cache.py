"""Sliding-window attention over DT tokens, and the rolling key/value cache that rolls it out.

A DT lays out each timestep as three tokens, ``(R_t, s_t, a_t)`` at indices ``3t, 3t+1, 3t+2``. In
``window`` attention a token of step ``t`` sees the tokens of its own step (causally) and of the
``K - 1`` steps before it, i.e. token indices ``>= 3 (t - K + 1)``: a banded causal mask. Because
each token's keys and values then depend only on a fixed stretch of history, they never change once
computed, so a rollout can keep them in a ring buffer per layer and feed only the new tokens of each
env step, ``(a_{t-1}, R_t, s_t)``, giving the same actions as a forward pass over the whole episode
prefix with the banded mask. (In ``full`` attention the same cache is exact while the window is
still filling, ``t < K``: nothing has slid out yet.)

The step path lives here rather than in the backbones: it reads their submodules (projections,
norms, rotary tables) and reuses them as they are, so the training code stays untouched.
"""

from __future__ import annotations

import torch

TOKENS_PER_STEP = 3  # R_t, s_t, a_t
_EMPTY = -(2**40)  # the position of a ring slot that holds nothing yet


def window_mask(
    attention_mask: torch.Tensor | None, T: int, window: int, device: torch.device
) -> torch.Tensor:
    """Boolean ``[B or 1, 1, T, T]`` mask (True = may attend): banded causal over ``window``
    timesteps of :data:`TOKENS_PER_STEP` tokens, padded keys hidden. As in the backbones' causal
    masks, every query also sees itself, so a padded query that sees no real key stays finite."""
    pos = torch.arange(T, device=device)
    lo = (pos // TOKENS_PER_STEP - window + 1) * TOKENS_PER_STEP  # earliest key of each query
    band = (pos[None, :] <= pos[:, None]) & (pos[None, :] >= lo[:, None])
    if attention_mask is None:
        return band[None, None]
    eye = torch.eye(T, dtype=torch.bool, device=device)
    return (band & attention_mask.bool()[:, None, None, :]) | eye


def band_matters(T: int, window: int | None) -> bool:
    """Whether a window of ``window`` steps hides anything from ``T`` tokens: only once a segment
    is longer than the window. Segments of exactly K steps (the default ``--segment_len``) keep the
    plain causal mask, so window-mode training at S = K is today's training bit for bit."""
    return bool(window) and T > TOKENS_PER_STEP * window


class RollingKVCache:
    """Per-layer keys and values of the recent tokens of ``batch`` episodes stepped in lockstep.

    A ring of ``3K + 2`` slots: the ``3K - 1`` tokens a new state token can see plus room for the
    three tokens fed at each step, written before they attend. Every row shares the same slot
    positions (episodes advance together; a finished one stays as a padded row, so shapes never
    change). ``slot_pos`` holds the absolute token index in each slot, ``_EMPTY`` before any.
    """

    def __init__(self, n_layer: int, window: int, batch: int, device: torch.device | str):
        self.window = window
        self.batch = batch
        self.size = TOKENS_PER_STEP * window + 2
        self.device = torch.device(device)
        self.k: list[torch.Tensor | None] = [None] * n_layer  # [N, Hkv, size, hd] each
        self.v: list[torch.Tensor | None] = [None] * n_layer
        self.slot_pos = torch.full((self.size,), _EMPTY, dtype=torch.long, device=self.device)
        self.steps = 0  # env steps fed so far

    def advance(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Positions, ring slots and attention mask ``[3, size]`` of the next step's tokens
        ``(a_{t-1}, R_t, s_t)``. At ``t = 0`` there is no previous action: its slot gets a dummy
        token at position -1 that only ever sees itself and that no real token sees."""
        t = self.steps
        pos = torch.arange(3 * t - 1, 3 * t + 2, device=self.device)
        slots = pos % self.size
        self.slot_pos[slots] = pos
        self.steps += 1
        kp, qp = self.slot_pos[None, :], pos[:, None]
        step = torch.div(qp, TOKENS_PER_STEP, rounding_mode="floor")
        lo = (step - self.window + 1) * TOKENS_PER_STEP
        mask = ((kp >= 0) & (kp <= qp) & (kp >= lo)) | (kp == qp)
        return pos, slots, mask

    def write(self, layer: int, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
        """Store the new tokens' ``k, v [N, Hkv, n, hd]`` in ``slots``; returns the whole ring."""
        if self.k[layer] is None:  # allocated at the first step, in the dtype autocast gives
            shape = (k.shape[0], k.shape[1], self.size, k.shape[3])
            self.k[layer] = k.new_zeros(shape)
            self.v[layer] = v.new_zeros(shape)
        self.k[layer].index_copy_(2, slots, k.to(self.k[layer].dtype))
        self.v[layer].index_copy_(2, slots, v.to(self.v[layer].dtype))
        return self.k[layer], self.v[layer]


@torch.no_grad()
def backbone_step(
    backbone: torch.nn.Module, x: torch.Tensor, cache: RollingKVCache
) -> torch.Tensor:
    """Feed one env step's tokens ``x [N, 3, D]`` (``a_{t-1}, R_t, s_t``) through ``backbone`` with
    its rolling cache; returns the final hidden state of the state token, ``[N, D]``.

    Only the state token goes through the last layer's attention output, MLP and final norm: the
    other two need just their keys and values there, for later steps."""
    from .qwen3_transformer import Qwen3Transformer
    from .trajectory_gpt2 import TrajectoryGPT2

    pos, slots, mask = cache.advance()
    hidden = ~mask  # what each new token may not see, once for every layer
    if isinstance(backbone, Qwen3Transformer):
        # Positions keep counting through the episode (scores depend only on offsets). The
        # table grows in whole chunks: regrowing it by three tokens a step would redo it each step.
        need = TOKENS_PER_STEP * cache.steps
        cos, sin = backbone.rotary.tables(-(-need // 1024) * 1024)
        rope = cos[pos.clamp(min=0)], sin[pos.clamp(min=0)]
        layers, final_norm, step = backbone.layers, backbone.norm, _qwen3_layer_step
    elif isinstance(backbone, TrajectoryGPT2):
        rope = None
        layers, final_norm, step = backbone.h, backbone.ln_f, _gpt2_layer_step
    else:
        raise TypeError(f"no cached step for a {type(backbone).__name__} backbone")
    last = len(layers) - 1
    for i, layer in enumerate(layers):
        x = step(layer, x, rope, cache, i, slots, hidden, i == last)
    return final_norm(x[:, -1])


def _attend(q, k, v, hidden, last_only):
    """``q [N, H, n, hd]`` against the whole ring ``k, v [N, Hkv, size, hd]``; ``hidden [n, size]``
    marks the slots a query may not see.

    Two batched matmuls rather than SDPA: for a handful of queries CPU's flash kernel costs ~1 ms
    a call at K=100, several times these. Query heads sharing a key/value head are stacked along
    the rows (grouped-query attention without repeating K/V), as in ``grouped_attention``.
    """
    if last_only:
        hidden = hidden[-1:]
    N, H, n, hd = q.shape
    Hkv, R = k.shape[1], k.shape[2]
    scores = (q.reshape(N, Hkv, -1, hd) @ k.transpose(-1, -2)).view(N, H, n, R)
    scores = scores.float().mul_(hd**-0.5).masked_fill_(hidden, float("-inf"))
    probs = scores.softmax(-1).to(v.dtype)  # every query sees itself: no empty rows
    return (probs.view(N, Hkv, -1, R) @ v).view(N, H, n, hd)


def _qwen3_layer_step(layer, x, rope, cache, i, slots, hidden, last_only):
    from .qwen3_transformer import apply_rotary

    attn = layer.self_attn
    N, n, _ = x.shape
    h = layer.input_layernorm(x)
    cos, sin = rope
    k = attn.k_norm(attn.k_proj(h).view(N, n, attn.n_kv_head, attn.head_dim))
    k = apply_rotary(k, cos, sin)
    v = attn.v_proj(h).view(N, n, attn.n_kv_head, attn.head_dim)
    k_all, v_all = cache.write(i, slots, k.transpose(1, 2), v.transpose(1, 2))
    if last_only:  # only the state token's output is needed past this point
        x, h, cos, sin, n = x[:, -1:], h[:, -1:], cos[-1:], sin[-1:], 1
    q = attn.q_norm(attn.q_proj(h).view(N, n, attn.n_head, attn.head_dim))
    q = apply_rotary(q, cos, sin).transpose(1, 2)
    y = _attend(q, k_all.to(q.dtype), v_all.to(q.dtype), hidden, last_only)
    x = x + attn.o_proj(y.transpose(1, 2).reshape(N, n, -1))
    return x + layer.mlp(layer.post_attention_layernorm(x))


def _gpt2_layer_step(block, x, rope, cache, i, slots, hidden, last_only):
    attn = block.attn
    N, n, D = x.shape
    H = attn.n_head
    q, k, v = attn.c_attn(block.ln_1(x)).split(D, dim=2)
    k, v = (t.view(N, n, H, D // H).transpose(1, 2) for t in (k, v))
    k_all, v_all = cache.write(i, slots, k, v)
    if last_only:
        x, q, n = x[:, -1:], q[:, -1:], 1
    q = q.reshape(N, n, H, D // H).transpose(1, 2)
    y = _attend(q, k_all.to(q.dtype), v_all.to(q.dtype), hidden, last_only)
    x = x + attn.c_proj(y.transpose(1, 2).reshape(N, n, D))
    return x + block.mlp(block.ln_2(x))
