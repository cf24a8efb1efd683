"""One Decision Transformer over several bodies (tasks): a shared backbone, per-task embeddings.

Bodies differ in observation and action sizes (Hopper 11/3, Walker2d 17/6, HalfCheetah 17/6,
Ant 105/8), so what touches a state or an action is the task's own (:class:`TaskParts`: state
and action embeddings, the action head, the action bounds, and the untrained state and return
heads the original DT keeps); the backbone, the timestep and return embeddings and the token
LayerNorm are shared (returns are divided by each task's own scale before they get here).

A batch that mixes tasks arrives with its rows grouped by task (``groups``: ``(task, rows)``
pairs in row order, known on the host): each group goes through its own linears, then all rows
go through the backbone in ONE call, then each group through its own action head.

For acting, :meth:`MultiTaskDecisionTransformer.task_model` returns a plain
:class:`DecisionTransformer` whose modules ARE the shared model's (no copy): the evaluators, the
rolling key/value cache and ``act_step`` serve each task unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .decision_transformer import DecisionTransformer, step_tokens
from .model import TrajectoryModel
from .policy_heads import make_policy_head
from .return_bins import bin_index


@dataclass(frozen=True)
class TaskShape:
    """What a task's own modules are built from: its env's sizes, episode cap and action box."""

    state_dim: int
    act_dim: int
    max_ep_len: int
    action_low: np.ndarray
    action_high: np.ndarray


class TaskParts(nn.Module):
    """One task's own modules and action bounds (the names are the single-task DT's)."""

    def __init__(
        self,
        shape: TaskShape,
        hidden_size: int,
        policy: str,
        squash: bool = True,
        return_bins: int = 0,
    ):
        super().__init__()
        self.state_dim, self.act_dim = shape.state_dim, shape.act_dim
        self.embed_state = nn.Linear(shape.state_dim, hidden_size)
        self.embed_action = nn.Linear(shape.act_dim, hidden_size)
        self.predict_state = nn.Linear(hidden_size, shape.state_dim)
        self.predict_action = make_policy_head(policy, hidden_size, shape.act_dim, squash=squash)
        self.predict_return = nn.Linear(hidden_size, 1)
        # As TrajectoryModel: tanh's [-1, 1] mapped onto this env's action box.
        low = torch.tensor(np.broadcast_to(shape.action_low, (shape.act_dim,)), dtype=torch.float32)
        high = torch.tensor(
            np.broadcast_to(shape.action_high, (shape.act_dim,)), dtype=torch.float32
        )
        self.register_buffer("action_scale", (high - low) / 2)
        self.register_buffer("action_bias", (high + low) / 2)
        # With a return head: the task's own bins over its own return range (the single-task
        # DT's names, so the task's view serves as that model).
        if return_bins:
            self.predict_return_bins = nn.Linear(hidden_size, return_bins)
            self.register_buffer("return_range", torch.tensor([0.0, 1.0]))


class MultiTaskDecisionTransformer(nn.Module):
    """``MultiTaskDecisionTransformer(template, shapes)``: ``template`` is a single-task DT (GPT-2
    or Qwen3 backbone) built with the largest ``max_ep_len`` of the tasks; its backbone and
    shared embeddings are taken over, and each of ``shapes`` gets its :class:`TaskParts`."""

    def __init__(self, template: DecisionTransformer, shapes: list[TaskShape]):
        super().__init__()
        if not shapes:
            raise ValueError("a multi-task model needs at least one task")
        self.view_class = type(template)
        self.hidden_size = template.hidden_size
        self.max_length = template.max_length
        self.eval_context = template.eval_context
        self.attention = template.attention
        self.policy = template.policy
        self.action_tanh = template.action_tanh
        self.transformer = template.transformer
        self.embed_timestep = template.embed_timestep
        self.embed_return = template.embed_return
        self.embed_ln = template.embed_ln
        self.return_bins = template.return_bins
        self.tasks = nn.ModuleList(
            TaskParts(s, self.hidden_size, self.policy, self.action_tanh, self.return_bins)
            for s in shapes
        )
        self.max_act_dim = max(s.act_dim for s in shapes)

    def time_embedding(self, timesteps: torch.Tensor) -> torch.Tensor | float:
        return 0.0 if self.embed_timestep is None else self.embed_timestep(timesteps)

    def set_return_range(self, task: int, low: float, high: float) -> None:
        """Task ``task``'s scaled return-to-go range, which its bins cut (its data's)."""
        self.task_model(task).set_return_range(low, high)

    def return_targets(self, returns_to_go: torch.Tensor, groups=()) -> torch.Tensor:
        """The bins ``[B, T]`` of ``returns_to_go [B, T, 1]``, each row by its task's range."""
        out, row = [], 0
        for task, n in groups:
            parts = self.tasks[task]
            out.append(bin_index(returns_to_go[row : row + n, :, 0], parts.return_range,
                                 self.return_bins))  # fmt: skip
            row += n
        return torch.cat(out)

    def forward(
        self,
        states,
        actions,
        rewards,
        returns_to_go,
        timesteps,
        attention_mask=None,
        groups: tuple[tuple[int, int], ...] = (),
    ):
        """Rows grouped by task as ``groups`` says (``(task, rows)`` in row order, covering the
        batch); ``states [B, T, S_max]`` and ``actions [B, T, A_max]`` zero-padded past each
        task's own sizes. Returns ``(None, action_preds [B, T, A_max], None)``, each row's
        predictions zero past its task's action size (the state and return heads are the
        original's untrained ones: not computed); with a return head, its logits ``[B, T,
        bins]`` (each row's task's head) in place of the last None."""
        B, T = states.shape[:2]
        if sum(n for _, n in groups) != B:
            raise ValueError(f"groups {groups} do not cover the batch's {B} rows")
        time_emb = self.time_embedding(timesteps)
        state_emb, action_emb = self._embed_per_task(states, actions, groups)
        state_emb = state_emb + time_emb
        action_emb = action_emb + time_emb
        return_emb = self.embed_return(returns_to_go) + time_emb

        step = step_tokens(self.return_bins, return_emb, state_emb, action_emb)
        tokens = torch.stack(step, dim=2).reshape(B, 3 * T, -1)
        tokens = self.embed_ln(tokens)
        token_mask = None if attention_mask is None else attention_mask.repeat_interleave(3, dim=1)
        x = self.transformer(inputs_embeds=tokens, attention_mask=token_mask)  # the one call
        x = x.reshape(B, T, 3, self.hidden_size)

        preds, logits, row = [], [], 0
        for task, n in groups:
            parts = self.tasks[task]
            dist = parts.predict_action(
                x[row : row + n, :, 1], parts.action_scale, parts.action_bias
            )
            preds.append(F.pad(dist.mean_action, (0, self.max_act_dim - parts.act_dim)))
            if self.return_bins:  # from s_t's token (step_tokens' order): it never sees R_t
                logits.append(parts.predict_return_bins(x[row : row + n, :, 0]))
            row += n
        action_preds = torch.cat(preds)
        return_logits = torch.cat(logits) if logits else None
        return None, self._touch_absent_tasks(action_preds, groups), return_logits

    def _embed_per_task(self, states, actions, groups) -> tuple[torch.Tensor, torch.Tensor]:
        """Each task's rows through its own state and action embeddings, in row order."""
        state_emb, action_emb = [], []
        row = 0
        for task, n in groups:
            parts = self.tasks[task]
            rows = slice(row, row + n)
            state_emb.append(parts.embed_state(states[rows, :, : parts.state_dim]))
            action_emb.append(parts.embed_action(actions[rows, :, : parts.act_dim]))
            row += n
        return torch.cat(state_emb), torch.cat(action_emb)

    def _touch_absent_tasks(self, action_preds: torch.Tensor, groups) -> torch.Tensor:
        """Tasks with no row here still get a (zero) gradient: every parameter is then updated
        on every step, so one process and DDP ranks holding other tasks' rows step alike."""
        present = {task for task, _ in groups}
        absent = [
            p
            for i, parts in enumerate(self.tasks)
            if i not in present
            for p in parts.parameters()
            if p.requires_grad
        ]
        return action_preds + 0.0 * sum(p.sum() for p in absent) if absent else action_preds

    def task_model(self, task: int) -> DecisionTransformer:
        """Task ``task`` as a single-task DT sharing this model's modules (nothing is copied:
        acting through it acts with these very weights)."""
        parts = self.tasks[task]
        view = self.view_class.__new__(self.view_class)
        TrajectoryModel.__init__(view, parts.state_dim, parts.act_dim, self.max_length)
        view.action_scale, view.action_bias = parts.action_scale, parts.action_bias
        view.hidden_size, view.action_tanh = self.hidden_size, self.action_tanh
        view.policy, view.attention, view.eval_context = (
            self.policy,
            self.attention,
            self.eval_context,
        )
        view.transformer = self.transformer
        view.embed_timestep, view.embed_return, view.embed_ln = (
            self.embed_timestep,
            self.embed_return,
            self.embed_ln,
        )
        view.embed_state, view.embed_action = parts.embed_state, parts.embed_action
        view.predict_state, view.predict_action = parts.predict_state, parts.predict_action
        view.predict_return = parts.predict_return
        view.return_bins = self.return_bins
        if self.return_bins:
            view.predict_return_bins = parts.predict_return_bins
            view.register_buffer("return_range", parts.return_range)  # the task's own tensor
        view.training = self.training
        return view
