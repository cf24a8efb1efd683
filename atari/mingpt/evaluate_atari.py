"""Playing the Atari DT in ALE: batched over environments, one model call per step.

Episode ``i`` resets its environment with seed ``seed + i`` (which fixes its no-op start) and
samples actions from the policy with its own generator seeded ``seed + i``, so an episode plays
the same whichever environment slot runs it and however many run at once. The return-to-go
starts at the target and is reduced by each raw (unclipped) reward, as the original did.

Each frame stack goes through the conv encoder once, when it is observed; the window keeps its
embeddings (the original re-encoded all K stacks of the window at every step).

Under ``torchrun`` (:func:`evaluate_episodes`) each rank plays a contiguous share of the
episodes, still episode ``i`` with seed ``seed + i``, and every rank gets all of them back.
"""

from __future__ import annotations

import contextlib
from collections import deque

import numpy as np
import torch
from atari_env import FrameStack, make_env
from decision_transformer.run.distributed import DistContext

from .model_atari import AtariDecisionTransformer


class _Episode:
    def __init__(self, index: int, frame: np.ndarray, target: float, seed: int, K: int):
        self.index, self.t, self.ret = index, 0, 0.0
        self.frames = FrameStack(frame)
        self.new_state = self.frames.get()  # observed, not yet encoded
        self.states: deque[torch.Tensor] = deque(maxlen=K)  # embeddings [n_embd]
        self.actions: deque[int] = deque(maxlen=K)
        self.rtgs = deque([float(target)], maxlen=K)
        self.gen = torch.Generator().manual_seed(seed)


@torch.no_grad()
def evaluate(
    model: AtariDecisionTransformer,
    game: str,
    target: float,
    episodes: int,
    num_envs: int,
    seed: int,
    device: torch.device,
    max_steps: int | None = None,
    autocast_dtype: torch.dtype | None = None,
    trace: list | None = None,
    action_set: list[int] | None = None,
    rtg_scale: float | None = None,
) -> list[float]:
    """Raw returns of ``episodes`` episodes, in episode order. ``trace``, if given, gets
    ``(episode, step, action)`` of every action taken, in the game's own action numbering.

    A multi-game model (run_dt_atari.py --games) acts in ALE's full 18-action set: then
    ``action_set`` is the game's minimal set as full-set ids (env action ``j`` is full id
    ``action_set[j]``), the logits are restricted to it, the sampled ``j`` is played and
    ``action_set[j]`` fed back to the model; ``rtg_scale`` divides the returns-to-go the model
    sees (the game's scale in training), the episode's own count staying in game points."""
    K = model.cfg.context_length
    was_training = model.training
    model.eval()
    envs = [make_env(game) for _ in range(max(1, min(num_envs, episodes)))]
    returns: list[float] = [0.0] * episodes
    next_ep = 0

    def start(env) -> _Episode | None:
        nonlocal next_ep
        if next_ep >= episodes:
            return None
        ep = next_ep
        next_ep += 1
        frame, _ = env.reset(seed=seed + ep)
        return _Episode(ep, frame, target, seed + ep, K)

    slots = [start(env) for env in envs]
    ctx = (
        torch.autocast(device.type, dtype=autocast_dtype)
        if autocast_dtype is not None
        else contextlib.nullcontext()
    )
    while any(s is not None for s in slots):
        live = [i for i, s in enumerate(slots) if s is not None]
        with ctx:
            new = model.encode(
                torch.from_numpy(np.stack([slots[i].new_state for i in live])).to(device)
            )
        for row, i in enumerate(live):
            slots[i].states.append(new[row])
        T = max(len(slots[i].states) for i in live)
        n = len(live)
        # Right-aligned windows, left padding masked out.
        states = new.new_zeros(n, T, new.shape[-1])
        actions = torch.zeros(n, T, dtype=torch.long)
        rtgs = torch.zeros(n, T, 1)
        timesteps = torch.zeros(n, 1, dtype=torch.long)
        mask = torch.zeros(n, T, dtype=torch.bool)
        for row, i in enumerate(live):
            ep = slots[i]
            L = len(ep.states)
            states[row, T - L :] = torch.stack(list(ep.states))
            past = list(ep.actions)[-(L - 1) :] if L > 1 else []
            actions[row, T - L : T - 1] = torch.tensor(past, dtype=torch.long)
            rtgs[row, T - L :, 0] = torch.tensor(list(ep.rtgs))
            if rtg_scale is not None:
                rtgs[row, T - L :, 0] /= rtg_scale
            timesteps[row, 0] = ep.t - L + 1  # the window's first step, as in training
            mask[row, T - L :] = True
        with ctx:
            logits = model.forward_encoded(
                states,
                actions.to(device),
                rtgs.to(device),
                timesteps.to(device),
                mask.to(device),
            )[:, -1]
        if action_set is not None:  # only the game's own actions can be played
            logits = logits[:, action_set]
        probs = logits.float().softmax(-1).cpu()
        for row, i in enumerate(live):
            ep, env = slots[i], envs[i]
            a = int(torch.multinomial(probs[row], 1, generator=ep.gen))
            if trace is not None:
                trace.append((ep.index, ep.t, a))
            frame, r, terminated, truncated, _ = env.step(a)
            ep.ret += float(r)
            ep.t += 1
            if terminated or truncated or (max_steps is not None and ep.t >= max_steps):
                returns[ep.index] = ep.ret
                slots[i] = start(env)
                continue
            ep.actions.append(a if action_set is None else action_set[a])
            ep.frames.push(frame)
            ep.new_state = ep.frames.get()
            ep.rtgs.append(ep.rtgs[-1] - float(r))
    for env in envs:
        env.close()
    model.train(was_training)
    return returns


def evaluate_episodes(
    model: AtariDecisionTransformer,
    game: str,
    target: float,
    episodes: int,
    num_envs: int,
    seed: int,
    device: torch.device,
    world: DistContext | None = None,
    trace: list | None = None,
    **kwargs,
) -> tuple[list[float], list[int]]:
    """:func:`evaluate`'s returns and each episode's length (agent steps), in episode order.

    With ``world`` of several ranks each rank plays its contiguous share of the episodes (the
    ranks' shares in rank order are episodes ``0 .. episodes - 1``, each still seeded
    ``seed + i``) and every rank ends with all of them; ``trace`` gets this rank's actions,
    numbered as episodes of the whole. ``kwargs`` go to :func:`evaluate`."""
    world = world or DistContext()
    mine = world.share(range(episodes))
    first = mine.start if len(mine) else 0
    local: list = []
    rets = []
    if len(mine):
        rets = evaluate(model, game, target, len(mine), num_envs, seed=seed + first,
                        device=device, trace=local, **kwargs)  # fmt: skip
    lengths = [0] * len(mine)
    for ep, t, _ in local:
        lengths[ep] = max(lengths[ep], t + 1)
    if trace is not None:
        trace.extend((ep + first, t, a) for ep, t, a in local)
    rets = world.gather_episodes(np.asarray(rets, dtype=np.float64)).tolist()
    lengths = world.gather_episodes(np.asarray(lengths, dtype=np.int64)).tolist()
    return rets, lengths
