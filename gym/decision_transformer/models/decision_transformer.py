"""The Decision Transformer (Chen et al., 2021): returns-to-go, states, actions as one sequence."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np
import torch
import torch.nn as nn

from .kv_cache import RollingKVCache
from .model import TrajectoryModel
from .policy_heads import PointMass, SquashedGaussian, make_policy_head
from .return_bins import bin_index, sample_returns
from .trajectory_gpt2 import GPT2Config, TrajectoryGPT2


@dataclass(frozen=True)
class DTOptions:
    """What this DT adds to the original's arguments, each a keyword of
    :class:`DecisionTransformer` (the rest of its keywords configure the backbone)."""

    action_low: np.ndarray | float = -1.0  # the env's action box the policy head maps onto
    action_high: np.ndarray | float = 1.0
    # window: each token sees its own timestep and the max_length - 1 before it (kv_cache.py)
    attention: str = "full"
    policy: str = "deterministic"  # or stochastic (the ODT's Gaussian)
    timestep_embedding: bool = True  # False: the ODT reference's ``ordering=0``
    # Steps of history the policy acts on (get_actions, act_step, evaluation/rollout.py): the
    # last eval_context of the K it trains on (the ODT's eval_context_length); None: all K.
    eval_context: int | None = None
    # > 0: a head predicting the return-to-go's distribution over this many bins (return_bins.py),
    # and each step's tokens ordered (s_t, R_t, a_t) so that it cannot see the return it predicts.
    return_bins: int = 0

    @classmethod
    def take(cls, kwargs: dict) -> DTOptions:
        """The options among ``kwargs``, removed from it."""
        return cls(**{f.name: kwargs.pop(f.name) for f in fields(cls) if f.name in kwargs})


class DecisionTransformer(TrajectoryModel):
    """Models ``(R_1, s_1, a_1, R_2, s_2, a_2, ...)``; predicts ``a_t`` from the token of ``s_t``.

    With ``return_bins`` N > 0 (Multi-Game DT's order) it models ``(s_1, R_1, a_1, s_2, ...)``:
    the distribution of ``R_t`` over N bins from the token of ``s_t`` (which sees only what came
    before ``R_t``), and ``a_t`` from the token of ``R_t``.

    The backbone is built by :meth:`build_backbone`; subclasses swap it (see
    ``decision_transformer_qwen3.py``) and keep everything else, so trainers and evaluators serve
    every backbone alike. A backbone maps ``(inputs_embeds [B, 3T, D], attention_mask [B, 3T])`` to
    hidden states ``[B, 3T, D]``.
    """

    def __init__(
        self,
        state_dim: int,
        act_dim: int,
        hidden_size: int,
        max_length: int | None = None,
        max_ep_len: int = 4096,
        action_tanh: bool = True,
        **kwargs,
    ):
        """The original's arguments; ``kwargs`` are :class:`DTOptions` fields (each a keyword)
        and, as in the original, the backbone's config (``n_layer``, ``n_head``, ...)."""
        opts = DTOptions.take(kwargs)
        super().__init__(state_dim, act_dim, max_length, opts.action_low, opts.action_high)
        attention, eval_context = opts.attention, opts.eval_context
        if attention not in ("full", "window") or (attention == "window" and not max_length):
            raise ValueError(f"attention must be 'full' or 'window' with a max_length: {attention}")
        if eval_context is not None and not (max_length and 1 <= eval_context <= max_length):
            raise ValueError(f"eval_context must be in [1, max_length], not {eval_context}")
        self.hidden_size = hidden_size
        self.action_tanh = action_tanh
        self.policy = opts.policy
        self.attention = attention
        window = max_length if attention == "window" else None
        self.transformer = self.build_backbone(hidden_size, window=window, **kwargs)
        self.eval_context = eval_context or max_length

        # Without it (the ODT reference's default, ``ordering=0``) the model has no parameter
        # for it and nothing is added: time is only what the tokens' order tells attention.
        self.embed_timestep = (
            nn.Embedding(max_ep_len, hidden_size) if opts.timestep_embedding else None
        )
        self.embed_return = nn.Linear(1, hidden_size)
        self.embed_state = nn.Linear(state_dim, hidden_size)
        self.embed_action = nn.Linear(act_dim, hidden_size)
        self.embed_ln = nn.LayerNorm(hidden_size)

        # The original also predicts states and returns; only the action loss trains them.
        self.predict_state = nn.Linear(hidden_size, state_dim)
        self.predict_action = make_policy_head(
            opts.policy, hidden_size, act_dim, squash=action_tanh
        )
        self.predict_return = nn.Linear(hidden_size, 1)
        # Built last, and only when asked for: a model without it is the one before it existed,
        # the same parameters drawn from the same seed.
        self.return_bins = opts.return_bins
        if opts.return_bins:
            self.predict_return_bins = nn.Linear(hidden_size, opts.return_bins)
            # (low, high) of the scaled returns-to-go the bins cut: the training data's, set by
            # set_return_range before training; a buffer, so checkpoints and folders carry it.
            self.register_buffer("return_range", torch.tensor([0.0, 1.0]))

    def set_return_range(self, low: float, high: float) -> None:
        """The scaled return-to-go range the bins cut (the data's); a model on the meta device
        (a rank that receives rank 0's weights) keeps its empty buffer."""
        if not self.return_bins:
            raise ValueError("this model has no return head (return_bins 0)")
        if not high > low:
            raise ValueError(f"the return range must have high > low, got ({low}, {high})")
        if not self.return_range.is_meta:
            self.return_range.copy_(torch.tensor([low, high]))

    def build_backbone(self, hidden_size: int, window: int | None = None, **kwargs) -> nn.Module:
        return TrajectoryGPT2(GPT2Config(n_embd=hidden_size, window=window, **kwargs))

    def forward(
        self,
        states,
        actions,
        rewards,
        returns_to_go,
        timesteps,
        attention_mask=None,
        return_dist: bool = False,
    ):
        """``attention_mask [B, T]`` (1 = real step) for a batch with padding; None when there is
        none, which the backbone turns into plain causal attention without looking at a mask.

        The action prediction is ``[B, T, A]`` (the stochastic head's mean action), or with
        ``return_dist`` the head's distribution over those positions (the ODT's loss needs its
        likelihood; through forward, so DDP sees the gradients flow)."""
        B, T = states.shape[:2]

        time_emb = self.time_embedding(timesteps)
        state_emb = self.embed_state(states) + time_emb
        action_emb = self.embed_action(actions) + time_emb
        return_emb = self.embed_return(returns_to_go) + time_emb

        # [B, 3, T, D] -> [B, T, 3, D] -> [B, 3T, D], ordered R_1, s_1, a_1, R_2, ... (or
        # s_1, R_1, a_1, ... with a return head)
        step = step_tokens(self.return_bins, return_emb, state_emb, action_emb)
        tokens = torch.stack(step, dim=2).reshape(B, 3 * T, -1)
        tokens = self.embed_ln(tokens)
        token_mask = None if attention_mask is None else attention_mask.repeat_interleave(3, dim=1)

        x = self.transformer(inputs_embeds=tokens, attention_mask=token_mask)
        x = x.reshape(B, T, 3, self.hidden_size)  # x[:, t, i]: step t's i-th token

        state_preds = self.predict_state(x[:, :, 2])  # next state, given state and action
        if self.return_bins:
            # R_t's bins from s_t's token, which sees s_t and what came before, never R_t.
            return_preds = self.predict_return_bins(x[:, :, 0])  # [B, T, bins]: logits
        else:
            return_preds = self.predict_return(x[:, :, 2])  # next return, given state and action
        # a_t from the middle token (s_t's, or R_t's with a return head), which sees both R_t
        # and s_t: a distribution over [B, T, A]
        dist = self.predict_action(x[:, :, 1], self.action_scale, self.action_bias)
        return state_preds, dist if return_dist else dist.mean_action, return_preds

    def time_embedding(self, timesteps: torch.Tensor) -> torch.Tensor | float:
        """What each token of a timestep gets added: its embedding, or 0 without one."""
        return 0.0 if self.embed_timestep is None else self.embed_timestep(timesteps)

    @torch.no_grad()
    def get_actions(
        self,
        states,
        actions,
        rewards,
        returns_to_go,
        timesteps,
        generator: torch.Generator | None = None,
        **kwargs,
    ):
        """Equal-length histories ``[N, T, ...]`` -> actions ``[N, act_dim]`` for the last step:
        the mean action, or with a ``generator`` (data collection) a sample of the stochastic
        head drawn from it (the deterministic head has nothing to draw: its action).

        In ``full`` attention the model sees the last ``eval_context`` steps (``max_length``
        unless set), left-padded to ``max_length`` and masked (the original; the ODT's
        ``eval_context_length``). In ``window`` attention it sees the whole history under the
        banded mask: a token's context reaches further back through each layer, so cutting the
        history would change the result; :meth:`act_step` gives the same actions at a constant
        cost per step. A window model with a shorter ``eval_context`` sees only that many steps.
        """
        _, dist, _ = self.window_forward(states, actions, returns_to_go, timesteps, **kwargs)
        return act_on(dist[:, -1], generator)

    @torch.no_grad()
    def get_return_logits(self, states, actions, rewards, returns_to_go, timesteps, **kwargs):
        """Histories as :meth:`get_actions` takes them -> the return head's logits ``[N, bins]``
        for the last step (the value of its ``R_t`` is not seen: only what came before it)."""
        return self.window_forward(states, actions, returns_to_go, timesteps, **kwargs)[2][:, -1]

    def window_forward(self, states, actions, returns_to_go, timesteps, **kwargs):
        """:meth:`forward` (``return_dist``) over the window :meth:`get_actions` describes."""
        pad = 0
        if self.eval_context is not None and self.eval_context < self.max_length:
            n = self.eval_context
            history = (states, actions, returns_to_go, timesteps)
            states, actions, returns_to_go, timesteps = (
                None if x is None else x[:, -n:] for x in history
            )
        if self.attention != "window":
            states, pad = self.window(states)
            actions, _ = self.window(actions)
            returns_to_go, _ = self.window(returns_to_go)
            timesteps, _ = self.window(timesteps)
        N, T = states.shape[:2]
        attention_mask = None  # pad is a Python int: no padding known without asking the device
        if pad:
            attention_mask = torch.ones((N, T), dtype=torch.long, device=states.device)
            attention_mask[:, :pad] = 0
        return self(
            states.float(),
            actions.float(),
            None,
            returns_to_go.float(),
            timesteps.long(),
            attention_mask=attention_mask,
            return_dist=True,
            **kwargs,
        )

    def new_rollout_cache(self, batch: int) -> RollingKVCache:
        """An empty key/value cache for ``batch`` episodes played in lockstep (:meth:`act_step`)."""
        device = self.embed_state.weight.device
        n_layer = self.transformer.config.n_layer
        return RollingKVCache(n_layer, self.max_length, batch, device)

    @torch.no_grad()
    def act_step(
        self,
        cache: RollingKVCache,
        state: torch.Tensor,
        prev_action: torch.Tensor,
        return_to_go: torch.Tensor,
        t: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The actions ``[N, act_dim]`` at step ``t`` of ``N`` episodes, feeding only this step's
        new tokens: ``prev_action [N, act_dim]`` (a_{t-1}, ignored at t = 0), ``return_to_go
        [N, 1]`` and ``state [N, state_dim]`` (normalised). Equals :meth:`get_actions` on the
        whole history in ``window`` attention acting on all ``max_length`` steps, and otherwise
        while ``t < eval_context``, before anything leaves the context; with a ``generator``,
        samples as :meth:`get_actions` does (the same draws).

        With a return head the step's new tokens are ``(a_{t-1}, s_t, R_t)`` and the action is
        read off ``R_t``'s; :meth:`return_logits_step` then :meth:`act_step_return` feed the
        same tokens in two parts, to act on a return sampled from ``s_t``'s."""
        action_emb, state_emb = self._step_start_embeddings(cache, state, prev_action, t)
        return_emb = self._step_return_embedding(return_to_go, t)
        if self.return_bins:
            new = (action_emb, state_emb, return_emb)
        else:
            new = (action_emb, return_emb, state_emb)
        h = self.transformer(self.embed_ln(torch.stack(new, dim=1)), cache=cache)  # [N, 1, D]
        return act_on(self.predict_action(h[:, -1], self.action_scale, self.action_bias), generator)

    @torch.no_grad()
    def return_logits_step(
        self, cache: RollingKVCache, state: torch.Tensor, prev_action: torch.Tensor, t: int
    ) -> torch.Tensor:
        """A return-head model's first part of step ``t``: feeds ``(a_{t-1}, s_t)`` and returns
        the return head's logits ``[N, bins]`` off ``s_t``'s token."""
        action_emb, state_emb = self._step_start_embeddings(cache, state, prev_action, t)
        tokens = self.embed_ln(torch.stack((action_emb, state_emb), dim=1))
        h = self.transformer(tokens, cache=cache)
        return self.predict_return_bins(h[:, -1])

    @torch.no_grad()
    def act_step_return(
        self,
        cache: RollingKVCache,
        return_to_go: torch.Tensor,
        t: int,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """The second part of step ``t`` after :meth:`return_logits_step`: feeds ``R_t``
        (``return_to_go [N, 1]``) and returns the actions ``[N, act_dim]`` off its token."""
        if cache.next_pos != 3 * t + 1:
            raise ValueError(f"step {t}'s return comes right after its state: feed that first")
        token = self.embed_ln(self._step_return_embedding(return_to_go, t))[:, None]
        h = self.transformer(token, cache=cache)
        return act_on(self.predict_action(h[:, -1], self.action_scale, self.action_bias), generator)

    def _step_start_embeddings(self, cache, state, prev_action, t):
        """``a_{t-1}``'s and ``s_t``'s embeddings ``[N, D]``, the cache checked to be at ``t``."""
        if cache.steps != t or cache.next_pos != 3 * t - 1:
            raise ValueError(f"the cache is at step {cache.steps}, not {t}: feed every step once")
        ts = torch.tensor([max(t - 1, 0), t], device=state.device)
        time_prev, time_now = (0.0, 0.0) if self.embed_timestep is None else self.embed_timestep(ts)
        action_emb = self.embed_action(prev_action.float()) + time_prev
        return action_emb, self.embed_state(state.float()) + time_now

    def _step_return_embedding(self, return_to_go: torch.Tensor, t: int) -> torch.Tensor:
        time_now = self.time_embedding(torch.tensor(t, device=return_to_go.device))
        return self.embed_return(return_to_go.float()) + time_now

    def return_targets(self, returns_to_go: torch.Tensor, groups=()) -> torch.Tensor:
        """The bins ``[B, T]`` (long) of ``returns_to_go [B, T, 1]``: the return head's targets
        (``groups`` is the multi-task model's; one task here)."""
        return bin_index(returns_to_go[..., 0], self.return_range, self.return_bins)

    def expert_returns(
        self, logits: torch.Tensor, kappa: float, uniforms: torch.Tensor
    ) -> torch.Tensor:
        """Returns ``[N]`` (scaled) sampled from the return head's ``logits [N, bins]`` tilted
        toward high returns by ``kappa`` (return_bins.py), one uniform per row."""
        return sample_returns(logits, self.return_range, kappa, uniforms)


def step_tokens(return_bins: int, return_emb, state_emb, action_emb) -> tuple:
    """A step's three token embeddings in the model's order: ``(R_t, s_t, a_t)``, the original's,
    or with a return head ``(s_t, R_t, a_t)``, so that the head, reading ``s_t``'s output, never
    sees the ``R_t`` it predicts (causal attention: a token sees only those before it)."""
    if return_bins:
        return state_emb, return_emb, action_emb
    return return_emb, state_emb, action_emb


def act_on(dist: PointMass | SquashedGaussian, generator: torch.Generator | None) -> torch.Tensor:
    """What a policy plays: evaluation acts on the mean action; collection (a ``generator``)
    samples, so the ODT explores with its own entropy."""
    return dist.mean_action if generator is None else dist.sample(generator)
