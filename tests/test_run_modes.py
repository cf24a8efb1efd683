"""Paths the end-to-end tests do not take: --mode noise and delayed, and training straight from a
local Minari dataset. (--compile: tests/test_promises.py and tests/test_regional_compile.py.)"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli import TINY, run_script
from decision_transformer.data.trajectories import TrajectoryDataset
from decision_transformer.envs import make_env
from decision_transformer.evaluation.evaluate_episodes import (
    EvalEpisodes,
    evaluate_batched,
    evaluate_episode_rtg,
)
from decision_transformer.models.decision_transformer import DecisionTransformer
from rollouts import rollout_paths, write_dataset

SCALE = 1000.0


class RtgSpy(DecisionTransformer):
    """Records the return-to-go each step's action was conditioned on (one episode): the rollout
    core calls ``act_step`` while the window fills and ``get_actions`` once it slides."""

    def act_step(self, cache, state, prev_action, return_to_go, t):
        self.seen.append(float(return_to_go.reshape(-1)[-1]))
        return super().act_step(cache, state, prev_action, return_to_go, t)

    def get_actions(self, states, actions, rewards, returns_to_go, timesteps, **kw):
        self.seen.append(float(returns_to_go.reshape(-1)[-1]))
        return super().get_actions(states, actions, rewards, returns_to_go, timesteps, **kw)


def tiny_dt(cls=DecisionTransformer):
    torch.manual_seed(0)
    model = cls(
        348,
        17,
        32,
        max_length=5,
        max_ep_len=1000,
        n_layer=1,
        n_head=1,
        action_low=-0.4,
        action_high=0.4,
    )
    model.seen = []
    return model.eval()


def play(model, mode, seed=3):
    env = make_env("humanoid")
    out = evaluate_episode_rtg(
        env,
        348,
        17,
        model,
        1000,
        SCALE,
        np.zeros(348, np.float32),
        np.ones(348, np.float32),
        "cpu",
        500 / SCALE,
        mode,
        seed=seed,
    )
    env.close()
    return out


def test_delayed_mode_keeps_conditioning_on_the_whole_target():
    normal, delayed = tiny_dt(RtgSpy), tiny_dt(RtgSpy)
    play(normal, "normal")
    ret, length = play(delayed, "delayed")
    assert length > 3 and len(delayed.seen) == length  # one model call per step
    # delayed: rewards only come at the end, so the target is never decremented on the way.
    assert delayed.seen == [pytest.approx(0.5)] * len(delayed.seen)
    # normal: each step's reward is taken off.
    assert normal.seen[0] == pytest.approx(0.5) and normal.seen[-1] < normal.seen[0] - 1e-3


def test_noise_mode_perturbs_the_start_and_batched_agrees():
    model = tiny_dt()
    assert play(model, "noise") != play(model, "normal")
    seeds = [11, 12, 13]
    mean, std = np.zeros(348, np.float32), np.ones(348, np.float32)
    episodes = EvalEpisodes("humanoid", mean, std, 500.0, "noise")
    returns, lengths = evaluate_batched(episodes, model, seeds, 3)
    for s, r, n in zip(seeds, returns, lengths):
        assert (r, n) == pytest.approx(play(model, "noise", seed=s))


def test_delayed_dataset_moves_each_return_onto_its_last_step():
    paths = rollout_paths("humanoid", 3, max_steps=20)
    totals = [p["rewards"].sum(dtype=np.float64) for p in paths]
    ds = TrajectoryDataset.from_paths([dict(p) for p in paths], mode="delayed")
    for e, (s, n) in enumerate(zip(ds.starts, ds.lengths)):
        assert np.all(ds.rewards[s : s + n - 1] == 0)
        assert ds.rewards[s + n - 1] == pytest.approx(totals[e], rel=1e-5)
        assert np.allclose(ds.returns_to_go[s : s + n], totals[e], rtol=1e-5)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_dataset(d, "humanoid", "medium", episodes=4, max_steps=30)
    return d


def test_train_from_a_local_minari_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "store"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the store has it: no download may be tried
    run_script(
        "data/collect_dataset.py",
        "--episodes",
        "3",
        "--out",
        tmp_path / "pkl",
        "--minari_id",
        "test/humanoid/tiny-v0",
        check=True,
    )
    out = tmp_path / "run"
    proc = run_script(
        "experiment.py",
        "--env",
        "humanoid",
        "--dataset",
        "minari:test/humanoid/tiny-v0",
        "--out_dir",
        out,
        *TINY,
        check=True,
    )
    assert "3 trajectories" in proc.stdout
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2]
    assert (
        json.loads((out / "config.json").read_text())["dataset"] == "minari:test/humanoid/tiny-v0"
    )
