"""A Qwen3-style decoder used as the Decision Transformer backbone (no token embedding).

Pre-norm residual blocks with RMSNorm, grouped-query attention with per-head RMSNorm on queries and
keys (QK-norm) ahead of rotary position embeddings, and a SwiGLU MLP. Parameter names and shapes
equal ``transformers.Qwen3Model`` without ``embed_tokens``, so its state dict loads as is, and the
test suite checks both give the same hidden states.

One block implementation serves training, full-window evaluation and cached rollout steps (as in
Llama's ``model.py``): ``forward(..., cache=None)``. Given a :class:`~.kv_cache.RollingKVCache`,
the backbone takes one env step's three new tokens, rotates them at their absolute positions, and
each layer's attention stores their keys and values in the cache and attends over its ring; the
last layer runs only the state token past its keys and values (``last_only``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .kv_cache import RollingKVCache, band_matters, window_mask


@dataclass
class Qwen3Config:
    embed_dim: int
    n_layer: int
    n_head: int
    n_kv_head: int
    head_dim: int | None = None  # None -> embed_dim // n_head
    intermediate_size: int | None = None  # None -> int(mlp_ratio * embed_dim)
    mlp_ratio: float = 4.0
    rope_theta: float = 1e6
    rms_norm_eps: float = 1e-6
    qk_norm: bool = True
    dropout: float = 0.0  # on attention probabilities and on both residual branches
    window: int | None = None  # sliding-window attention over this many timesteps (kv_cache.py)

    def __post_init__(self):
        for flag, value in (
            ("--embed_dim", self.embed_dim),
            ("--n_layer", self.n_layer),
            ("--n_head", self.n_head),
            ("--n_kv_head", self.n_kv_head),
        ):
            if value < 1:
                raise ValueError(f"{flag} must be a positive integer, got {value}")
        if self.n_head % self.n_kv_head:
            raise ValueError(
                f"--n_head ({self.n_head}) must be a multiple of --n_kv_head ({self.n_kv_head}): "
                "each key/value head serves a whole group of query heads"
            )
        if self.head_dim is None:
            if self.embed_dim % self.n_head:
                raise ValueError(
                    f"--embed_dim ({self.embed_dim}) is not divisible by --n_head ({self.n_head}); "
                    "pick another --n_head or set --head_dim explicitly"
                )
            self.head_dim = self.embed_dim // self.n_head
        if self.head_dim < 2 or self.head_dim % 2:
            raise ValueError(f"--head_dim must be even for rotary embeddings, got {self.head_dim}")
        if self.intermediate_size is None:
            self.intermediate_size = int(self.mlp_ratio * self.embed_dim)
        if self.intermediate_size < 1:
            raise ValueError(
                f"the MLP width must be positive, got {self.intermediate_size} "
                "(check --intermediate_size / --mlp_ratio)"
            )


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype matmuls on ``x`` run in: autocast's when it is on for x's device, else x's own."""
    if torch.is_autocast_enabled(x.device.type):
        return torch.get_autocast_dtype(x.device.type)
    return x.dtype


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    # Plain Python rather than torch.promote_types, which is a dispatched op of its own.
    return torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype


class RMSNormFunction(torch.autograd.Function):
    """RMSNorm with a hand-written backward, computed in at least fp32 whatever the input dtype,
    its output rounded once to ``out_dtype`` (the compute dtype, so that under autocast the
    following projections find their input already cast instead of each casting it again).

    Autograd through the composite op (square, mean, rsqrt, two products) dispatches ~19 ops
    backward; this one ~10 and keeps only ``x`` and the per-row ``rstd``, which trims 2-5% off a
    whole training step on CPU.
    """

    @staticmethod
    def forward(
        ctx, x: torch.Tensor, weight: torch.Tensor, eps: float, out_dtype: torch.dtype | None = None
    ) -> torch.Tensor:
        xf = x.to(_accumulation_dtype(x.dtype))
        ms = torch.linalg.vector_norm(xf, dim=-1, keepdim=True).square_().div_(x.shape[-1])
        rstd = ms.add_(eps).rsqrt_()
        ctx.save_for_backward(x, weight, rstd)
        return (xf * rstd).mul_(weight).to(out_dtype or x.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None, None]:
        x, weight, rstd = ctx.saved_tensors
        acc = _accumulation_dtype(x.dtype)
        gf = grad.to(acc)
        # y = xhat * w with xhat = x * rstd  =>  dx = rstd * (g*w - xhat * mean(g*w*xhat))
        xhat = x.to(acc) * rstd
        gw = gf * weight
        dweight = (gf * xhat).sum(tuple(range(x.dim() - 1)))
        coef = (gw * xhat).mean(-1, keepdim=True)
        dx = gw.sub_(xhat.mul_(coef)).mul_(rstd)
        return dx.to(x.dtype), dweight.to(weight.dtype), None, None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps, compute_dtype(x), fused=x.device.type != "cpu")


def rms_norm(
    x: torch.Tensor, weight: torch.Tensor, eps: float, out_dtype: torch.dtype, fused: bool
) -> torch.Tensor:
    """RMSNorm of ``x [..., D]`` in at least fp32, returned in ``out_dtype``.

    ``fused``: on CUDA, ``F.rms_norm`` is one kernel forward and one backward when the input is
    the fp32 residual stream (a bf16 weight, as FSDP gathers it, is upcast: ``dim`` elements);
    bf16 q/k under autocast would need a cast to fp32 first, and keeping that copy for backward
    costs more memory than the kernels save. On CPU it is a composite of ~7 ops forward and
    ~19 backward, more than the hand-written one.
    """
    if fused and x.dtype == _accumulation_dtype(x.dtype):
        return F.rms_norm(x, (x.shape[-1],), weight.to(x.dtype), eps).to(out_dtype)
    return RMSNormFunction.apply(x, weight, eps, out_dtype)


class Rotary(nn.Module):
    """Rotate-half RoPE tables, cached and regrown only when a longer sequence comes."""

    def __init__(self, head_dim: int, theta: float):
        super().__init__()
        self.head_dim, self.theta = head_dim, theta
        # Not in the state dict: they follow from the config. The frequencies aren't a buffer, so
        # model.to(bfloat16) can't round them; only the finished tables take the model's dtype.
        self.register_buffer("cos", torch.empty(0, head_dim), persistent=False)
        self.register_buffer("sin", torch.empty(0, head_dim), persistent=False)

    def tables(self, T: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cos.shape[0] < T:
            # In float64 on the CPU (which every backend can take from), then moved.
            exponents = torch.arange(0, self.head_dim, 2, dtype=torch.float64) / self.head_dim
            freqs = torch.outer(torch.arange(T, dtype=torch.float64), self.theta**-exponents)
            angles = torch.cat((freqs, freqs), dim=-1)  # [T, head_dim]
            # rotate_half(x) = cat(-x2, x1); folding its sign into sin saves a negation per call.
            half = self.head_dim // 2
            sign = torch.cat((-torch.ones(half), torch.ones(half))).double()
            self.cos = angles.cos().to(self.cos)
            self.sin = (angles.sin() * sign).to(self.sin)
        return self.cos[:T], self.sin[:T]


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """``x [B, T, H, hd]``, ``cos``/``sin [T, hd]`` or ``[T, 1, hd]`` (sin already signed for
    rotate-half). The backbone passes them ``[T, 1, hd]`` in x's dtype, cast once a forward, so
    that here both casts are no-ops and nothing is dispatched per layer for them."""
    half = x.shape[-1] // 2
    swapped = torch.cat((x[..., half:], x[..., :half]), dim=-1)
    if cos.dim() == 2:
        cos, sin = cos[:, None], sin[:, None]
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + swapped * sin


class Attention(nn.Module):
    def __init__(self, cfg: Qwen3Config, layer_id: int):
        super().__init__()
        self.layer_id = layer_id  # which of a rollout cache's rings is this layer's
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.n_kv_head, cfg.head_dim
        self.q_proj = nn.Linear(cfg.embed_dim, cfg.n_head * cfg.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.embed_dim, cfg.n_kv_head * cfg.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.embed_dim, cfg.n_kv_head * cfg.head_dim, bias=False)
        self.o_proj = nn.Linear(cfg.n_head * cfg.head_dim, cfg.embed_dim, bias=False)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
            self.k_norm = RMSNorm(cfg.head_dim, cfg.rms_norm_eps)
        else:
            self.q_norm = self.k_norm = nn.Identity()
        self.dropout = cfg.dropout

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        cache: RollingKVCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        """``x [B, T, D]`` -> ``[B, T, D]``, or ``[B, 1, D]`` for the last token alone when
        ``last_only`` (the other tokens need only their keys and values, for later steps)."""
        B, T, _ = x.shape
        xq, rope_q = x, rope
        if last_only:
            xq, rope_q = x[:, -1:], (rope[0][-1:], rope[1][-1:])
        n = xq.shape[1]
        q = self.q_norm(self.q_proj(xq).view(B, n, self.n_head, self.head_dim))
        k = self.k_norm(self.k_proj(x).view(B, T, self.n_kv_head, self.head_dim))
        v = self.v_proj(x).view(B, T, self.n_kv_head, self.head_dim)
        q, k = apply_rotary(q, *rope_q), apply_rotary(k, *rope)
        # [B, T, H, hd] -> [B, H, T, hd]
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        p = self.dropout if self.training else 0.0
        if cache is not None:
            y = cache.attend(self.layer_id, q, k, v)
        elif q.device.type == "cpu" and (q.dtype != torch.float32 or p):
            y = grouped_attention(q, k, v, mask, p)
        else:
            # On CPU, torch 2.13 runs enable_gqa with an explicit mask in its flash kernel, equal to
            # repeating K/V and ~1.3x faster fwd+bwd than repeating them; on GPUs it's the fused
            # kernels' native path.
            y = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=p, is_causal=mask is None, enable_gqa=True
            )
        return self.o_proj(y.transpose(1, 2).reshape(B, n, -1))


def grouped_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout_p: float
) -> torch.Tensor:
    """Causal attention as two batched matmuls, for CPU training in bf16/fp16 or with dropout.

    Why not SDPA there: torch 2.13's CPU flash-attention kernel runs bf16 forward+backward 3-7x
    slower than these matmuls with an fp32 softmax (its math backend is no better), and with dropout
    SDPA leaves the flash kernel for an unfused path that is slower than this. In fp32 without
    dropout the flash kernel is as fast or faster, so the caller keeps SDPA there. Query heads
    sharing a key/value head are stacked along the rows: grouped-query attention, K/V not repeated.
    """
    B, H, T, hd = q.shape
    Hkv = k.shape[1]
    if mask is None:
        mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    # [B, Hkv, H/Hkv * T, hd] @ [B, Hkv, hd, T] -> [B, H, T, T]
    # In-place only before .view(): an in-place op on a view makes autograd copy its base back
    # and forth in backward (~15 extra ops a layer).
    scores = (q.reshape(B, Hkv, -1, hd) @ k.transpose(-1, -2)).mul_(hd**-0.5).view(B, H, T, T)
    scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.float().softmax(-1)
    if dropout_p:
        probs = F.dropout(probs, dropout_p)
    probs = probs.to(v.dtype)
    return (probs.view(B, Hkv, -1, T) @ v).view(B, H, T, hd)


class MLP(nn.Module):
    def __init__(self, cfg: Qwen3Config):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.embed_dim, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.embed_dim, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.embed_dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    def __init__(self, cfg: Qwen3Config, layer_id: int):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.embed_dim, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg, layer_id)
        self.post_attention_layernorm = RMSNorm(cfg.embed_dim, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)
        self.resid_dropout = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        mask: torch.Tensor | None,
        cache: RollingKVCache | None = None,
        last_only: bool = False,
    ) -> torch.Tensor:
        h = self.self_attn(self.input_layernorm(x), rope, mask, cache, last_only)
        x = (x[:, -1:] if last_only else x) + self.resid_dropout(h)
        return x + self.resid_dropout(self.mlp(self.post_attention_layernorm(x)))


def causal_padding_mask(attention_mask: torch.Tensor | None, T: int) -> torch.Tensor | None:
    """Boolean ``[B, 1, T, T]`` mask (True = may attend), or None when plain causal suffices.

    Callers pass None for a batch without padding (the trainers know it from the sampler, which
    knows it in numpy), so that attention takes its ``is_causal`` path; the mask is not inspected
    here, as ``bool(attention_mask.all())`` would stall the host until the GPU catches up. A padded
    query that sees no real key would get NaN from a softmax over nothing, so every query also
    sees itself; its output is ignored anyway.
    """
    if attention_mask is None:
        return None
    device = attention_mask.device
    causal = torch.ones(T, T, dtype=torch.bool, device=device).tril()
    eye = torch.eye(T, dtype=torch.bool, device=device)
    return (causal & attention_mask.bool()[:, None, None, :]) | eye


class Qwen3Transformer(nn.Module):
    """``forward(inputs_embeds [B, T, D], attention_mask [B, T]) -> hidden states [B, T, D]``;
    with a rollout ``cache``: a step's new tokens ``[N, n, D]`` -> the last one's ``[N, 1, D]``
    (see :class:`~.kv_cache.RollingKVCache`)."""

    def __init__(self, config: Qwen3Config):
        super().__init__()
        self.config = config
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layer))
        self.norm = RMSNorm(config.embed_dim, config.rms_norm_eps)
        self.rotary = Rotary(config.head_dim, config.rope_theta)
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        # Qwen3's initializer_range; norms start at one (their constructor's default).
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.02)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        cache: RollingKVCache | None = None,
    ) -> torch.Tensor:
        if cache is not None:
            return self._step(inputs_embeds, cache)
        T = inputs_embeds.shape[1]
        mask = causal_padding_mask(attention_mask, T)
        if band_matters(T, self.config.window):
            mask = window_mask(attention_mask, T, self.config.window, inputs_embeds.device)
        # RoPE positions are token indices: relative offsets are unchanged by left padding.
        # Cast once here to the dtype q and k come in (the compute dtype: the norms output it).
        dtype = compute_dtype(inputs_embeds)
        rope = tuple(t.to(dtype)[:, None] for t in self.rotary.tables(T))
        x = inputs_embeds
        for layer in self.layers:
            x = layer(x, rope, mask)
        return self.norm(x)

    def _step(self, x: torch.Tensor, cache: RollingKVCache) -> torch.Tensor:
        """One env step's new tokens ``x [N, n, D]`` (all three, or a part of the step) through
        the same blocks, with the cache."""
        pos = cache.advance(x.shape[1])
        # Positions keep counting through the episode (scores depend only on offsets). The table
        # grows in whole chunks: regrowing it by three tokens a step would redo it each step.
        need = cache.next_pos
        tables = self.rotary.tables(-(-need // 1024) * 1024)
        dtype = compute_dtype(x)
        rope = tuple(t[pos.clamp(min=0)].to(dtype)[:, None] for t in tables)
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            # .forward: a block compiled for training (--compile) stays eager here, where its
            # graph would be specialised anew for each layer's cache and step.
            x = layer.forward(x, rope, None, cache, last_only=i == last)
        return self.norm(x)
