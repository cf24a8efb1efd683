"""The rollout core all evaluators share: episode histories, return-to-go bookkeeping, model calls.

:class:`Rollout` plays ``n`` episodes in lockstep (``n = 1`` for the one-episode evaluators), the
way its :class:`RolloutSpec` says (episode cap, state normalisation, return conditioning). The
caller owns the envs: it resets them, passes the first observations to :meth:`Rollout.start`, asks
:meth:`Rollout.act` for the actions of the current step, steps its envs and hands the outcome to
:meth:`Rollout.record`. The batch never shrinks: an episode that has ended stays as a row whose
actions nobody uses, so every model call has the same shapes and a ``torch.compile``'d model
compiles once.

How the model is called:

* a DT in ``window`` attention: :meth:`~DecisionTransformer.act_step` with a rolling key/value
  cache, three new tokens per step, whatever the episode's length;
* a DT in ``full`` attention: the cache while the window is still filling (``t < K``), then the
  original recomputation of the last ``K`` steps once it slides;
* anything else (BC): ``get_actions`` on the last ``K`` steps.

A DT whose ``eval_context`` N is shorter than its K (the ODT's ``eval_context_length``) acts on
the last N steps only, in either attention: the cache while ``t < N``, then the recomputation
of the last N steps (left-padded to K and masked by the model, as the ODT's reference does).

With ``RolloutSpec.return_kappa`` set (``--env_targets auto``, a DT with a return head) the
return-to-go is not counted down from a target: at every step the model's return distribution
at ``s_t``, tilted toward high returns, is sampled and fed as ``R_t`` (Multi-Game DT's expert
return inference), each episode drawing from its own generator seeded by its episode seed, so
its returns do not depend on what it is batched with. Cached, a step is fed in two parts
(``(a_{t-1}, s_t)``, then ``R_t``); recomputing, the window is run twice (once for the return,
once for the action).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class RolloutSpec:
    """How a rollout's episodes are played, whatever env plays them: what the evaluators and data
    collection share. Episode-level only; the envs, seeds and model come with each call."""

    max_ep_len: int  # the episode cap (also the history's length and the model's K fallback)
    state_mean: np.ndarray  # what the policy normalises its states with
    state_std: np.ndarray
    device: str | torch.device = "cpu"
    target_return: float | None = None  # divided by ``scale`` already; None starts at zero
    scale: float = 1000.0  # what each reward is divided by before it leaves the return-to-go
    mode: str = "normal"  # 'delayed' keeps the return-to-go fixed; 'noise' perturbs the reset
    conditioned: bool = True  # a DT; False for a policy that ignores returns (BC)
    use_cache: bool = True  # False recomputes every step (a DT's check and benchmark baseline)
    # Set: each step's return-to-go is sampled from the model's return head, tilted by this.
    return_kappa: float | None = None


class Rollout:
    def __init__(
        self,
        model,
        n: int,
        state_dim: int,
        act_dim: int,
        spec: RolloutSpec,
        generator: torch.Generator | None = None,
        seeds: list[int | None] | None = None,
    ):
        """``seeds``: each row's episode seed, which seeds the row's draws of its returns when
        the spec samples them (``return_kappa``); None leaves them unseeded."""
        self.model, self.spec, self.n = model, spec, n
        # Data collection: the DT samples its stochastic head from this generator (one draw of
        # [n, act_dim] per step, cached or not); None acts on the mean, as evaluation does.
        self.sample = {} if generator is None else {"generator": generator}
        max_ep_len = spec.max_ep_len
        self.device = device = torch.device(spec.device)
        self.mean = torch.as_tensor(spec.state_mean, device=device, dtype=torch.float32)
        self.std = torch.as_tensor(spec.state_std, device=device, dtype=torch.float32)
        self.K = model.max_length or max_ep_len
        # The steps the model acts on: its eval_context (a DT's; K unless set), else K.
        self.context = getattr(model, "eval_context", None) or self.K
        # Window attention over all K steps acts on the whole history through the cache.
        self.window_mode = (
            getattr(model, "attention", "full") == "window" and self.context == self.K
        )
        cached = (
            spec.use_cache and spec.conditioned and hasattr(model, "act_step") and model.max_length
        )
        self.cache = model.new_rollout_cache(n) if cached else None
        # Row i of step t is written once and never moved; the model reads slices of these.
        self.states = torch.zeros((n, max_ep_len + 1, state_dim), device=device)
        self.actions = torch.zeros((n, max_ep_len + 1, act_dim), device=device)
        self.rewards = torch.zeros((n, max_ep_len + 1), device=device)
        self.rtg = torch.zeros((n, max_ep_len + 1), device=device)
        self.timesteps = torch.arange(max_ep_len + 1, device=device).expand(n, -1)
        self.target = None if spec.target_return is None else float(spec.target_return)
        self.t = 0
        self.return_draws = None
        if spec.return_kappa is not None:
            if not getattr(model, "return_bins", 0):
                raise ValueError("sampling returns needs a model with a return head")
            self.return_draws = [
                torch.Generator() if s is None else torch.Generator().manual_seed(int(s))
                for s in (seeds if seeds is not None else [None] * n)
            ]

    def normalize(self, obs: np.ndarray) -> torch.Tensor:
        obs = torch.as_tensor(obs, device=self.device, dtype=torch.float32)
        return (obs - self.mean) / self.std

    def start(self, obs: np.ndarray) -> None:
        """The first observations ``[n, state_dim]`` of the episodes (after any reset noise)."""
        self.states[:, 0] = self.normalize(obs)
        if self.target is not None:
            self.rtg[:, 0] = self.target

    @torch.no_grad()
    def act(self) -> torch.Tensor:
        """The actions ``[n, act_dim]`` for the current step, kept in the history."""
        t, model = self.t, self.model
        if self.cache is not None and (self.window_mode or t < self.context):
            prev = self.actions[:, t - 1] if t else self.actions[:, 0]
            if self.return_draws is not None:
                logits = model.return_logits_step(self.cache, self.states[:, t], prev, t)
                self.rtg[:, t] = self.expert_returns(logits)
                act = model.act_step_return(self.cache, self.rtg[:, t, None], t, **self.sample)
            else:
                act = model.act_step(
                    self.cache, self.states[:, t], prev, self.rtg[:, t, None], t, **self.sample
                )
        else:
            if self.cache is not None:
                self.cache = None  # full attention and the window slid: recompute from now on
            # The model sees at most its last K (eval_context) steps (in window attention,
            # without the cache, the whole history, which get_actions takes as is).
            lo = 0 if self.window_mode else max(0, t + 1 - self.context)
            if self.return_draws is not None:  # R_t is not seen by its own logits: any value
                logits = model.get_return_logits(
                    self.states[:, lo : t + 1],
                    self.actions[:, lo : t + 1],
                    self.rewards[:, lo : t + 1],
                    self.rtg[:, lo : t + 1, None],
                    self.timesteps[:, lo : t + 1],
                )
                self.rtg[:, t] = self.expert_returns(logits)
            act = model.get_actions(
                self.states[:, lo : t + 1],
                self.actions[:, lo : t + 1],
                self.rewards[:, lo : t + 1],
                self.rtg[:, lo : t + 1, None] if self.spec.conditioned else None,
                self.timesteps[:, lo : t + 1] if self.spec.conditioned else None,
                **self.sample,
            )
        self.actions[:, t] = act.float()
        return act

    def expert_returns(self, logits: torch.Tensor) -> torch.Tensor:
        """This step's returns ``[n]``: one uniform per row from the row's own generator, drawn
        into the tilted distribution of its ``logits``."""
        uniforms = torch.stack([torch.rand((), generator=g) for g in self.return_draws])
        return self.model.expert_returns(logits, self.spec.return_kappa, uniforms)

    def record(self, obs: np.ndarray, reward: np.ndarray) -> None:
        """What the envs returned for the current step's actions: next observations ``[n, S]``
        and rewards ``[n]``. The return-to-go falls by each reward ('delayed' keeps it fixed)."""
        t = self.t
        self.states[:, t + 1] = self.normalize(obs)
        reward = np.asarray(reward, dtype=np.float64).reshape(self.n)
        self.rewards[:, t] = torch.as_tensor(reward, device=self.device, dtype=torch.float32)
        if self.spec.mode == "delayed":
            self.rtg[:, t + 1] = self.rtg[:, t]
        else:
            step = torch.as_tensor(
                reward / self.spec.scale, device=self.device, dtype=torch.float32
            )
            self.rtg[:, t + 1] = self.rtg[:, t] - step
        self.t += 1
