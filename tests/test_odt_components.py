"""The Online Decision Transformer's parts: policy heads, ODT loss, trajectory replay buffer.

Densities are checked against torch.distributions, relabelled returns against sums done by hand
over episodes played in a real MuJoCo env, and the buffer's state against a file written and read
back the way checkpoints are.
"""

import copy

import numpy as np
import pytest
import torch
import torch.distributions as D
from decision_transformer.data.replay_buffer import TrajectoryReplayBuffer
from decision_transformer.data.trajectories import TrajectoryDataset
from decision_transformer.envs import get_spec, make_env
from decision_transformer.models.decision_transformer import DecisionTransformer
from decision_transformer.models.policy_heads import (
    LOG_STD_MAX,
    LOG_STD_MIN,
    DeterministicHead,
    SquashedGaussianHead,
    default_target_entropy,
    make_policy_head,
)
from decision_transformer.training.odt_loss import LogTemperature, odt_losses

A, H = 3, 8
# An asymmetric box, so a head that ignored the bias or the scale would be caught.
LOW = torch.tensor([-0.4, -1.0, 0.0], dtype=torch.float64)
HIGH = torch.tensor([0.4, 1.0, 2.0], dtype=torch.float64)
SCALE, BIAS = (HIGH - LOW) / 2, (HIGH + LOW) / 2


def gaussian(seed=0, shape=(4, 5)):
    """A stochastic head (float64) and its distribution over ``shape`` hidden states."""
    torch.manual_seed(seed)
    head = SquashedGaussianHead(H, A).double()
    h = torch.randn(*shape, H, dtype=torch.float64)
    return head, h, head(h, SCALE, BIAS)


def torch_reference(dist):
    """The same law built from torch.distributions: Normal -> tanh -> affine onto the box."""
    base = D.Normal(dist.loc, dist.log_std.exp())
    return D.TransformedDistribution(
        base, [D.TanhTransform(), D.AffineTransform(loc=BIAS, scale=SCALE)]
    )


def test_gaussian_log_prob_matches_torch_distributions():
    _, _, dist = gaussian()
    # Actions strictly inside the box, some near its edges.
    u = torch.rand(4, 5, A, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    actions = LOW + (HIGH - LOW) * (0.001 + 0.998 * u)
    want = torch_reference(dist).log_prob(actions).sum(-1)
    torch.testing.assert_close(dist.log_prob(actions), want, rtol=1e-9, atol=1e-9)


def test_gaussian_log_prob_finite_on_the_edge_and_on_padding():
    _, _, dist = gaussian()
    for actions in (HIGH.expand(4, 5, A), LOW.expand(4, 5, A), torch.full((4, 5, A), -10.0)):
        lp = dist.log_prob(actions)
        assert torch.isfinite(lp).all()
    # Float32, the training dtype: the clamp must survive float32 rounding too.
    head32, h32 = SquashedGaussianHead(H, A), torch.randn(2, H)
    d32 = head32(h32, SCALE.float(), BIAS.float())
    assert torch.isfinite(d32.log_prob(HIGH.float().expand(2, A))).all()
    # bf16 (an autocast's head output) is scored in fp32.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        d16 = head32(h32, SCALE.float(), BIAS.float())
    assert d16.loc.dtype == torch.float32
    assert torch.isfinite(d16.log_prob(HIGH.float().expand(2, A))).all()


def confident_head(hidden=64):
    """A head whose means sit at |loc| 1-4 with log-std near its floor (std ~ e^-5): a policy
    that has learned its actions, where bf16 rounding of loc is the size of the std."""
    torch.manual_seed(0)
    head = SquashedGaussianHead(hidden, A)
    with torch.no_grad():
        head.mu.weight.mul_(0.3)
        head.mu.bias.copy_(torch.tensor([2.5, -2.5, 3.0]))
        head.log_std.weight.mul_(0.01)
        head.log_std.bias.fill_(-8.0)  # tanh(-8) ~ -1: log-std just above -5
    return head


@pytest.mark.parametrize("how", ["autocast", "bf16_weights"])
def test_gaussian_head_computes_in_fp32_under_bf16(how):
    """Under a bf16 autocast, or with bf16 weights (FSDP's compute dtype), loc, log-std and the
    data's NLL agree with an fp64 computation from the same weights and inputs, as closely as
    fp32 allows: a head whose linears ran in bf16 is off by ~1 nat per action dimension."""
    head = confident_head()
    h = torch.randn(8, 5, 64)
    if how == "bf16_weights":
        head, h = head.to(torch.bfloat16), h.to(torch.bfloat16)
    # The fp64 reference from the very same weights and inputs (bf16 upcasts exactly).
    ref = copy.deepcopy(head).double()(h.double(), SCALE, BIAS)
    loc = ref.loc
    assert 1.0 <= loc.abs().min() and loc.abs().max() <= 4.5
    assert torch.allclose(ref.log_std, torch.full_like(ref.log_std, -5.0), atol=0.01)
    # The data's actions: the reference's draws one std around its mean, stored in fp32.
    z = torch.randn(loc.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    actions = (torch.tanh(loc + z * ref.log_std.exp()) * SCALE + BIAS).float()
    if how == "autocast":
        with torch.autocast("cpu", dtype=torch.bfloat16):
            dist = head(h, SCALE.float(), BIAS.float())
    else:
        dist = head(h, SCALE.float(), BIAS.float())
    assert dist.loc.dtype == torch.float32 and dist.log_std.dtype == torch.float32
    torch.testing.assert_close(dist.loc.double(), loc, rtol=0, atol=1e-5)
    torch.testing.assert_close(dist.log_std.double(), ref.log_std, rtol=0, atol=1e-5)
    nll, want = -dist.log_prob(actions), -ref.log_prob(actions.double())
    torch.testing.assert_close(nll.double(), want, rtol=0, atol=1e-2)


def test_gaussian_entropy_estimate_matches_torch_distributions():
    _, _, dist = gaussian()
    n = 7
    got = dist.entropy(n, generator=torch.Generator().manual_seed(3))
    # The same draws, scored by torch: -mean log p over the samples.
    noise = torch.randn(
        (n, 4, 5, A), generator=torch.Generator().manual_seed(3), dtype=torch.float64
    )
    actions = torch.tanh(dist.loc + noise * dist.log_std.exp()) * SCALE + BIAS
    want = -torch_reference(dist).log_prob(actions).sum(-1).mean(0)
    # torch scores a sample by inverting tanh, which loses digits where tanh saturates; the head
    # scores it from its pre-squash value. A missing Jacobian or scale term is off by O(1).
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_gaussian_mean_sample_and_log_std_bounds():
    head, h, dist = gaussian()
    torch.testing.assert_close(dist.mean_action, torch.tanh(dist.loc) * SCALE + BIAS)
    a = dist.sample(torch.Generator().manual_seed(0))
    assert a.shape == (4, 5, A) and not a.requires_grad
    assert ((a >= LOW) & (a <= HIGH)).all()
    # The log-std head saturates onto the ODT's bounds, never past them.
    with torch.no_grad():
        head.log_std.weight.mul_(1e4)
    log_std = head(h, SCALE, BIAS).log_std
    assert log_std.min() >= LOG_STD_MIN and log_std.max() <= LOG_STD_MAX
    assert log_std.min() < LOG_STD_MIN + 1e-3 and log_std.max() > LOG_STD_MAX - 1e-3


def test_deterministic_head_is_todays_head_under_todays_names():
    torch.manual_seed(0)
    model = DecisionTransformer(
        4, A, H, max_length=3, max_ep_len=10, n_layer=1, n_head=1,
        action_low=LOW.float().numpy(), action_high=HIGH.float().numpy(),
    )  # fmt: skip
    head = make_policy_head("deterministic", H, A)
    assert isinstance(head, DeterministicHead)
    # An old checkpoint's predict_action.* entries load strictly into the new head.
    old = {k.removeprefix("predict_action."): v for k, v in model.state_dict().items()}
    old = {k: v for k, v in old.items() if k in ("weight", "bias")}
    head.load_state_dict(old, strict=True)
    h = torch.randn(2, 3, H)
    # Today's head as it was written: a Linear under the same names, then the squash.
    linear = torch.nn.Linear(H, A)
    linear.load_state_dict(old, strict=True)
    want = model.squash_action(linear(h))
    got = head(h, model.action_scale, model.action_bias)
    torch.testing.assert_close(got.mean_action, want)
    torch.testing.assert_close(got.sample(), want)
    with pytest.raises(TypeError, match="no likelihood"):
        got.log_prob(want)
    unsquashed = make_policy_head("deterministic", H, A, squash=False)
    unsquashed.load_state_dict(old)
    torch.testing.assert_close(unsquashed(h, SCALE, BIAS).mean_action, linear(h))
    # The model's own head is this head: same names, same actions.
    mine = model.predict_action(h, model.action_scale, model.action_bias)
    torch.testing.assert_close(mine.mean_action, want)
    with pytest.raises(ValueError, match="policy must be one of"):
        make_policy_head("gaussian", H, A)


def test_default_target_entropy_is_minus_act_dim_on_the_unit_box():
    assert default_target_entropy(torch.ones(6)) == -6.0
    assert default_target_entropy(torch.full((2,), 0.4)) == pytest.approx(-2 + 2 * np.log(0.4))


def test_odt_loss_masks_padding():
    _, _, dist = gaussian()
    actions = torch.rand(4, 5, A, dtype=torch.float64) * (HIGH - LOW) * 0.9 + LOW + 0.05
    mask = torch.ones(4, 5)
    mask[:, :2] = 0
    actions[:, :2] = -10.0  # the sampler's padding
    temp = torch.tensor(0.3, dtype=torch.float64)
    g = torch.Generator().manual_seed(5)
    policy, _, m = odt_losses(dist, actions, mask, temp, -3.0, generator=g)
    nll = -dist.log_prob(actions)[:, 2:].mean()
    ent = dist.entropy(1, generator=torch.Generator().manual_seed(5))[:, 2:].mean()
    torch.testing.assert_close(m["nll"], nll)
    torch.testing.assert_close(m["entropy"], ent)
    torch.testing.assert_close(policy, nll - 0.3 * ent)
    assert all(isinstance(v, torch.Tensor) and not v.requires_grad for v in m.values())


@pytest.mark.parametrize("log_std,direction", [(-0.5, -1), (-4.0, +1)])
def test_temperature_moves_toward_the_target_entropy(log_std, direction):
    """Entropy above the target (wide Gaussian) lowers the temperature, below it raises it; the
    temperature's loss never reaches the policy, nor the policy's the temperature."""
    torch.manual_seed(0)
    head = SquashedGaussianHead(H, A)
    with torch.no_grad():
        head.mu.weight.zero_()  # centred, so tanh does not saturate and pile mass on the edges
        head.log_std.weight.zero_()
        # Bias onto the wanted log-std through the head's own tanh stretch.
        unit = 2 * (log_std - LOG_STD_MIN) / (LOG_STD_MAX - LOG_STD_MIN) - 1
        head.log_std.bias.fill_(float(np.arctanh(unit)))
    temperature = LogTemperature(0.1)
    opt = torch.optim.Adam(temperature.parameters(), lr=1e-2)
    h = torch.randn(16, 5, H)
    actions = torch.zeros(16, 5, A)
    mask = torch.ones(16, 5)
    target = -float(A)
    values = [temperature.log_value.item()]
    for _ in range(5):
        policy, dual, m = odt_losses(head(h, SCALE.float(), BIAS.float()), actions, mask,
                                     temperature(), target)  # fmt: skip
        assert (m["entropy"].item() - target) * direction < 0
        opt.zero_grad()
        dual.backward()
        assert all(p.grad is None for p in head.parameters())
        opt.step()
        values.append(temperature.log_value.item())
    steps = np.diff(values)
    assert (steps * direction > 0).all(), values
    opt.zero_grad()
    policy.backward()
    assert temperature.log_value.grad is None  # the policy loss holds the temperature fixed
    assert head.log_std.bias.grad is not None


# ---------------------------------------------------------------- replay buffer


def paths_with_returns(returns, lengths, S=3, A_=2, seed=0):
    rng = np.random.default_rng(seed)
    return [
        dict(
            observations=rng.normal(size=(n, S)).astype(np.float32),
            actions=rng.uniform(-1, 1, size=(n, A_)).astype(np.float32),
            rewards=np.full(n, r / n, dtype=np.float32),
            terminals=np.arange(n) == n - 1,
        )
        for r, n in zip(returns, lengths)
    ]


def offline(returns=(5.0, 1.0, 4.0, 2.0, 3.0), lengths=(4, 6, 3, 7, 5)):
    return TrajectoryDataset.from_paths(paths_with_returns(returns, lengths))


def test_buffer_starts_with_the_best_offline_trajectories_worst_first():
    ds = offline()
    buf = TrajectoryReplayBuffer.from_dataset(ds, capacity=3)
    np.testing.assert_allclose(buf.returns, [3.0, 4.0, 5.0], rtol=1e-6)
    np.testing.assert_array_equal(buf.lengths, [5, 3, 4])
    # Episode contents travel with their episode: the best one is dataset episode 0.
    np.testing.assert_array_equal(buf.observations[-4:], ds.observations[:4])
    everything = TrajectoryReplayBuffer.from_dataset(ds, capacity=10)
    np.testing.assert_allclose(everything.returns, [1.0, 2.0, 3.0, 4.0, 5.0], rtol=1e-6)


def test_buffer_fifo_drops_the_oldest():
    buf = TrajectoryReplayBuffer.from_dataset(offline(), capacity=3)
    buf.add(paths_with_returns([10.0], [2], seed=1))
    np.testing.assert_allclose(buf.returns, [4.0, 5.0, 10.0], rtol=1e-6)
    buf.add(paths_with_returns([11.0, 12.0], [3, 1], seed=2))
    np.testing.assert_allclose(buf.returns, [10.0, 11.0, 12.0], rtol=1e-6)
    # More new episodes than room: only the most recent ones stay.
    new = paths_with_returns([20.0, 21.0, 22.0, 23.0], [2, 5, 1, 4], seed=3)
    buf.add(new)
    np.testing.assert_allclose(buf.returns, [21.0, 22.0, 23.0], rtol=1e-6)
    np.testing.assert_array_equal(buf.lengths, [5, 1, 4])
    np.testing.assert_array_equal(buf.observations[:5], new[1]["observations"])
    assert buf.num_added == 7 and buf.num_steps == 10


def play(env_name, n_episodes, max_steps, seed):
    """Episodes of random actions in the real env, in the dataset files' format."""
    env = make_env(env_name)
    rng = np.random.default_rng(seed)
    episodes = []
    for i in range(n_episodes):
        obs, _ = env.reset(seed=seed + i)
        o, a, r, d = [], [], [], []
        for _ in range(max_steps):
            act = rng.uniform(env.action_space.low, env.action_space.high).astype(np.float32)
            nxt, rew, term, trunc, _ = env.step(act)
            o.append(obs), a.append(act), r.append(rew), d.append(term)
            obs = nxt
            if term or trunc:
                break
        episodes.append(
            dict(
                observations=np.array(o),
                actions=np.array(a),
                rewards=np.array(r, dtype=np.float32),
                terminals=np.array(d),
            )
        )
    env.close()
    return episodes


def test_hindsight_relabelling_uses_the_returns_achieved():
    spec = get_spec("hopper")
    played = play("hopper", 3, 40, seed=7)
    ds = TrajectoryDataset.from_paths(play("hopper", 4, 30, seed=100))
    buf = TrajectoryReplayBuffer.from_dataset(ds, capacity=5)
    buf.add([dict(p) for p in played])
    K = 10
    sampler = buf.sampler(K, spec.max_ep_len, spec.scale)
    first = len(buf) - len(played)
    for i, ep in enumerate(played):
        rewards = ep["rewards"].astype(np.float64)
        n = len(rewards)
        by_hand = np.array([sum(rewards[t:]) for t in range(n)] + [0.0])
        for si in (0, n // 2, n - 1):
            batch = sampler.build(np.array([first + i]), np.array([si]), K)
            rtg, mask = batch[4][0, :, 0].numpy(), batch[6][0].numpy()
            real = int(mask.sum())
            pad = K - real
            # Column j < K is step si + j - pad; the last column is one step further.
            want = by_hand[si : si + real + 1] / spec.scale
            np.testing.assert_allclose(rtg[pad : pad + len(want)], want, rtol=1e-5, atol=1e-7)
            np.testing.assert_allclose(
                batch[0][0, pad:].numpy(),
                (ep["observations"][si : si + real] - ds.state_mean) / ds.state_std,
                rtol=1e-5, atol=1e-5,
            )  # fmt: skip
    # Returns of the relabelled episodes are what the env paid.
    np.testing.assert_allclose(buf.returns[first:], [p["rewards"].sum() for p in played], rtol=1e-5)


def test_sampling_is_proportional_to_length():
    lengths = (1, 2, 5, 12, 30)
    buf = TrajectoryReplayBuffer.from_dataset(offline(returns=(1, 2, 3, 4, 5), lengths=lengths))
    sampler = buf.sampler(4, 1000, 1.0, rng=np.random.default_rng(0))
    ep, si = sampler.draw(40_000)
    counts = np.bincount(ep, minlength=len(lengths))
    expected = 40_000 * np.asarray(buf.lengths) / buf.num_steps
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 18.47, (counts, expected)  # 4 degrees of freedom, p = 0.001
    assert (si < buf.lengths[ep]).all() and (si >= 0).all()


def test_state_dict_round_trip_resumes_the_next_batch(tmp_path):
    ds = offline()
    buf = TrajectoryReplayBuffer.from_dataset(ds, capacity=4)
    buf.add(paths_with_returns([9.0, 8.0], [6, 2], seed=4))
    path = tmp_path / "buffer.pt"
    torch.save({"buffer": buf.state_dict()}, path)
    state = torch.load(path, weights_only=True)["buffer"]
    # The two offline trajectories left are saved by reference: only online steps are arrays.
    assert state["observations"].shape[0] == 6 + 2
    assert state["offline_episodes"].tolist() == [2, 0]  # returns 4 and 5

    resumed = TrajectoryReplayBuffer.from_dataset(ds, capacity=4)  # other content until loaded
    resumed.dataset()  # a view of the old content exists: loading must replace it
    resumed.load_state_dict(state)

    def next_batch(b, seed):
        return b.sampler(5, 1000, 10.0, rng=np.random.default_rng(seed))(32)

    for b1, b2 in zip(next_batch(buf, 11), next_batch(resumed, 11)):
        assert torch.equal(b1, b2)
    more = paths_with_returns([7.0], [3], seed=5)
    buf.add([dict(p) for p in more])
    resumed.add([dict(p) for p in more])
    for b1, b2 in zip(next_batch(buf, 12), next_batch(resumed, 12)):
        assert torch.equal(b1, b2)
    assert resumed.num_added == buf.num_added == 3

    other = TrajectoryReplayBuffer.from_dataset(ds, capacity=5)
    with pytest.raises(ValueError, match="capacity"):
        other.load_state_dict(state)
    # Another dataset of the same shapes and statistics: its episodes are not the saved ones.
    changed = paths_with_returns((5.0, 1.0, 4.5, 2.0, 3.0), (4, 6, 3, 7, 5))
    changed_ds = TrajectoryDataset.from_paths(changed)
    changed_ds.state_mean, changed_ds.state_std = ds.state_mean, ds.state_std
    with pytest.raises(ValueError, match="differ from this buffer's dataset"):
        TrajectoryReplayBuffer.from_dataset(changed_ds, capacity=4).load_state_dict(state)


def test_delayed_mode_buffer_delays_online_rewards_like_the_dataset():
    paths = paths_with_returns((3.0, 1.0), (4, 2))
    ds = TrajectoryDataset.from_paths([dict(p) for p in paths], mode="delayed")
    buf = TrajectoryReplayBuffer.from_dataset(ds, capacity=3, mode="delayed")
    new = paths_with_returns((6.0,), (3,), seed=9)
    buf.add(new)
    np.testing.assert_allclose(buf.rewards[-3:], [0.0, 0.0, 6.0], rtol=1e-6)
    # The return-to-go stays the whole return until the last step, as offline.
    np.testing.assert_allclose(buf.dataset().returns_to_go[-3:], [6.0, 6.0, 6.0], rtol=1e-6)
    assert new[0]["rewards"][0] == pytest.approx(2.0)  # the caller's arrays are untouched
