"""What the online phase does, below the run: which return it explores at, how the policy acts
when evaluated (and when collecting), how collected states line up with their actions from the
simulator through the replay buffer to a training window, and the entropy machinery's dual step.

Episodes are played in the real Hopper simulator and checked by replaying their actions in a
fresh env; the trainer's dual step is checked against Adam's first step worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from decision_transformer.data.replay_buffer import TrajectoryReplayBuffer
from decision_transformer.data.trajectories import TrajectoryDataset
from decision_transformer.envs import default_online_rtg, get_spec, make_env
from decision_transformer.evaluation.collect import collect_batched
from decision_transformer.evaluation.evaluate_episodes import EvalEpisodes
from decision_transformer.evaluation.rollout import Rollout, RolloutSpec
from decision_transformer.models.decision_transformer import DecisionTransformer
from decision_transformer.training.odt_trainer import ODTTrainer
from decision_transformer.training.trainer import TrainerOptions

S, A, K = 11, 3, 4  # Hopper's observation and action sizes


def hopper_dt(seed=0):
    torch.manual_seed(seed)
    return DecisionTransformer(
        S, A, 32, max_length=K, max_ep_len=1000, n_layer=1, n_head=1, policy="stochastic"
    ).eval()


def statistics():
    """State mean/std that are not 0/1, so a missed (de)normalisation shows."""
    rng = np.random.default_rng(0)
    return rng.normal(0, 0.3, S).astype(np.float32), rng.uniform(0.5, 2, S).astype(np.float32)


# ------------------------------------------------------------------ the exploration return


@pytest.mark.parametrize(
    "env,targets,want",
    [
        ("hopper", [3600.0, 1800.0], 7200.0),  # the reference code's main.py
        ("halfcheetah", [12000.0, 6000.0], 12000.0),  # the paper's, not 2 x 12000
        ("humanoid", [6000.0, 3000.0], 12000.0),  # the rule: 2 x the largest target
        ("walker2d", [5000.0, 2500.0], 10000.0),
        ("humanoid", [1000.0], 2000.0),  # the rule follows the targets asked for
    ],
)
def test_default_exploration_return(env, targets, want):
    assert default_online_rtg(env, targets) == want


def test_collection_is_conditioned_on_the_exploration_return():
    """The model's first return-to-go input is the target divided by the env's scale."""
    model = hopper_dt()
    seen = []
    hook = model.embed_return.register_forward_hook(lambda m, i, o: seen.append(i[0].clone()))
    mean, std = statistics()
    episodes = EvalEpisodes("hopper", mean, std, 7200.0)
    collect_batched(episodes, model, [3], 1, torch.Generator().manual_seed(0))
    hook.remove()
    assert seen[0].flatten()[0].item() == pytest.approx(7200.0 / get_spec("hopper").scale)


# ------------------------------------------------------------------ how the policy acts


def play(model, generator, steps=8, seed=5):
    env = make_env("hopper")
    obs, _ = env.reset(seed=seed)
    mean, std = statistics()
    r = Rollout(model, 1, S, A, RolloutSpec(1000, mean, std, target_return=3.6), generator)
    r.start(obs[None])
    acts = []
    for _ in range(steps):
        a = r.act()
        acts.append(a[0].clone())
        obs, reward, term, trunc, _ = env.step(a[0].numpy())
        r.record(obs[None], np.array([reward]))
        if term or trunc:
            break
    env.close()
    return r, torch.stack(acts)


def test_evaluation_acts_on_the_squashed_mean_collection_samples():
    """Evaluation (no generator) plays tanh(loc) on the box at the last position, whatever the
    global RNG; collection (a generator) plays draws of the Gaussian, reproducible by seed."""
    model = hopper_dt()
    torch.manual_seed(1)
    r, acts = play(model, None)
    torch.manual_seed(2)
    _, again = play(model, None)
    assert torch.equal(acts, again)
    for t in range(len(acts)):
        lo = max(0, t + 1 - K)
        with torch.no_grad():
            _, dist, _ = model(
                r.states[:, lo : t + 1], r.actions[:, lo : t + 1], None,
                r.rtg[:, lo : t + 1, None], r.timesteps[:, lo : t + 1], return_dist=True,
            )  # fmt: skip
        want = torch.tanh(dist.loc[0, -1]) * model.action_scale + model.action_bias
        torch.testing.assert_close(acts[t], want, atol=1e-5, rtol=1e-5)
    _, sampled = play(model, torch.Generator().manual_seed(9))
    _, resampled = play(model, torch.Generator().manual_seed(9))
    assert torch.equal(sampled, resampled)
    n = min(len(sampled), len(acts))
    assert (sampled[:n] - acts[:n]).abs().max() > 1e-3


# ------------------------------------------------------------------ states line up with actions


def test_collected_episodes_line_up_from_the_simulator_to_a_training_window():
    """Each collected step holds the observation the action was played at, the action, and the
    reward it earned: replaying the actions in a fresh env from the same seed gives back every
    observation and reward exactly. In the buffer and in a training window, the state, action
    and return-to-go of one timestep stay together."""
    model = hopper_dt()
    mean, std = statistics()
    episodes = EvalEpisodes("hopper", mean, std, 3600.0)
    seeds = [21, 22, 23]
    paths, returns, lengths = collect_batched(
        episodes, model, seeds, 2, torch.Generator().manual_seed(4)
    )
    assert [len(p["actions"]) for p in paths] == list(lengths)
    env = make_env("hopper")
    for seed, path, ret in zip(seeds, paths, returns):
        obs, _ = env.reset(seed=seed)
        for t, action in enumerate(path["actions"]):
            np.testing.assert_array_equal(path["observations"][t], obs.astype(np.float32))
            obs, reward, term, trunc, _ = env.step(action)
            assert path["rewards"][t] == np.float32(reward)
            assert bool(path["terminals"][t]) == term
        assert term or trunc  # the episode ended where the path does
        assert float(path["rewards"].sum(dtype=np.float64)) == pytest.approx(ret, rel=1e-6)
    env.close()

    # Two offline trajectories, one of which the collected ones push out (capacity 4): the
    # collected ones then neither start at row 0 nor where they would without the drop.
    rng = np.random.default_rng(1)
    offline = TrajectoryDataset.from_paths(
        [
            dict(
                observations=rng.normal(size=(n, S)).astype(np.float32),
                actions=rng.uniform(-1, 1, (n, A)).astype(np.float32),
                rewards=np.full(n, r, dtype=np.float32),
                terminals=np.arange(n) == n - 1,
            )
            for n, r in ((7, 1.0), (5, 2.0))
        ]
    )
    offline.state_mean, offline.state_std = mean, std
    buffer = TrajectoryReplayBuffer.from_dataset(offline, capacity=4)
    buffer.add([dict(p) for p in paths])
    assert len(buffer) == 4 and buffer.lengths[0] == 5
    scale = get_spec("hopper").scale
    sampler = buffer.sampler(K, 1000, scale)
    for i, path in enumerate(paths, start=1):
        T = len(path["actions"])
        for start in (0, T // 2, max(T - 2, 0)):
            states, actions, _, _, rtg, timesteps, mask = sampler.build(
                np.array([i]), np.array([start]), K
            )
            real = mask[0] > 0
            assert real.any()
            for j in np.flatnonzero(real.numpy()):
                t = int(timesteps[0, j])
                want_state = (path["observations"][t] - mean) / std
                np.testing.assert_allclose(states[0, j].numpy(), want_state, rtol=1e-5, atol=1e-5)
                np.testing.assert_array_equal(actions[0, j].numpy(), path["actions"][t])
                to_go = path["rewards"][t:].sum(dtype=np.float64) / scale
                assert rtg[0, j, 0].item() == pytest.approx(to_go, rel=1e-5, abs=1e-6)


# ------------------------------------------------------------------ the entropy machinery


def dual_step(target_entropy):
    """One ODTTrainer step on a fixed batch; (log-temperature before, after, logs)."""
    model = hopper_dt()
    model.train()
    g = torch.Generator().manual_seed(0)
    B = 6
    batch = (
        torch.randn(B, K, S, generator=g),
        torch.rand(B, K, A, generator=g) * 1.8 - 0.9,
        torch.zeros(B, K, 1),
        torch.zeros(B, K),
        torch.rand(B, K + 1, 1, generator=g),
        torch.arange(K).expand(B, K),
        torch.ones(B, K),
    )
    trainer = ODTTrainer(
        model, torch.optim.AdamW(model.parameters(), lr=1e-4), lambda: batch, None, None,
        TrainerOptions(progress=False), target_entropy=target_entropy,
    )  # fmt: skip
    before = trainer.temperature.log_value.item()
    torch.manual_seed(3)  # the entropy draw
    trainer.train_step()
    return before, trainer.temperature.log_value.item(), trainer.diagnostics


def test_dual_step_follows_the_entropy_not_the_nll():
    """The temperature moves by Adam's first step (its learning rate, 1e-4, in log-temperature)
    against the sign of H - target: down while the entropy is above its target, up below it.
    The target is put between the step's entropy and its NLL, so a dual step fed the NLL (or
    with its sign flipped) moves the other way. The logged temperature is the one the policy
    loss used, the one before the step."""
    _, _, probe = dual_step(0.0)
    H, nll = probe["training/entropy"], probe["training/nll"]
    assert nll - H > 0.5, (H, nll)
    # Between H and the NLL (H below it: up), and below both (down).
    for target in (H + 0.25 * (nll - H), H - 1.0):
        before, after, logs = dual_step(target)
        assert logs["training/entropy"] == pytest.approx(H)
        assert logs["training/temperature"] == pytest.approx(np.exp(before))
        want = before - 1e-4 * np.sign(H - target)
        assert after == pytest.approx(want, abs=2e-6), (target, H, nll, before, after)
