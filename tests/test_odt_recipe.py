"""The ODT reference's recipe, one flag each: acting on the last N steps (--eval_context), no
timestep embedding (--no_timestep_embedding); old runs' configs and weights still load.

Rollouts are played in the real Hopper simulator; what the model should have done at each step
is recomputed from the recorded history by a plain forward pass over the steps it may see."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from decision_transformer.envs import make_env
from decision_transformer.evaluation.rollout import Rollout, RolloutSpec
from decision_transformer.models.decision_transformer import DecisionTransformer
from decision_transformer.models.decision_transformer_qwen3 import DecisionTransformerQwen3
from decision_transformer.models.factory import ModelConfig, build_model
from decision_transformer.run.config import ConfigError, RunConfig, build_parser, resolve

K, STEPS = 5, 11


def make(backbone="gpt2", attention="full", **kw):
    torch.manual_seed(0)
    common = dict(max_length=K, max_ep_len=100, n_layer=2, attention=attention, n_head=2)
    if backbone == "qwen3":
        return DecisionTransformerQwen3(11, 3, 32, n_kv_head=1, **common, **kw).eval()
    return DecisionTransformer(11, 3, 32, **common, **kw).eval()


def play_hopper(model, use_cache=True, seed=4):
    """STEPS steps of Hopper acting on ``model``'s actions; the Rollout's history and actions."""
    env = make_env("hopper")
    obs, _ = env.reset(seed=seed)
    spec = RolloutSpec(100, np.zeros(11), np.ones(11), target_return=3.6, use_cache=use_cache)
    r = Rollout(model, 1, 11, 3, spec)
    r.start(obs[None])
    acts = []
    for _ in range(STEPS):
        a = r.act()
        acts.append(a[0].clone())
        obs, reward, terminated, truncated, _ = env.step(a[0].numpy())
        r.record(obs[None], np.array([reward]))
        assert not (terminated or truncated)
    env.close()
    return r, torch.stack(acts)


def acted_on(model, r, t, n):
    """The action a model acting on the last ``n`` steps must take at step ``t``: a forward pass
    over exactly those steps (no padding, no mask), last position."""
    lo = max(0, t + 1 - n)
    with torch.no_grad():
        _, a, _ = model(
            r.states[:, lo : t + 1], r.actions[:, lo : t + 1], None,
            r.rtg[:, lo : t + 1, None], r.timesteps[:, lo : t + 1],
        )  # fmt: skip
    return a[0, -1]


@pytest.mark.parametrize(
    "backbone,attention", [("gpt2", "full"), ("gpt2", "window"), ("qwen3", "full")]
)
def test_eval_context_acts_on_the_last_n_steps(backbone, attention):
    n = 2
    model = make(backbone, attention, eval_context=n)
    for use_cache in (True, False):
        r, acts = play_hopper(model, use_cache)
        for t in range(STEPS):
            torch.testing.assert_close(acts[t], acted_on(model, r, t, n), atol=2e-5, rtol=1e-4)
    # The model itself cuts a longer history it is handed (the original get_action API).
    t = STEPS - 1
    whole = model.get_actions(
        r.states[:, : t + 1], r.actions[:, : t + 1], None, r.rtg[:, : t + 1, None],
        r.timesteps[:, : t + 1],
    )  # fmt: skip
    torch.testing.assert_close(whole[0], acted_on(model, r, t, n), atol=2e-5, rtol=1e-4)
    # Not what the same weights do on all K steps (the default): once t >= n they differ.
    full = make(backbone, attention)
    full.load_state_dict(model.state_dict())
    _, default_acts = play_hopper(full)
    assert (acts[n:] - default_acts[n:]).abs().max() > 1e-3
    torch.testing.assert_close(acts[:n], default_acts[:n], atol=2e-5, rtol=1e-4)


def test_default_eval_context_is_k_and_bounds():
    assert make().eval_context == K
    with pytest.raises(ValueError, match="eval_context"):
        make(eval_context=K + 1)


@pytest.mark.parametrize("backbone", ["gpt2", "qwen3"])
def test_no_timestep_embedding(backbone):
    """No parameter for it; the prediction ignores absolute time (with the embedding it does
    not); the cached rollout still equals recomputation."""
    model = make(backbone, timestep_embedding=False)
    assert model.embed_timestep is None
    assert not any("embed_timestep" in k for k in model.state_dict())
    g = torch.Generator().manual_seed(0)
    s, a, rtg = (
        torch.randn(2, K, 11, generator=g),
        torch.randn(2, K, 3, generator=g),
        torch.ones(2, K, 1),
    )
    t0 = torch.arange(K).expand(2, K)
    with torch.no_grad():
        same = [model(s, a, None, rtg, t0 + shift)[1] for shift in (0, 40)]
    torch.testing.assert_close(same[0], same[1])
    timed = make(backbone)
    with torch.no_grad():
        moved = [timed(s, a, None, rtg, t0 + shift)[1] for shift in (0, 40)]
    assert (moved[0] - moved[1]).abs().max() > 1e-4
    _, cached = play_hopper(model, use_cache=True)
    _, recomputed = play_hopper(model, use_cache=False)
    torch.testing.assert_close(cached, recomputed, atol=2e-5, rtol=1e-4)


def test_old_runs_config_and_weights_still_load():
    """A config.json written before these flags has neither key: its model has the timestep
    embedding and acts on K steps, and its weights (today's names) load strictly."""
    args = build_parser().parse_args(["--env", "hopper", "--K", str(K), "--device", "cpu"])
    cfg = resolve(args, "gpt2").to_dict()
    old = {k: v for k, v in cfg.items() if k not in ("eval_context", "no_timestep_embedding")}
    mc = RunConfig.from_dict(old).model_config()
    assert mc.timestep_embedding and mc.eval_context is None
    # ModelConfig built by code that predates the fields (benchmarks): the same defaults.
    bare = ModelConfig("dt", "gpt2", embed_dim=32, n_layer=1, n_head=1, K=K, dropout=0.1)
    assert bare.timestep_embedding and bare.eval_context is None
    model = build_model(mc, 11, 3, 1000, -np.ones(3), np.ones(3))
    saved = DecisionTransformer(
        11, 3, mc.embed_dim, max_length=K, max_ep_len=1000, n_layer=mc.n_layer,
        n_head=mc.n_head, n_inner=4 * mc.embed_dim,
    ).state_dict()  # fmt: skip
    model.load_state_dict(saved, strict=True)
    assert model.eval_context == K
    # And the new flags reach the model.
    args = build_parser().parse_args(
        ["--K", str(K), "--eval_context", "2", "--no_timestep_embedding", "--device", "cpu"]
    )
    new = build_model(resolve(args, "gpt2").model_config(), 11, 3, 1000, -np.ones(3), np.ones(3))
    assert new.eval_context == 2 and new.embed_timestep is None


@pytest.mark.parametrize(
    "flags,needle",
    [
        (["--eval_context", "0"], "--eval_context must be between 1 and --K 5"),
        (["--eval_context", "6"], "--eval_context must be between 1 and --K 5"),
        (["--model_type", "bc", "--eval_context", "2"], "--eval_context is the DT's"),
        (["--model_type", "bc", "--no_timestep_embedding"], "--no_timestep_embedding is the DT's"),
        (["--optimizer", "lamb", "--fsdp"], "--optimizer lamb runs without --fsdp"),
    ],
)
def test_recipe_flags_refused(flags, needle):
    args = build_parser().parse_args(["--K", str(K), "--device", "cpu", *flags])
    with pytest.raises(ConfigError, match=needle):
        resolve(args, "gpt2")
