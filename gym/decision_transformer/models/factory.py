"""Build the policy a run config names, so training and evaluate.py construct it the same way."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .model import TrajectoryModel
from .pretrained import (
    GPT2_DT,
    MLP_BC,
    QWEN3_DT,
    ArchConfig,
    GPT2DTConfig,
    MLPBCConfig,
    Qwen3DTConfig,
)
from .qwen3_transformer import Qwen3Config


@dataclass(frozen=True)
class ModelConfig:
    """What build_model reads: the policy's shape (a run's RunConfig.model_config())."""

    model_type: str  # dt: Decision Transformer; bc: MLP behaviour cloning
    backbone: str | None  # DT only: qwen3, else the GPT-2 DT (gpt2)
    embed_dim: int  # hidden size
    n_layer: int  # transformer blocks (BC: MLP layers)
    n_head: int  # attention (query) heads
    K: int  # context length in timesteps
    dropout: float
    # Runs made before --attention existed have none recorded: they are full attention.
    attention: str = "full"
    activation_function: str = "relu"  # GPT-2 MLP only
    # Qwen3 only, as its flags (run/config.py's Qwen3Flags) give them:
    n_kv_head: int | None = None
    head_dim: int | None = None
    intermediate_size: int | None = None
    mlp_ratio: float = 4.0
    rope_theta: float = 1e6
    qk_norm: bool = True
    # DT only: the action head (models/policy_heads.py); runs before --policy are deterministic.
    policy: str = "deterministic"
    # DT only: runs before --no_timestep_embedding have one; --eval_context (None: K) is how
    # many of the last K steps the policy acts on (not a weight: any value loads any weights).
    timestep_embedding: bool = True
    eval_context: int | None = None
    # DT only: --return_bins (0: no return head, the original token order).
    return_bins: int = 0


def folder_config(
    cfg: ModelConfig, state_dim: int, act_dim: int, max_ep_len: int
) -> tuple[str, ArchConfig]:
    """The model folder's architecture name and config (models/pretrained.py) for the policy
    ``cfg`` names: the one description a model is built from, in training, evaluation and
    export alike (Qwen3's head_dim and intermediate_size resolved as the backbone resolves them)."""
    if cfg.model_type == "bc":
        return MLP_BC, MLPBCConfig(
            state_dim, act_dim, cfg.embed_dim, cfg.n_layer, cfg.dropout, cfg.K, max_ep_len
        )
    shared = dict(
        state_dim=state_dim,
        act_dim=act_dim,
        hidden_size=cfg.embed_dim,
        max_ep_len=max_ep_len,
        context_length=cfg.K,
        attention=cfg.attention,
        policy=cfg.policy,
        timestep_embedding=cfg.timestep_embedding,
        eval_context=cfg.eval_context,
        return_bins=cfg.return_bins,
    )
    if cfg.backbone == "qwen3":
        q = Qwen3Config(
            cfg.embed_dim, cfg.n_layer, cfg.n_head, cfg.n_kv_head or cfg.n_head, cfg.head_dim,
            cfg.intermediate_size, cfg.mlp_ratio, cfg.rope_theta,
        )  # fmt: skip
        return QWEN3_DT, Qwen3DTConfig(
            num_hidden_layers=q.n_layer,
            num_attention_heads=q.n_head,
            num_key_value_heads=q.n_kv_head,
            head_dim=q.head_dim,
            intermediate_size=q.intermediate_size,
            rope_theta=q.rope_theta,
            rms_norm_eps=q.rms_norm_eps,
            qk_norm=cfg.qk_norm,
            dropout=cfg.dropout,
            **shared,
        )
    return GPT2_DT, GPT2DTConfig(
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=4 * cfg.embed_dim,
        activation_function=cfg.activation_function,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        **shared,
    )


def build_model(
    cfg: ModelConfig,
    state_dim: int,
    act_dim: int,
    max_ep_len: int,
    action_low: np.ndarray,
    action_high: np.ndarray,
) -> TrajectoryModel:
    return folder_config(cfg, state_dim, act_dim, max_ep_len)[1].build(action_low, action_high)


def count_params(model) -> tuple[int, int]:
    """(all parameters, backbone parameters); BC has no backbone and reports 0 for it."""
    total = sum(p.numel() for p in model.parameters())
    backbone = getattr(model, "transformer", None)
    return total, sum(p.numel() for p in backbone.parameters()) if backbone is not None else 0


def transformer_blocks(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The repeated blocks of the DT's backbone (GPT-2 ``h`` or Qwen3 ``layers``); none for BC."""
    backbone = getattr(model, "transformer", None)
    blocks = getattr(backbone, "layers", None) or getattr(backbone, "h", None)
    return list(blocks) if blocks is not None else []


def build_multitask_model(cfg: ModelConfig, shapes: list) -> torch.nn.Module:
    """The DT of ``cfg`` over several tasks (models/multitask.py): one backbone, each of
    ``shapes`` (``TaskShape``) with its own state/action embeddings, action head and bounds."""
    from .multitask import MultiTaskDecisionTransformer

    if cfg.model_type != "dt":
        raise ValueError("a multi-task model is a Decision Transformer (model_type dt)")
    first = shapes[0]
    longest = max(s.max_ep_len for s in shapes)  # the shared timestep embedding's size
    template = build_model(
        cfg, first.state_dim, first.act_dim, longest, first.action_low, first.action_high
    )
    return MultiTaskDecisionTransformer(template, shapes)
