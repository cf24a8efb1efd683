"""The vectorised sampler against a direct, per-sample re-computation of the original get_batch."""

import numpy as np
import pytest
from decision_transformer.data.sampler import BatchSampler, top_trajectories
from decision_transformer.data.trajectories import TrajectoryDataset


def make_paths(lengths, seed=0, state_dim=3, act_dim=2):
    rng = np.random.default_rng(seed)
    return [
        dict(
            observations=rng.normal(size=(n, state_dim)).astype(np.float32),
            actions=rng.uniform(-1, 1, size=(n, act_dim)).astype(np.float32),
            rewards=rng.normal(1.0, 1.0, size=n).astype(np.float32),
            terminals=(np.arange(n) == n - 1),
        )
        for n in lengths
    ]


def slow_window(path, si, K, max_ep_len, scale, mean, std):
    """The original get_batch body for one sample, written out literally."""
    S, A = path["observations"].shape[1], path["actions"].shape[1]
    s = path["observations"][si : si + K].reshape(1, -1, S)
    a = path["actions"][si : si + K].reshape(1, -1, A)
    r = path["rewards"][si : si + K].reshape(1, -1, 1)
    d = path["terminals"][si : si + K].reshape(1, -1)
    ts = np.arange(si, si + s.shape[1]).reshape(1, -1)
    ts[ts >= max_ep_len] = max_ep_len - 1
    rew = path["rewards"][si:].astype(np.float64)
    rtg = np.array([rew[i:].sum() for i in range(len(rew))])[: s.shape[1] + 1].reshape(1, -1, 1)
    if rtg.shape[1] <= s.shape[1]:
        rtg = np.concatenate([rtg, np.zeros((1, 1, 1))], axis=1)
    tlen = s.shape[1]
    s = np.concatenate([np.zeros((1, K - tlen, S)), s], axis=1)
    s = (s - mean) / std
    a = np.concatenate([np.ones((1, K - tlen, A)) * -10.0, a], axis=1)
    r = np.concatenate([np.zeros((1, K - tlen, 1)), r], axis=1)
    d = np.concatenate([np.ones((1, K - tlen)) * 2, d], axis=1)
    rtg = np.concatenate([np.zeros((1, K - tlen, 1)), rtg], axis=1) / scale
    ts = np.concatenate([np.zeros((1, K - tlen)), ts], axis=1)
    mask = np.concatenate([np.zeros((1, K - tlen)), np.ones((1, tlen))], axis=1)
    return [x[0] for x in (s, a, r, d, rtg, ts, mask)]


@pytest.mark.parametrize("K,max_ep_len", [(5, 1000), (8, 12), (1, 1000), (40, 50)])
def test_windows_match_original(K, max_ep_len):
    lengths = [1, 3, 7, 25, 60]
    paths = make_paths(lengths)
    copies = [{k: v.copy() for k, v in p.items()} for p in paths]
    ds = TrajectoryDataset.from_paths(copies)
    sampler = BatchSampler(ds, K=K, max_ep_len=max_ep_len, scale=7.0)
    # Every start of every episode, so padding, episode ends and timestep clipping all occur.
    ep = np.concatenate([np.full(n, i) for i, n in enumerate(lengths)])
    si = np.concatenate([np.arange(n) for n in lengths])
    got = [x.numpy() for x in sampler.build(ep, si, K)]
    for row, (e, s) in enumerate(zip(ep, si)):
        want = slow_window(paths[e], s, K, max_ep_len, 7.0, ds.state_mean, ds.state_std)
        for name, g, w in zip(("s", "a", "r", "d", "rtg", "ts", "mask"), got, want):
            np.testing.assert_allclose(
                g[row].reshape(w.shape), w, rtol=1e-5, atol=1e-5, err_msg=f"{name} ep={e} si={s}"
            )


def test_state_stats_and_returns_match_original():
    paths = make_paths([4, 9, 2], seed=3)
    all_obs = np.concatenate([p["observations"] for p in paths])
    rets = [p["rewards"].sum() for p in paths]
    ds = TrajectoryDataset.from_paths([dict(p) for p in paths])
    np.testing.assert_allclose(ds.state_mean, all_obs.mean(0), rtol=1e-5)
    np.testing.assert_allclose(ds.state_std, all_obs.std(0) + 1e-6, rtol=1e-5)
    np.testing.assert_allclose(ds.returns, rets, rtol=1e-5)


def original_top(lengths, returns, pct):
    num_timesteps = max(int(pct * sum(lengths)), 1)
    sorted_inds = np.argsort(returns)
    num, timesteps, ind = 1, lengths[sorted_inds[-1]], len(lengths) - 2
    while ind >= 0 and timesteps + lengths[sorted_inds[ind]] <= num_timesteps:
        timesteps += lengths[sorted_inds[ind]]
        num += 1
        ind -= 1
    return sorted_inds[-num:]


@pytest.mark.parametrize("pct", [1.0, 0.5, 0.1, 0.01])
def test_pct_traj_keeps_the_originals_episodes(pct):
    lengths = [10, 50, 5, 30, 80, 20]
    paths = make_paths(lengths, seed=1)
    returns = np.array([p["rewards"].sum() for p in paths])
    ds = TrajectoryDataset.from_paths(paths)
    assert sorted(top_trajectories(ds, pct)) == sorted(original_top(lengths, returns, pct))


def test_episode_choice_is_length_weighted_and_starts_uniform():
    lengths = [10, 30, 60]
    ds = TrajectoryDataset.from_paths(make_paths(lengths))
    sampler = BatchSampler(ds, K=4, max_ep_len=1000, scale=1.0, rng=np.random.default_rng(0))
    ep, si = sampler.draw(60_000)
    freq = np.bincount(ep, minlength=3) / len(ep)
    np.testing.assert_allclose(freq, np.array(lengths) / 100, atol=0.01)
    assert (si < ds.lengths[ep]).all() and (si >= 0).all()
    starts = np.bincount(si[ep == 2], minlength=60)
    assert starts.min() > 0.7 * starts.mean()  # every start step is drawn, none favoured


def test_delayed_mode_moves_return_to_last_step():
    paths = make_paths([6, 3])
    totals = [p["rewards"].sum() for p in paths]
    ds = TrajectoryDataset.from_paths([dict(p) for p in paths], mode="delayed")
    np.testing.assert_allclose(ds.rewards[:5], 0)
    np.testing.assert_allclose(ds.rewards[[5, 8]], totals, rtol=1e-5)
    np.testing.assert_allclose(ds.returns_to_go[:6], totals[0], rtol=1e-5)


def test_batch_shapes_and_device():
    ds = TrajectoryDataset.from_paths(make_paths([30, 40]))
    s, a, r, d, rtg, ts, mask = BatchSampler(ds, K=10, max_ep_len=1000, scale=1.0)(16)
    assert s.shape == (16, 10, 3) and a.shape == (16, 10, 2) and r.shape == (16, 10, 1)
    assert d.shape == (16, 10) and rtg.shape == (16, 11, 1) and ts.shape == (16, 10)
    assert mask.shape == (16, 10) and (mask.sum(1) >= 1).all()


def test_a_subset_is_drawn_as_the_original_draws_its_top_episodes():
    """Given the episodes to draw from (the held-out split's rest, --pct_traj's choice), the
    sampler indexes them by ascending return, as the original's ``sorted_inds``: with the same
    generator it draws the episodes the original would over that subset, in whatever order
    the subset was given."""
    lengths = [10, 50, 5, 30, 80, 20, 40]
    ds = TrajectoryDataset.from_paths(make_paths(lengths, seed=2))
    subset = np.array([6, 0, 3, 5, 2])
    sampler = BatchSampler(ds, K=4, max_ep_len=1000, scale=1.0, rng=np.random.default_rng(7),
                           episodes=subset)  # fmt: skip
    ep, _ = sampler.draw(500)
    sorted_inds = sorted(subset, key=lambda i: (ds.returns[i], i))
    p = np.array([lengths[i] for i in sorted_inds], dtype=np.float64)
    picks = np.random.default_rng(7).choice(len(sorted_inds), size=500, p=p / p.sum())
    assert len(set(ds.returns[subset])) == len(subset)  # the order is the returns', not ties'
    np.testing.assert_array_equal(ep, np.asarray(sorted_inds)[picks])
