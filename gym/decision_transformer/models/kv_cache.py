"""Sliding-window attention over DT tokens, and the rolling key/value cache that rolls it out.

A DT lays out each timestep as three tokens, ``(R_t, s_t, a_t)`` at indices ``3t, 3t+1, 3t+2``. In
``window`` attention a token of step ``t`` sees the tokens of its own step (causally) and of the
``K - 1`` steps before it, i.e. token indices ``>= 3 (t - K + 1)``: a banded causal mask. Because
each token's keys and values then depend only on a fixed stretch of history, they never change once
computed, so a rollout can keep them in a ring buffer per layer and feed only the new tokens of each
env step, ``(a_{t-1}, R_t, s_t)``, giving the same actions as a forward pass over the whole episode
prefix with the banded mask. (In ``full`` attention the same cache is exact while the window is
still filling, ``t < K``: nothing has slid out yet.) A DT with a return head orders a step
``(s_t, R_t, a_t)`` and may feed a step in two parts, ``(a_{t-1}, s_t)`` then ``R_t`` (the return
it samples from ``s_t``'s output): the cache counts tokens, not steps, so any split works.

The bottom of ``models/``: the backbones import these helpers, never the reverse. Each backbone has
one block that serves training, full-window evaluation and cached stepping (as Llama's
``model.py``): its ``forward(..., cache=None)`` takes a :class:`RollingKVCache`, which the
backbone advances once per env step (positions, ring slots, what each new token may see) and each
attention layer hands its new keys and values to (:meth:`RollingKVCache.attend`).
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
        # The position of the next token fed: step t's first new token, a_{t-1}, is at 3t - 1.
        self.next_pos = -1
        # The ring slots [n] and hidden slots [n, size] of the tokens being fed, set by advance().
        self.slots: torch.Tensor | None = None
        self.hidden: torch.Tensor | None = None

    @property
    def steps(self) -> int:
        """Env steps begun so far: step t's first token (a_{t-1}, position 3t - 1) begins it."""
        return (self.next_pos + 1 + TOKENS_PER_STEP - 1) // TOKENS_PER_STEP

    def advance(self, n: int = TOKENS_PER_STEP) -> torch.Tensor:
        """Feed the next ``n`` tokens (a whole step: ``(a_{t-1}, R_t, s_t)``, or a part of one):
        returns their absolute positions ``[n]`` and sets their ring ``slots`` and ``hidden [n,
        size]`` (True = a slot the token may not see), which every layer's :meth:`attend` reads.
        At ``t = 0`` there is no previous action: its slot gets a dummy token at position -1 that
        only ever sees itself and that no real token sees."""
        if not 1 <= n <= TOKENS_PER_STEP:  # the ring has room for at most one step's tokens
            raise ValueError(f"feed 1 to {TOKENS_PER_STEP} tokens at a time, not {n}")
        pos = torch.arange(self.next_pos, self.next_pos + n, device=self.device)
        slots = pos % self.size
        self.slot_pos[slots] = pos
        self.next_pos += n
        kp, qp = self.slot_pos[None, :], pos[:, None]
        step = torch.div(qp, TOKENS_PER_STEP, rounding_mode="floor")
        lo = (step - self.window + 1) * TOKENS_PER_STEP
        mask = ((kp >= 0) & (kp <= qp) & (kp >= lo)) | (kp == qp)
        self.slots, self.hidden = slots, ~mask  # inverted once for every layer
        return pos

    def write(
        self, layer: int, k: torch.Tensor, v: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store the new tokens' ``k, v [N, Hkv, n, hd]`` in ``layer``'s ring; returns the whole
        ring, ``[N, Hkv, size, hd]`` each."""
        if self.k[layer] is None:  # allocated at the first step, in the dtype autocast gives
            shape = (k.shape[0], k.shape[1], self.size, k.shape[3])
            self.k[layer] = k.new_zeros(shape)
            self.v[layer] = v.new_zeros(shape)
        self.k[layer].index_copy_(2, self.slots, k.to(self.k[layer].dtype))
        self.v[layer].index_copy_(2, self.slots, v.to(self.v[layer].dtype))
        return self.k[layer], self.v[layer]

    def attend(self, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """Write the new tokens' ``k, v [N, Hkv, m, hd]`` to ``layer``'s ring, then attend the
        queries ``q [N, H, n, hd]`` of its last ``n`` new tokens (all of them, or the last alone)
        over the ring; returns ``[N, H, n, hd]``."""
        k_all, v_all = self.write(layer, k, v)
        n = q.shape[2]
        hidden = self.hidden if n == self.hidden.shape[0] else self.hidden[-n:]
        return few_query_attention(q, k_all.to(q.dtype), v_all.to(q.dtype), hidden)


def few_query_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hidden: torch.Tensor
) -> torch.Tensor:
    """``q [N, H, n, hd]`` against ``k, v [N, Hkv, R, hd]``; ``hidden [n, R]`` marks the keys a
    query may not see, and every query must see at least one.

    Two batched matmuls rather than SDPA: for a handful of queries CPU's flash kernel costs ~1 ms
    a call at K=100, several times these. Query heads sharing a key/value head are stacked along
    the rows (grouped-query attention without repeating K/V), as in the Qwen3 backbone's
    ``grouped_attention``.
    """
    N, H, n, hd = q.shape
    Hkv, R = k.shape[1], k.shape[2]
    # [N, Hkv, H/Hkv * n, hd] @ [N, Hkv, hd, R] -> [N, H, n, R]
    scores = (q.reshape(N, Hkv, -1, hd) @ k.transpose(-1, -2)).view(N, H, n, R)
    scores = scores.float().mul_(hd**-0.5).masked_fill_(hidden, float("-inf"))
    probs = scores.softmax(-1).to(v.dtype)
    return (probs.view(N, Hkv, -1, R) @ v).view(N, H, n, hd)
