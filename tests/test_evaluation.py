"""The batched evaluator against the original one-episode evaluators on the real Humanoid-v5."""

import numpy as np
import pytest
import torch
from decision_transformer.envs import make_env
from decision_transformer.evaluation.evaluate_episodes import (
    EvalEpisodes,
    evaluate_batched,
    evaluate_episode,
    evaluate_episode_rtg,
)
from decision_transformer.models.decision_transformer import DecisionTransformer
from decision_transformer.models.mlp_bc import MLPBCModel


@pytest.fixture(scope="module")
def norm():
    rng = np.random.default_rng(0)
    return rng.normal(0, 0.1, 348).astype(np.float32), rng.uniform(0.5, 2, 348).astype(np.float32)


@pytest.mark.parametrize("model_type", ["dt", "bc"])
def test_batched_equals_sequential_on_humanoid(model_type, norm):
    torch.manual_seed(0)
    if model_type == "dt":
        model = DecisionTransformer(
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
    else:
        model = MLPBCModel(348, 17, 32, n_layer=1, max_length=5, action_low=-0.4, action_high=0.4)
    model.eval()
    mean, std = norm
    seeds = [11, 12, 13, 14, 15]
    env = make_env("humanoid")
    seq = []
    for s in seeds:
        if model_type == "dt":
            seq.append(
                evaluate_episode_rtg(
                    env, 348, 17, model, 1000, 1000.0, mean, std, "cpu", 3.0, seed=s
                )
            )
        else:
            seq.append(
                evaluate_episode(
                    env, 348, 17, model, 1000, "cpu", None, "normal", mean, std, seed=s
                )
            )
    # 3 envs for 5 seeds: two chunks, the second one partial.
    episodes = EvalEpisodes("humanoid", mean, std, 3000.0, conditioned=model_type == "dt")
    rets, lens = evaluate_batched(episodes, model, seeds, 3)
    np.testing.assert_array_equal(lens, [n for _, n in seq])
    np.testing.assert_allclose(rets, [r for r, _ in seq], rtol=1e-6)
    assert len(set(lens)) > 1 or len(set(np.round(rets, 3))) > 1  # seeds really differ
