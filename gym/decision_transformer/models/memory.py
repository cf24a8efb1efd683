"""What training a :class:`Qwen3Transformer` with AdamW holds in memory, counted analytically.

The count follows what this implementation keeps, not a rule of thumb:

* weights, gradients: fp32 master copies, 4 bytes a parameter each (bf16 runs under autocast).
* AdamW: ``exp_avg`` and ``exp_avg_sq``, 8 bytes a parameter.
* activations: every tensor autograd saves for backward during one forward of ``batch_size``
  windows of ``seq_len`` tokens, per layer and summed, plus under bf16 autocast the bf16 copies of
  the linear weights that autocast caches for the step. It assumes training mode (dropout noise
  when ``config.dropout > 0``) on CPU and a padded batch (so a key-padding mask). The test suite
  checks it against the bytes autograd really saves.

Several processes (``world_size``): DDP keeps everything above on every GPU (``batch_size`` is
the per-GPU micro-batch; gradient accumulation only repeats it). FSDP divides weights, gradients
and AdamW states by ``world_size`` and adds ``gathered``: the full parameters of the two blocks
alive at once (the one computing and the one prefetched), in the compute dtype, plus the root's
unsharded embeddings, heads and final norm, which stay fp32. Gradient accumulation adds nothing
under either: DDP accumulates into its full-size gradients, FSDP reduce-scatters every
micro-step into the gradient shards. Activation checkpointing keeps only each block's input (fp32)
and recomputes one block at a time in backward, so activations become ``L`` block inputs plus
one block's worth.

Left out, so ``total`` is a floor of the peak rather than the peak: the caller's own activations
(the DT's embeddings and heads, a few ``N * D``), and gradients of activations alive at once in
backward (about one layer's worth, freed as it goes).

:func:`estimate_evaluation_memory` counts the evaluation after each iteration, which runs with
the training state still resident (weights, gradients, AdamW) on the same model: under FSDP the
sharded model itself, each block gathered for its forward only.
"""

from __future__ import annotations

import torch

from .qwen3_transformer import Qwen3Config, Qwen3Transformer


def estimate_training_memory(
    config: Qwen3Config,
    batch_size: int,
    seq_len: int,
    dtype: torch.dtype = torch.float32,
    n_extra_params: int = 0,
    world_size: int = 1,
    fsdp: bool = False,
    activation_checkpointing: bool = False,
) -> dict[str, int]:
    """Bytes per GPU of ``weights``, ``grads``, ``adamw`` states, ``activations``, FSDP's
    ``gathered`` parameters and their ``total`` for one training step of a ``batch_size``
    micro-batch; ``dtype`` is float32, or bfloat16/float16 for autocast (FSDP: its compute
    dtype). ``n_extra_params`` adds parameters outside the backbone."""
    if dtype not in (torch.float32, torch.bfloat16, torch.float16):
        raise ValueError(f"dtype must be float32, bfloat16 or float16, got {dtype}")
    with torch.device("meta"):
        backbone = Qwen3Transformer(config)
    n_params = backbone.num_params() + n_extra_params
    n_linear = sum(m.weight.numel() for m in backbone.modules() if isinstance(m, torch.nn.Linear))

    D, L, N = config.embed_dim, config.n_layer, batch_size * seq_len
    a = 4 if dtype == torch.float32 else 2  # bytes of a matmul input/output
    f32 = 4
    layer = _layer_activations(config, batch_size, seq_len, a)
    if activation_checkpointing:
        layer = f32 * N * D + layer  # every block's saved input; one block recomputed at a time
        activations = L * f32 * N * D + layer + f32 * N * (D + 1)
    else:
        activations = L * layer + f32 * N * (D + 1)  # + the final norm's input and rstd
    gathered = 0
    shards = world_size if fsdp else 1
    if fsdp and world_size > 1:
        gathered = _gathered(backbone, n_extra_params, a)
    elif a != f32:
        activations += a * n_linear  # autocast's cached low-precision weights

    weights = grads = -(-f32 * n_params // shards)
    adamw = 2 * weights
    return {
        "weights": weights,
        "grads": grads,
        "adamw": adamw,
        "activations": activations,
        "gathered": gathered,
        "total": weights + grads + adamw + activations + gathered,
    }


def _layer_activations(c: Qwen3Config, B: int, T: int, a: int) -> int:
    """Bytes autograd saves in one block's forward of ``B`` windows of ``T`` tokens, matmul
    inputs and outputs of ``a`` bytes (see the module docstring for what is assumed)."""
    N = B * T
    D, M = c.embed_dim, c.intermediate_size  # M: the MLP's width
    Hq, Hkv = c.n_head, c.n_kv_head
    Dq, Dkv = Hq * c.head_dim, Hkv * c.head_dim
    scores = B * Hq * T * T  # attention matrix elements
    f32 = 4

    # Both RMSNorms of the residual stream keep their fp32 input and per-token rstd; the q/k norms
    # keep the projection output and a per-head rstd.
    layer = 2 * f32 * N * (D + 1)
    if c.qk_norm:
        layer += a * N * (Dq + Dkv) + f32 * N * (Hq + Hkv)
    # Inputs of q/k/v and gate/up projections: the two norms' outputs, in the compute dtype (the
    # norms output it, so autocast finds nothing left to cast), each shared by its projections.
    layer += 2 * a * N * D
    # SwiGLU: gate output, its silu, up output, and their product (down_proj's input).
    layer += 4 * a * N * M
    if a == f32 and not c.dropout:
        # SDPA's flash kernel: rotated q and k, v, the output (o_proj's input, same storage), the
        # log-sum-exp, and the boolean key-padding mask which it turns into an additive fp32 one.
        layer += f32 * N * (2 * Dq + 2 * Dkv + Hq) + f32 * B * T * T
    else:
        # grouped_attention: q (a copy), rotated k, v, the fp32 softmax, the probabilities cast
        # for the second matmul, the inverted mask, and o_proj's input (a copy).
        layer += a * N * (2 * Dq + 2 * Dkv) + f32 * scores + B * T * T
        if c.dropout:
            layer += f32 * scores  # CPU dropout keeps its scaled noise in its input's dtype
        layer += a * scores
    if c.dropout:
        layer += 2 * a * N * D  # the residual dropouts' noise
    return layer


def _gathered(backbone: Qwen3Transformer, n_extra_params: int, a: int) -> int:
    """FSDP's unsharded parameters at a time: two blocks in the compute dtype (``a`` bytes),
    the root (embeddings, heads, final norm) in fp32."""
    D, L = backbone.config.embed_dim, backbone.config.n_layer
    block = (backbone.num_params() - D) // L
    return a * 2 * block + 4 * (n_extra_params + D)


def estimate_evaluation_memory(
    config: Qwen3Config,
    rows: int,
    K: int,
    dtype: torch.dtype = torch.float32,
    n_extra_params: int = 0,
    world_size: int = 1,
    fsdp: bool = False,
) -> dict[str, int]:
    """Bytes per GPU at the evaluation after an iteration: the resident training state
    (``weights``, ``grads``, ``adamw``, sharded under FSDP), ``gathered`` weights (FSDP: two
    blocks and the root; otherwise, under bf16, autocast's cached bf16 copies of the linear
    weights), and the ``rollout``: the key/value cache of ``rows`` episodes (``--eval_envs``
    per rank) with a ``K``-step window, plus one layer's working set of the full-window
    recompute over ``3 K`` tokens (no_grad: layers free theirs as they go). ``total`` sums them.
    """
    with torch.device("meta"):
        backbone = Qwen3Transformer(config)
    n_params = backbone.num_params() + n_extra_params
    n_linear = sum(m.weight.numel() for m in backbone.modules() if isinstance(m, torch.nn.Linear))
    c = config
    a = 4 if dtype == torch.float32 else 2
    shards = world_size if fsdp else 1
    weights = grads = -(-4 * n_params // shards)
    if fsdp and world_size > 1:
        gathered = _gathered(backbone, n_extra_params, a)
    else:
        gathered = a * n_linear if a != 4 else 0
    T, Dkv = 3 * K, c.n_kv_head * c.head_dim
    cache = c.n_layer * 2 * a * rows * Dkv * (T + 2)
    layer = a * rows * T * (3 * c.embed_dim + 2 * c.intermediate_size) + 4 * rows * c.n_head * T * T
    out = {
        "weights": weights,
        "grads": grads,
        "adamw": 2 * weights,
        "gathered": gathered,
        "rollout": cache + layer,
    }
    return {**out, "total": sum(out.values())}
