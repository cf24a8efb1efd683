"""Window attention, the rolling key/value cache and the shared rollout core, on both backbones."""

import json

import numpy as np
import pytest
import torch
from cli import TINY, run_script
from decision_transformer.data.sampler import BatchSampler
from decision_transformer.data.trajectories import TrajectoryDataset
from decision_transformer.envs import make_env
from decision_transformer.evaluation.evaluate_episodes import (
    EvalEpisodes,
    evaluate_batched,
    evaluate_episode_rtg,
)
from decision_transformer.evaluation.rollout import Rollout, RolloutSpec
from decision_transformer.models.decision_transformer import DecisionTransformer
from decision_transformer.models.decision_transformer_qwen3 import DecisionTransformerQwen3
from decision_transformer.models.kv_cache import window_mask
from decision_transformer.run import plots
from rollouts import rollout_paths, write_dataset
from torch._dynamo.testing import CompileCounter

S, A = 6, 3  # state and action sizes of the synthetic episodes


def make_dt(backbone: str, attention: str, K: int, state_dim=S, act_dim=A, n_layer=3, seed=0):
    torch.manual_seed(seed)
    common = dict(max_length=K, max_ep_len=1000, attention=attention, n_layer=n_layer)
    if backbone == "qwen3":
        model = DecisionTransformerQwen3(state_dim, act_dim, 32, n_head=4, n_kv_head=2, **common)
    else:
        model = DecisionTransformer(state_dim, act_dim, 32, n_head=2, **common)
    return model.eval()


def test_window_mask_is_the_banded_causal_mask():
    K, T = 3, 24
    got = window_mask(None, T, K, torch.device("cpu"))[0, 0]
    for q in range(T):
        for k in range(T):
            assert bool(got[q, k]) == (k <= q and k >= 3 * (q // 3 - K + 1)), (q, k)


@pytest.mark.parametrize("backbone", ["gpt2", "qwen3"])
def test_one_layer_sees_exactly_its_window(backbone):
    """With one layer, the state token of step t depends on steps t-K+1..t and nothing older."""
    K, T = 4, 12
    model = make_dt(backbone, "window", K, n_layer=1)
    g = torch.Generator().manual_seed(1)
    s, a, r = torch.randn(1, T, S, generator=g), torch.randn(1, T, A, generator=g), None
    rtg, ts = torch.randn(1, T, 1, generator=g), torch.arange(T)[None]
    base = model.get_actions(s, a, r, rtg, ts)
    for old, changes in ((T - K - 1, False), (T - K, True)):
        s2 = s.clone()
        s2[0, old] += 1.0
        moved = (model.get_actions(s2, a, r, rtg, ts) - base).abs().max().item()
        assert (moved > 1e-4) == changes, (old, moved)


def drive(model, obs, rewards, use_cache, ends=None):
    """Actions ``[T, N, A]`` of a Rollout fed the given observations ``[T+1, N, S]`` and rewards
    ``[T, N]``; ``ends[i]``: the step after which row i's episode is over (its row keeps going,
    fed zeros, as a finished env's row in the batched evaluator)."""
    T, N = rewards.shape
    spec = RolloutSpec(T, np.zeros(S), np.ones(S), "cpu", 2.0, 10.0, use_cache=use_cache)
    ro = Rollout(model, N, S, A, spec)
    ro.start(obs[0])
    out = []
    for t in range(T):
        out.append(ro.act().clone())
        o, r = obs[t + 1].copy(), rewards[t].copy()
        if ends is not None:
            over = t >= ends
            o[over], r[over] = 0.0, 0.0
        ro.record(o, r)
    return torch.stack(out)


@pytest.mark.parametrize("backbone", ["gpt2", "qwen3"])
def test_cached_window_rollout_equals_the_whole_prefix(backbone):
    """Every action of a cached window-mode rollout equals a forward pass over the whole episode
    prefix under the banded mask, over many windows, with episodes ending at different steps."""
    K, T, N = 4, 30, 3
    model = make_dt(backbone, "window", K)
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(T + 1, N, S)).astype(np.float32)
    rewards = rng.normal(size=(T, N))
    ends = np.array([9, 30, 21])
    cached = drive(model, obs, rewards, True, ends)
    prefix = drive(model, obs, rewards, False, ends)  # get_actions on the whole history each step
    torch.testing.assert_close(cached, prefix, atol=1e-5, rtol=0)
    # Each row is its own episode: a row's actions don't depend on the others in the batch.
    alone = drive(model, obs[:, 1:2].copy(), rewards[:, 1:2].copy(), True)
    torch.testing.assert_close(cached[:, 1:2], alone, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backbone", ["gpt2", "qwen3"])
def test_full_attention_rollout_equals_todays_path(backbone):
    """Full attention: the cache while the window fills, then recomputation; the same actions as
    recomputing the left-padded last K steps at every step (the original)."""
    K, T, N = 5, 14, 2
    model = make_dt(backbone, "full", K)
    rng = np.random.default_rng(1)
    obs = rng.normal(size=(T + 1, N, S)).astype(np.float32)
    rewards = rng.normal(size=(T, N))
    torch.testing.assert_close(
        drive(model, obs, rewards, True), drive(model, obs, rewards, False), atol=1e-5, rtol=0
    )


@pytest.fixture(scope="module")
def small_dataset():
    return TrajectoryDataset.from_paths(rollout_paths("hopper", 6, seed=0, max_steps=60))


@pytest.mark.parametrize("backbone", ["gpt2", "qwen3"])
def test_window_training_at_segment_len_k_is_todays_training(backbone, small_dataset):
    K = 5
    full, window = make_dt(backbone, "full", K, 11, 3), make_dt(backbone, "window", K, 11, 3)
    window.load_state_dict(full.state_dict())
    full.train(), window.train()
    draws = []
    for segment_len in (None, K):
        sampler = BatchSampler(small_dataset, K, 1000, 1000.0, rng=np.random.default_rng(3),
                               segment_len=segment_len)  # fmt: skip
        draws.append(sampler(8))
    for x, y in zip(*draws):
        assert torch.equal(x, y)
    s, a, r, d, rtg, ts, mask = draws[0]
    assert s.shape[:2] == (8, K)
    outs = []
    for model in (full, window):
        torch.manual_seed(7)  # the same dropout draws
        outs.append(model(s, a, r, rtg[:, :-1], ts, attention_mask=mask)[1])
    assert torch.equal(outs[0], outs[1])


def test_longer_segments_under_the_band(small_dataset):
    K, seg = 4, 12
    sampler = BatchSampler(small_dataset, K, 1000, 1000.0, rng=np.random.default_rng(0),
                           segment_len=seg)  # fmt: skip
    s, a, r, d, rtg, ts, mask = sampler(4)
    assert s.shape == (4, seg, 11) and rtg.shape == (4, seg + 1, 1)
    full, window = make_dt("qwen3", "full", K, 11, 3), make_dt("qwen3", "window", K, 11, 3)
    window.load_state_dict(full.state_dict())
    _, a_full, _ = full(s, a, r, rtg[:, :-1], ts, attention_mask=mask)
    _, a_win, _ = window(s, a, r, rtg[:, :-1], ts, attention_mask=mask)
    real = mask.bool()
    # Steps 0..K-1 of a segment see the same tokens either way; later ones see only the band.
    torch.testing.assert_close(a_win[:, :K][real[:, :K]], a_full[:, :K][real[:, :K]])
    assert not torch.allclose(a_win[:, K:][real[:, K:]], a_full[:, K:][real[:, K:]])


@pytest.fixture(scope="module")
def norm():
    rng = np.random.default_rng(0)
    return rng.normal(0, 0.1, 348).astype(np.float32), rng.uniform(0.5, 2, 348).astype(np.float32)


@pytest.mark.parametrize("backbone", ["gpt2", "qwen3"])
def test_window_evaluators_on_humanoid(backbone, norm):
    """On the real Humanoid: the batched evaluator with the cache plays the same episodes as without
    it (whole-prefix recomputation) and as the one-episode evaluator."""
    mean, std = norm
    model = make_dt(backbone, "window", 3, 348, 17)
    model.action_scale.fill_(0.4)
    seeds = [21, 22, 23, 24]
    watched = {True: [], False: []}
    results = {}
    for use_cache in (True, False):
        episodes = EvalEpisodes("humanoid", mean, std, 4000.0, use_cache=use_cache)
        results[use_cache] = evaluate_batched(
            episodes, model, seeds, 3, on_step=lambda a, r, c=use_cache: watched[c].append(a)
        )
    (rets, lens), (rets0, lens0) = results[True], results[False]
    np.testing.assert_array_equal(lens, lens0)
    np.testing.assert_allclose(rets, rets0, rtol=1e-5)
    # The two paths sum in different orders (ring vs whole prefix); on some CPUs (AMD EPYC's
    # kernels) rounding differences of ~1e-6 grow through the simulator to ~3e-5 by the end.
    np.testing.assert_allclose(np.stack(watched[True]), np.stack(watched[False]), atol=1e-4)
    assert len(set(lens)) > 1 and lens.min() > 3 * 3  # different lengths, several windows each
    env = make_env("humanoid")
    for s, r, n in zip(seeds, rets, lens):
        r1, n1 = evaluate_episode_rtg(env, 348, 17, model, 1000, 1000.0, mean, std, "cpu", 4.0,
                                      seed=s)  # fmt: skip
        assert n1 == n and r1 == pytest.approx(r, rel=1e-5)


@pytest.mark.parametrize("attention", ["full", "window"])
def test_compiled_model_compiles_once_in_evaluation(attention, norm):
    """Episodes end at different steps, the last chunk is partial: the batch stays the same, so a
    compiled model is compiled once (window mode: its cached steps never call the compiled
    forward at all)."""
    mean, std = norm
    model = make_dt("gpt2", attention, 3, 348, 17, n_layer=1)
    counter = CompileCounter()
    model.compile(backend=counter)
    rets, lens = evaluate_batched(EvalEpisodes("humanoid", mean, std), model, [1, 2, 3, 4, 5], 3)
    assert len(set(lens)) > 1
    assert counter.frame_count == (1 if attention == "full" else 0)


def test_window_run_records_its_mode_and_evaluates(tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    write_dataset(data, "hopper", "medium", episodes=6, seed=0, max_steps=80)
    out = tmp_path / "run"
    run_script(
        "experiment.py", "--env", "hopper-medium-v2", "--data_dir", data, "--out_dir", out,
        *TINY, "--max_iters", "1", "--attention", "window", "--segment_len", "10",
        "--num_eval_episodes", "1", "--env_targets", "3600", check=True,
    )  # fmt: skip
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["attention"] == "window" and cfg["segment_len"] == 10
    row = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    video = tmp_path / "episode.gif"
    run_script("evaluate.py", "--checkpoint", out / "checkpoint.pt", "--video", video, check=True)
    report = json.loads((out / "eval.json").read_text())
    expected = {k[len("evaluation/") :]: v for k, v in row.items() if k.startswith("evaluation/")}
    assert report["metrics"] == expected
    assert report["video"]["episode_return"] == report["targets"][0]["returns"][0]
    capsys.readouterr()
    assert plots.main([str(out), "--table"]) == 0  # plot.py's entry function
    assert "| run | gpt2 window |" in capsys.readouterr().out  # it says which attention was used


@pytest.mark.parametrize("args", [["--segment_len", "3"], ["--segment_len", "9"]])
def test_bad_segment_len_fails_fast(tmp_path, capsys, args):
    from decision_transformer.run.experiment import main

    attention = ["--attention", "window"] if args[1] == "3" else []
    code = main(["--env", "hopper", "--K", "5", *attention, *args, "--out_dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and "--segment_len" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
