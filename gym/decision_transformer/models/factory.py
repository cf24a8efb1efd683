"""Build the policy a run config names, so training and evaluate.py construct it the same way."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .decision_transformer import DecisionTransformer
from .mlp_bc import MLPBCModel
from .model import TrajectoryModel


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


def build_model(
    cfg: ModelConfig,
    state_dim: int,
    act_dim: int,
    max_ep_len: int,
    action_low: np.ndarray,
    action_high: np.ndarray,
) -> TrajectoryModel:
    common = dict(action_low=action_low, action_high=action_high)
    if cfg.model_type == "bc":
        return MLPBCModel(
            state_dim,
            act_dim,
            hidden_size=cfg.embed_dim,
            n_layer=cfg.n_layer,
            dropout=cfg.dropout,
            max_length=cfg.K,
            **common,
        )
    common["attention"] = cfg.attention
    common["policy"] = cfg.policy
    common["timestep_embedding"] = cfg.timestep_embedding
    common["eval_context"] = cfg.eval_context
    if cfg.backbone == "qwen3":
        from .decision_transformer_qwen3 import DecisionTransformerQwen3

        return DecisionTransformerQwen3(
            state_dim,
            act_dim,
            hidden_size=cfg.embed_dim,
            max_length=cfg.K,
            max_ep_len=max_ep_len,
            n_layer=cfg.n_layer,
            n_head=cfg.n_head,
            n_kv_head=cfg.n_kv_head,
            head_dim=cfg.head_dim,
            intermediate_size=cfg.intermediate_size,
            mlp_ratio=cfg.mlp_ratio,
            rope_theta=cfg.rope_theta,
            qk_norm=cfg.qk_norm,
            dropout=cfg.dropout,
            **common,
        )
    return DecisionTransformer(
        state_dim,
        act_dim,
        hidden_size=cfg.embed_dim,
        max_length=cfg.K,
        max_ep_len=max_ep_len,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        n_inner=4 * cfg.embed_dim,
        activation_function=cfg.activation_function,
        resid_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        **common,
    )


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
