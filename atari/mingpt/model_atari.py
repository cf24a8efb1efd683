"""The paper's Atari Decision Transformer, on the gym half's GPT-2 or Qwen3 backbone.

Each step is three tokens (return-to-go, state, action), or two (state, action) for the
``naive`` model type (behaviour cloning); the action is predicted from the state token. States
go through the Nature-DQN conv encoder, returns through a linear layer, actions through an
embedding, each followed by tanh (as in the original). Time enters as the original's global
timestep embedding (of the window's first step) added to every token, plus a learned embedding
of the token's position in the window for GPT; with the Qwen3 backbone RoPE gives positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from decision_transformer.models.qwen3_transformer import Qwen3Config, Qwen3Transformer
from decision_transformer.models.trajectory_gpt2 import Conv1D, GPT2Config, TrajectoryGPT2


@dataclass
class AtariDTConfig:
    n_actions: int
    max_timestep: int
    context_length: int = 30  # steps in a window
    model_type: str = "reward_conditioned"  # or "naive" (no returns: behaviour cloning)
    backbone: str = "gpt"  # or "qwen3"
    n_layer: int = 6
    n_head: int = 8
    n_embd: int = 128
    dropout: float = 0.1
    # Qwen3 only (the flags of gym/experiment_qwen.py)
    n_kv_head: int | None = None
    head_dim: int | None = None
    mlp_ratio: float = 4.0
    intermediate_size: int | None = None
    rope_theta: float = 1e6
    qk_norm: bool = True

    @property
    def tokens_per_step(self) -> int:
        return 3 if self.model_type == "reward_conditioned" else 2


class NatureEncoder(nn.Module):
    """``[B, 4, 84, 84]`` uint8 frame stacks -> ``[B, n_embd]`` (Mnih et al. 2015's conv stack)."""

    def __init__(self, n_embd: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(4, 32, 8, stride=4),
            nn.ReLU(),
            nn.Conv2d(32, 64, 4, stride=2),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, stride=1),
            nn.ReLU(),
            nn.Flatten(),
            nn.Linear(64 * 7 * 7, n_embd),
            nn.Tanh(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.float() / 255.0)


class AtariDecisionTransformer(nn.Module):
    def __init__(self, cfg: AtariDTConfig):
        super().__init__()
        if cfg.model_type not in ("reward_conditioned", "naive"):
            raise ValueError(
                f"--model_type must be reward_conditioned or naive, not {cfg.model_type}"
            )
        self.cfg = cfg
        D, T = cfg.n_embd, cfg.context_length * cfg.tokens_per_step
        self.state_encoder = NatureEncoder(D)
        if cfg.model_type == "reward_conditioned":
            self.ret_emb = nn.Sequential(nn.Linear(1, D), nn.Tanh())
        self.action_emb = nn.Sequential(nn.Embedding(cfg.n_actions, D), nn.Tanh())
        nn.init.normal_(self.action_emb[0].weight, std=0.02)
        # Zero-initialised like the original's; the global one is indexed by in-episode timestep.
        self.global_pos_emb = nn.Parameter(torch.zeros(1, cfg.max_timestep + 1, D))
        if cfg.backbone == "gpt":
            self.pos_emb = nn.Parameter(torch.zeros(1, T, D))
            self.transformer = TrajectoryGPT2(
                GPT2Config(
                    n_embd=D,
                    n_layer=cfg.n_layer,
                    n_head=cfg.n_head,
                    activation_function="gelu",  # minGPT's exact GELU
                    resid_pdrop=cfg.dropout,
                    embd_pdrop=cfg.dropout,
                    attn_pdrop=cfg.dropout,
                )
            )
        elif cfg.backbone == "qwen3":
            self.pos_emb = None
            self.drop = nn.Dropout(cfg.dropout)
            self.transformer = Qwen3Transformer(
                Qwen3Config(
                    embed_dim=D,
                    n_layer=cfg.n_layer,
                    n_head=cfg.n_head,
                    n_kv_head=cfg.n_kv_head or cfg.n_head,
                    head_dim=cfg.head_dim,
                    intermediate_size=cfg.intermediate_size,
                    mlp_ratio=cfg.mlp_ratio,
                    rope_theta=cfg.rope_theta,
                    qk_norm=cfg.qk_norm,
                    dropout=cfg.dropout,
                )
            )
        else:
            raise ValueError(f"--backbone must be gpt or qwen3, not {cfg.backbone}")
        self.head = nn.Linear(D, cfg.n_actions, bias=False)
        nn.init.normal_(self.head.weight, std=0.02)

    def forward(
        self,
        states: torch.Tensor,
        actions: torch.Tensor,
        rtgs: torch.Tensor,
        timesteps: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Action logits ``[B, T, n_actions]`` predicted at each state token.

        states ``[B, T, 4, 84, 84]`` uint8, actions ``[B, T]`` long (the last one may be any
        value: the causal mask keeps it from the last state's prediction), rtgs ``[B, T, 1]``,
        timesteps ``[B, 1]`` (the window's first step), mask ``[B, T]`` (False = left padding).
        """
        return self.forward_encoded(self.encode(states), actions, rtgs, timesteps, mask)

    def encode(self, states: torch.Tensor) -> torch.Tensor:
        """Frame stacks ``[..., 4, 84, 84]`` uint8 -> state embeddings ``[..., n_embd]``. A
        stack's embedding depends on that stack alone, so evaluation encodes each one once."""
        lead = states.shape[:-3]
        return self.state_encoder(states.reshape(-1, *states.shape[-3:])).view(*lead, -1)

    def forward_encoded(
        self,
        s: torch.Tensor,
        actions: torch.Tensor,
        rtgs: torch.Tensor,
        timesteps: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``forward`` with the states already through ``encode``: ``s`` is ``[B, T, n_embd]``."""
        B, T = actions.shape
        D = self.cfg.n_embd
        a = self.action_emb(actions)
        if self.cfg.model_type == "reward_conditioned":
            r = self.ret_emb(rtgs.float())
            tokens = torch.stack((r, s, a), dim=2)  # [B, T, 3, D]
        else:
            tokens = torch.stack((s, a), dim=2)  # [B, T, 2, D]
        k = self.cfg.tokens_per_step
        x = tokens.reshape(B, T * k, D)
        tmask = None if mask is None else mask.repeat_interleave(k, dim=1)  # [B, T*k]
        x = x + self.global_pos_emb[0, timesteps[:, 0].clamp(max=self.cfg.max_timestep)][:, None]
        if self.pos_emb is not None:
            if tmask is None:
                x = x + self.pos_emb[:, : T * k]
            else:  # positions count from each row's first real token, as without padding
                pos = (tmask.long().cumsum(1) - 1).clamp(min=0)
                x = x + self.pos_emb[0, pos]
        else:
            x = self.drop(x)  # TrajectoryGPT2 applies its own embedding dropout
        h = self.transformer(x, attention_mask=tmask)
        state_tokens = h[:, 1::3] if k == 3 else h[:, 0::2]
        return self.head(state_tokens)

    def loss(self, states, actions, rtgs, timesteps) -> torch.Tensor:
        return action_loss(self(states, actions, rtgs, timesteps), actions)

    def param_groups(self, weight_decay: float) -> list[dict]:
        """Weight decay on the matmul and conv weights only (not biases, norms, embeddings)."""
        decay, no_decay = [], []
        for module in self.modules():
            for name, p in module.named_parameters(recurse=False):
                if name == "weight" and isinstance(module, nn.Linear | nn.Conv2d | Conv1D):
                    decay.append(p)
                else:
                    no_decay.append(p)
        return [
            {"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]


def action_loss(logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """The training loss: cross-entropy of the logits (``[B, T, n_actions]``, from the model or
    its DDP wrapper) against the actions taken, averaged over every step of the batch."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), actions.reshape(-1))


def compile_blocks(model: AtariDecisionTransformer) -> None:
    """Regional compilation, as the gym half's --compile: ``torch.compile`` each transformer
    block in place (state-dict names unchanged). The blocks share one code object, so one
    compile serves them all; the conv encoder, embeddings and head stay eager."""
    blocks = getattr(model.transformer, "layers", None) or getattr(model.transformer, "h", None)
    if blocks is None:  # a backbone without a block list: compile it whole
        model.transformer.compile()
        return
    for block in blocks:
        block.compile()
