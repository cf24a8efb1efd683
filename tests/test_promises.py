"""README promises that earlier tests could not tell apart from a no-op: activation
checkpointing recomputes blocks, --compile compiles each block, the step guard's growth threshold,
the rolling key/value cache over one full-length episode, the return-to-go bookkeeping of the
evaluators, and bf16 runs of the GPT-2 DT and BC."""

from __future__ import annotations

import functools
import json

import gymnasium as gym
import numpy as np
import pytest
import torch
from cli import TINY
from decision_transformer.envs import get_spec, make_env
from decision_transformer.evaluation.evaluate_episodes import (
    EvalEpisodes,
    evaluate_batched,
    evaluate_episode_rtg,
)
from decision_transformer.evaluation.rollout import Rollout, RolloutSpec
from decision_transformer.models.decision_transformer import DecisionTransformer
from decision_transformer.models.decision_transformer_qwen3 import DecisionTransformerQwen3
from decision_transformer.models.factory import transformer_blocks
from decision_transformer.run import experiment, inputs, parallel
from decision_transformer.run.distributed import apply_activation_checkpointing
from decision_transformer.training import trainer as trainer_module
from decision_transformer.training.seq_trainer import masked_action_mse
from rollouts import write_dataset
from torch._dynamo.testing import CompileCounter

pytestmark = pytest.mark.usefixtures("one_thread")

S, A, K = 5, 3, 4


def tiny(backbone: str, n_layer: int = 2, attention: str = "full", max_ep_len: int = 100):
    torch.manual_seed(0)
    common = dict(max_length=K, max_ep_len=max_ep_len, n_layer=n_layer, attention=attention)
    if backbone == "qwen3":
        return DecisionTransformerQwen3(S, A, 16, n_head=2, n_kv_head=1, **common)
    return DecisionTransformer(S, A, 16, n_head=2, **common)


def batch(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    states, rtg = torch.randn(2, K, S, generator=g), torch.randn(2, K, 1, generator=g)
    actions = torch.rand(2, K, A, generator=g) * 2 - 1
    return states, actions, rtg, torch.arange(K).repeat(2, 1), torch.ones(2, K)


def leaf_layers(module) -> list[torch.nn.Module]:
    return [
        m
        for m in module.modules()
        if not list(m.children()) and any(True for _ in m.parameters(recurse=False))
    ]


def count_layer_calls(model) -> list[int]:
    """Calls of the leaf layers with weights inside transformer blocks (Linear, GPT-2's Conv1D,
    norms), counted while autograd records."""
    calls = [0]

    def hook(*_):
        if torch.is_grad_enabled():
            calls[0] += 1

    for block in transformer_blocks(model):
        for m in leaf_layers(block):
            m.register_forward_hook(hook)
    return calls


# --- activation checkpointing -------------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["gpt2", "qwen3"])
def test_activation_checkpointing_recomputes_every_block_in_backward(backbone):
    plain, ckpt = tiny(backbone), tiny(backbone)
    assert apply_activation_checkpointing(ckpt) == 2
    counts = {}
    for name, model in (("plain", plain), ("ckpt", ckpt)):
        calls = count_layer_calls(model)
        states, actions, rtg, ts, mask = batch()
        _, preds, _ = model(states, actions, None, rtg, ts, attention_mask=mask)
        after_forward = calls[0]
        masked_action_mse(preds, actions, mask).backward()
        counts[name] = (after_forward, calls[0] - after_forward)
    # The same forward; in backward, each checkpointed block runs its forward once more.
    assert counts["plain"][0] == counts["ckpt"][0] > 0
    assert counts["plain"][1] == 0
    assert counts["ckpt"][1] == counts["ckpt"][0]


@pytest.fixture(scope="module")
def humanoid_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_dataset(d, "humanoid", "medium", episodes=4, max_steps=30)
    return d


def train_in_process(data_dir, out, *args, backbone="gpt2"):
    argv = ["--env", "humanoid", "--data_dir", str(data_dir), "--out_dir", str(out), *TINY]
    assert experiment.main([*argv, *args], backbone=backbone) == 0
    return torch.load(out / "checkpoint.pt", weights_only=True)


def test_activation_checkpointing_flag_recomputes_in_a_real_run(
    humanoid_data, tmp_path, monkeypatch
):
    """experiment.py --activation_checkpointing: each optimizer step runs every block's forward
    twice (forward, then again in backward), and the run ends where one without it ends."""
    seen = {}
    real = parallel.apply_activation_checkpointing

    def spy(model):
        seen["wrapped"] = real(model)
        seen["calls"] = count_layer_calls(model)
        seen["per_forward"] = sum(len(leaf_layers(b)) for b in transformer_blocks(model))
        return seen["wrapped"]

    monkeypatch.setattr(parallel, "apply_activation_checkpointing", spy)
    flags = ["--n_layer", "2", "--num_eval_episodes", "0"]
    got = train_in_process(humanoid_data, tmp_path / "ac", *flags, "--activation_checkpointing")
    steps = 2 * 5  # TINY: 2 iterations of 5 steps
    assert seen["wrapped"] == 2
    assert seen["calls"][0] == 2 * steps * seen["per_forward"]
    monkeypatch.undo()
    want = train_in_process(humanoid_data, tmp_path / "plain", *flags)
    for k in want["model"]:
        torch.testing.assert_close(got["model"][k], want["model"][k], rtol=1e-5, atol=1e-6)


# --- compile ------------------------------------------------------------------------------------


class CountingBackend(CompileCounter):
    """Counts compiled graphs (frame_count) and how many times compiled code ran (runs)."""

    def __init__(self):
        super().__init__()
        self.runs = 0

    def __call__(self, gm, example_inputs):
        compiled = super().__call__(gm, example_inputs)

        def run(*args):
            self.runs += 1
            return compiled(*args)

        return run


@pytest.fixture
def counting_compile(monkeypatch):
    """torch.compile with a counting backend (nn.Module.compile goes through torch.compile)."""
    torch._dynamo.reset()
    backend = CountingBackend()
    monkeypatch.setattr(torch, "compile", functools.partial(torch.compile, backend=backend))
    yield backend
    torch._dynamo.reset()


def test_compile_flag_compiles_each_block_and_nothing_else(
    humanoid_data, tmp_path, counting_compile
):
    """experiment.py --compile: every training forward of every block runs compiled code, one
    graph serves both layers (regional compilation), and the model around them stays eager."""
    models = []
    real_wrap = parallel.Parallel.wrap

    def keep(*args):
        out = real_wrap(*args)
        models.append(out)
        return out

    parallel.Parallel.wrap = keep
    try:
        flags = ["--n_layer", "2", "--num_eval_episodes", "0", "--dropout", "0"]
        ckpt = train_in_process(humanoid_data, tmp_path / "c", *flags, "--compile")
    finally:
        parallel.Parallel.wrap = real_wrap
    (model,) = models
    blocks = transformer_blocks(model)
    assert len(blocks) == 2 and all(b._compiled_call_impl is not None for b in blocks)
    assert model._compiled_call_impl is None
    assert counting_compile.frame_count == 1
    assert counting_compile.runs == 2 * 2 * 5  # layers x iterations x steps
    # The checkpoint loads into an eager model: no compile wrapper in its names.
    assert not any("_orig_mod" in k for k in ckpt["model"])
    assert ckpt["model"].keys() == parallel.unwrap(model).state_dict().keys()


def test_compile_regions_compiles_bc_whole(counting_compile):
    from decision_transformer.models.mlp_bc import MLPBCModel

    model = MLPBCModel(S, A, 16, n_layer=2, max_length=K)
    parallel.compile_regions(model)
    states = torch.randn(3, K, S)
    model(states, None, None)
    model(states, None, None)
    assert counting_compile.frame_count == 1 and counting_compile.runs == 2


# --- the step guard -----------------------------------------------------------------------------


def test_weight_growth_threshold_is_exactly_the_documented_factor():
    limit = trainer_module.MAX_WEIGHT_NORM_GROWTH
    assert limit == 4.0  # the README's and the trainer's stated factor
    assert not trainer_module.weights_blown_up(10.0 * limit * 0.999, 10.0)
    assert trainer_module.weights_blown_up(10.0 * limit * 1.001, 10.0)
    assert not trainer_module.weights_blown_up(1e-3, 10.0)  # shrinking is fine
    assert not trainer_module.weights_blown_up(1e6, None)  # nothing to compare the first with
    assert trainer_module.weights_blown_up(float("nan"), None)
    assert trainer_module.weights_blown_up(float("inf"), 1.0)


@pytest.mark.parametrize("factor,stops", [(3.9, False), (4.1, True)])
def test_step_guard_stops_a_step_just_past_the_threshold(factor, stops):
    """Through the real Trainer: an optimizer step that scales the weights by ``factor``."""
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    gen = torch.Generator().manual_seed(1)

    def get_batch(n):
        x = torch.randn(n, 4, generator=gen)
        return x, x[:, :2]

    class Tiny(trainer_module.Trainer):
        def train_step(self):
            x, y = self.get_batch()
            self.optimizer.zero_grad(set_to_none=True)
            loss = torch.mean((self.model(x) - y) ** 2)
            loss.backward()
            return self.optimize_step(loss.detach().float())

    options = trainer_module.TrainerOptions(progress=False)
    tr = Tiny(model, opt, functools.partial(get_batch, 8), options=options)
    tr.train_iteration(2, iter_num=1)  # lr 0: weights unchanged, the norm is recorded

    def scaled_step(*a, **k):
        with torch.no_grad():
            for p in model.parameters():
                p.mul_(factor)

    opt.step = scaled_step
    if stops:
        with pytest.raises(trainer_module.NonFiniteError, match="blew up the weights"):
            tr.train_iteration(1, iter_num=2)
    else:
        tr.train_iteration(1, iter_num=2)


# --- the rolling key/value cache over one full-length episode ----------------------------------


def sharpen(model):
    """Unit-variance weights: at GPT-2's init (std 0.02) attention is near uniform and its
    output small, so one key too many or too few in a window moves actions by ~1e-7, below any
    tolerance (seen: a ring one slot short passed); here it moves them by ~1e-2."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() > 1:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[-1] ** 0.5)
    return model


@pytest.mark.parametrize("backbone", ["gpt2", "qwen3"])
def test_rolling_cache_over_a_full_1000_step_episode(backbone):
    """A cached window-mode rollout of 1000 steps (3000 tokens: the ring of 3K+2 slots wraps
    ~200 times, the rotary table grows past its first size) gives, at every step, the action of
    one forward pass over the whole episode under the banded mask."""
    T = 1000
    model = sharpen(tiny(backbone, attention="window", max_ep_len=T).eval())
    rng = np.random.default_rng(0)
    obs = rng.normal(size=(T + 1, 1, S)).astype(np.float32)
    rewards = rng.normal(size=(T, 1))
    ro = Rollout(model, 1, S, A, RolloutSpec(T, np.zeros(S), np.ones(S), "cpu", 2.0, 10.0))
    assert ro.cache is not None
    ro.start(obs[0])
    acts = []
    for t in range(T):
        acts.append(ro.act()[0].clone())
        ro.record(obs[t + 1], rewards[t])
    cached = torch.stack(acts)
    with torch.no_grad():
        _, whole, _ = model(
            ro.states[:, :T], ro.actions[:, :T], None, ro.rtg[:, :T, None], ro.timesteps[:, :T]
        )
    torch.testing.assert_close(cached, whole[0], atol=1e-4, rtol=0)


# --- return-to-go bookkeeping, step by step -----------------------------------------------------


class RtgSpy(DecisionTransformer):
    """Records the return-to-go of row 0 at the current step of every model call."""

    def act_step(self, cache, state, prev_action, return_to_go, t):
        self.seen.append(float(return_to_go[0, -1]))
        return super().act_step(cache, state, prev_action, return_to_go, t)

    def get_actions(self, states, actions, rewards, returns_to_go, timesteps, **kw):
        self.seen.append(float(returns_to_go[0, -1, 0]))
        return super().get_actions(states, actions, rewards, returns_to_go, timesteps, **kw)


def spy_model():
    torch.manual_seed(0)
    m = RtgSpy(11, 3, 16, max_length=3, max_ep_len=1000, n_layer=1, n_head=1)
    m.seen = []
    return m.eval()


def expected_rtg(target: float, rewards: list[float], scale: float, mode: str) -> np.ndarray:
    """What the model must be conditioned on at each step, from the env's own rewards."""
    if mode == "delayed":
        return np.full(len(rewards), target / scale)
    before = np.concatenate([[0.0], np.cumsum(rewards)[:-1]])  # rewards received before step t
    return (target - before) / scale


class RewardLog(gym.Wrapper):
    """The env's rewards as the env hands them out (outside the evaluators)."""

    def __init__(self, env):
        super().__init__(env)
        self.rewards: list[float] = []

    def step(self, action):
        out = self.env.step(action)
        self.rewards.append(float(out[1]))
        return out


@pytest.mark.parametrize("mode", ["normal", "delayed", "noise"])
def test_return_to_go_step_by_step_one_episode(mode):
    spec = get_spec("hopper")
    env = RewardLog(make_env("hopper"))
    model = spy_model()
    target = 3600.0
    ret, length = evaluate_episode_rtg(
        env, 11, 3, model, spec.max_ep_len, spec.scale, np.zeros(11), np.ones(11), "cpu",
        target / spec.scale, mode, seed=7,
    )  # fmt: skip
    env.close()
    assert length == len(env.rewards) == len(model.seen) > 5  # past the window of 3
    np.testing.assert_allclose(
        model.seen, expected_rtg(target, env.rewards, spec.scale, mode), rtol=0, atol=1e-5
    )
    assert ret == pytest.approx(sum(env.rewards))


@pytest.mark.parametrize("mode", ["normal", "delayed", "noise"])
def test_return_to_go_step_by_step_batched(mode):
    spec = get_spec("hopper")
    model = spy_model()
    rewards = []
    target = 3600.0
    episodes = EvalEpisodes("hopper", np.zeros(11), np.ones(11), target, mode)
    returns, lengths = evaluate_batched(
        episodes, model, [7, 8, 9], 3, on_step=lambda a, r: rewards.append(r)
    )
    n = int(lengths[0])
    assert len(rewards) == n > 5
    np.testing.assert_allclose(
        model.seen[:n], expected_rtg(target, rewards, spec.scale, mode), rtol=0, atol=1e-5
    )
    # The one-episode evaluator on the same seed: the same conditioning and return.
    env = RewardLog(make_env("hopper"))
    alone = spy_model()
    ret, length = evaluate_episode_rtg(
        env, 11, 3, alone, spec.max_ep_len, spec.scale, np.zeros(11), np.ones(11), "cpu",
        target / spec.scale, mode, seed=7,
    )  # fmt: skip
    env.close()
    assert length == n and ret == pytest.approx(returns[0], rel=1e-6)


def test_noise_mode_perturbs_the_first_state_by_the_seeded_draw():
    """--mode noise: the first state the model sees is the reset state plus N(0, 0.1) drawn from
    the episode seed's generator; 'normal' sees the reset state itself; both normalised by the
    dataset's mean and std."""
    rng = np.random.default_rng(1)
    mean, std = rng.normal(size=11), rng.uniform(0.5, 2.0, size=11)
    firsts = {}

    class First(DecisionTransformer):
        def act_step(self, cache, state, prev_action, return_to_go, t):
            if t == 0:
                self.seen.append(state[0].clone())
            return super().act_step(cache, state, prev_action, return_to_go, t)

    for mode in ("normal", "noise"):
        torch.manual_seed(0)
        m = First(11, 3, 16, max_length=3, max_ep_len=1000, n_layer=1, n_head=1).eval()
        m.seen = []
        env = make_env("hopper")
        evaluate_episode_rtg(env, 11, 3, m, 5, 1000.0, mean, std, "cpu", 3.6, mode, seed=7)
        env.close()
        firsts[mode] = m.seen[0].numpy()
    env = make_env("hopper")
    reset, _ = env.reset(seed=7)
    env.close()
    np.testing.assert_allclose(firsts["normal"], (reset - mean) / std, atol=1e-5)
    noise = np.random.default_rng(7).normal(0, 0.1, reset.shape)
    np.testing.assert_allclose(firsts["noise"], (reset + noise - mean) / std, atol=1e-5)


# --- bf16 runs ----------------------------------------------------------------------------------


@pytest.mark.parametrize("model_type", ["dt", "bc"])
def test_bf16_run_computes_in_bf16(humanoid_data, tmp_path, monkeypatch, model_type):
    """--dtype bf16 trains and evaluates the GPT-2 DT and BC with their matmuls in bf16 (autocast)
    while the weights stay fp32; the losses differ from an fp32 run's, as bf16 rounding does."""
    dtypes = set()
    real_build = inputs.RunData.build_model

    def build(self, cfg):
        model = real_build(self, cfg)
        for m in model.modules():
            # Plain linears: the action head is a Linear subclass returning a distribution.
            if type(m) is torch.nn.Linear:
                m.register_forward_hook(lambda mod, i, out: dtypes.add(out.dtype))
        return model

    monkeypatch.setattr(inputs.RunData, "build_model", build)
    flags = ["--model_type", model_type, "--max_iters", "1"]
    ck = train_in_process(humanoid_data, tmp_path / "bf16", *flags, "--dtype", "bf16")
    assert ck["config"]["dtype"] == "bf16" and dtypes == {torch.bfloat16}
    assert all(v.dtype == torch.float32 for v in ck["model"].values() if v.is_floating_point())
    row = json.loads((tmp_path / "bf16" / "metrics.jsonl").read_text().splitlines()[-1])
    assert any(k.endswith("_return_mean") for k in row)  # evaluation ran under bf16 too
    dtypes.clear()
    train_in_process(humanoid_data, tmp_path / "fp32", *flags, "--dtype", "fp32")
    assert dtypes == {torch.float32}
    fp32 = json.loads((tmp_path / "fp32" / "metrics.jsonl").read_text().splitlines()[-1])
    assert row["training/train_loss_mean"] != fp32["training/train_loss_mean"]


# --- one host sync per step, through the batch source real runs use ----------------------------


@pytest.fixture
def one_process_group(tmp_path):
    """A real gloo process group of one, so the trainer's all-reduce is a real collective."""
    import torch.distributed as dist

    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("kind", ["qwen3", "bc"])
def test_one_host_sync_per_step_with_rank_batches_and_accumulation(kind, one_process_group):
    """RankBatches (what experiment.py trains from) with --grad_accum_steps 2 and the trainer's
    all-reduce of the step's numbers: still one host sync per optimizer step."""
    from decision_transformer.data.sampler import BatchSampler
    from decision_transformer.data.trajectories import TrajectoryDataset
    from decision_transformer.models.mlp_bc import MLPBCModel
    from decision_transformer.run.batches import RankBatches
    from decision_transformer.run.distributed import DistContext
    from decision_transformer.training.act_trainer import ActTrainer
    from decision_transformer.training.seq_trainer import SequenceTrainer
    from decision_transformer.training.trainer import TrainerOptions
    from host_syncs import HostSyncCounter
    from rollouts import rollout_paths

    data = TrajectoryDataset.from_paths(rollout_paths("hopper", episodes=4, max_steps=40))
    torch.manual_seed(0)
    if kind == "qwen3":
        model = DecisionTransformerQwen3(11, 3, 32, max_length=10, max_ep_len=1000, n_layer=2,
                                         n_head=4, n_kv_head=2)  # fmt: skip
    else:
        model = MLPBCModel(11, 3, 32, n_layer=2, max_length=10)
    # Rank 0 of 2: its slices of each step's global draw, and a real all-reduce in the step.
    ctx = DistContext(rank=0, world_size=2)
    sampler = BatchSampler(data, 10, 1000, 100.0, device="cuda", rng=np.random.default_rng(0))
    batches = RankBatches(sampler, 0, ctx, 4, accum=2, per_token=kind != "bc")
    reduced = []
    real_reduce = ctx.all_reduce_sum
    object.__setattr__(ctx, "all_reduce_sum", lambda t: reduced.append(1) or real_reduce(t))
    cls = ActTrainer if kind == "bc" else SequenceTrainer
    trainer = cls(
        model, torch.optim.AdamW(model.parameters(), lr=1e-4), batches,
        loss_fn=lambda s_hat, a_hat, r_hat, s, a, r: torch.mean((a_hat - a) ** 2),
        options=TrainerOptions(progress=False, grad_accum_steps=2), ctx=ctx,
    )  # fmt: skip
    step = trainer.optimizer.step
    with HostSyncCounter(fake_cuda=True) as counter:

        def paused_step(*a, **k):
            with counter.paused():
                return step(*a, **k)

        trainer.optimizer.step = paused_step
        per_step = []
        for _ in range(4):
            before = len(counter.events)
            trainer.train_step()
            per_step.append(counter.events[before:])
    assert all(events == ["tolist"] for events in per_step), per_step
    assert batches.calls == 8 and len(reduced) == 4  # 2 micro-batches and 1 all-reduce a step


# --- BC resumes exactly --------------------------------------------------------------------------


def test_bc_killed_mid_iteration_resumes_exactly(humanoid_data, tmp_path):
    """BC (--model_type bc) killed by SIGKILL inside iteration 2, then --resume: the same
    metrics rows and bit-identical weights as a run never interrupted."""
    from pathlib import Path

    from cli import run_script

    flags = ["--model_type", "bc", "--max_iters", "3", "--seed", "3", "--lr_decay", "cosine"]
    want = train_in_process(humanoid_data, tmp_path / "full", *flags)
    out = tmp_path / "cut"
    argv = ["--env", "humanoid", "--data_dir", str(humanoid_data), "--out_dir", str(out), *TINY]
    kill_at = Path(__file__).resolve().parent / "kill_at.py"
    killed = run_script(str(kill_at), "step", 8, "gpt2", *argv, *flags)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert torch.load(out / "checkpoint.pt", weights_only=True)["iteration"] == 1
    got = train_in_process(humanoid_data, out, *flags, "--resume")
    rows = [
        [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
        for d in (out, tmp_path / "full")
    ]
    assert [r["iteration"] for r in rows[0]] == [1, 2, 3]
    for g, w in zip(*rows):
        assert {k: v for k, v in g.items() if not k.startswith("time/")} == {
            k: v for k, v in w.items() if not k.startswith("time/")
        }
    assert got["model"].keys() == want["model"].keys()
    assert all(torch.equal(got["model"][k], want["model"][k]) for k in want["model"])


def test_accumulation_in_one_process_equals_the_whole_batch():
    """--grad_accum_steps 2 x --batch_size 4 takes the very steps of one batch of 8 (the same
    windows, each micro-batch's masked mean weighted by its real action tokens), in one process
    and fast; tests/test_distributed.py checks the same across ranks."""
    from decision_transformer.data.sampler import BatchSampler
    from decision_transformer.data.trajectories import TrajectoryDataset
    from decision_transformer.run.batches import RankBatches
    from decision_transformer.run.distributed import DistContext
    from decision_transformer.training.seq_trainer import SequenceTrainer
    from decision_transformer.training.trainer import TrainerOptions
    from rollouts import rollout_paths

    # Short episodes: windows are padded, so the token weighting matters.
    data = TrajectoryDataset.from_paths(rollout_paths("hopper", episodes=6, max_steps=12))
    finals = []
    for batch_size, accum in ((8, 1), (4, 2)):
        torch.manual_seed(0)
        model = DecisionTransformer(
            11, 3, 16, max_length=10, max_ep_len=1000, n_layer=1, n_head=1,
            resid_pdrop=0.0, attn_pdrop=0.0, embd_pdrop=0.0,
        )  # fmt: skip
        sampler = BatchSampler(data, 10, 1000, 1000.0, rng=np.random.default_rng(0))
        batches = RankBatches(sampler, 0, DistContext(), batch_size, accum, per_token=True)
        trainer = SequenceTrainer(
            model, torch.optim.AdamW(model.parameters(), lr=1e-2), batches,
            options=TrainerOptions(progress=False, grad_accum_steps=accum),
        )  # fmt: skip
        losses = [trainer.train_step() for _ in range(4)]
        finals.append((losses, [p.detach().clone() for p in model.parameters()]))
    (want_losses, want), (got_losses, got) = finals
    np.testing.assert_allclose(got_losses, want_losses, rtol=1e-5)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


# --- checkpoints --------------------------------------------------------------------------------


class Payload:
    """Unpickling this runs a shell command; torch.load(weights_only=True) must refuse it."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("reader", ["evaluate", "resume"])
def test_a_hostile_checkpoint_is_refused_unrun(humanoid_data, tmp_path, capsys, reader):
    from decision_transformer.run import evaluate_checkpoint

    marker = tmp_path / "payload-ran"
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": Payload(marker), "config": {}}, run / "checkpoint.pt")
    if reader == "evaluate":
        code = evaluate_checkpoint.main(["--checkpoint", str(run)])
    else:
        argv = ["--env", "humanoid", "--data_dir", str(humanoid_data), "--out_dir", str(run)]
        code = experiment.main([*argv, *TINY, "--resume"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "is not a readable checkpoint" in err[0], err
    assert not marker.exists()


def test_a_failed_checkpoint_write_leaves_the_old_one_and_no_temp_file(tmp_path):
    from decision_transformer.run.checkpoint import load_checkpoint, save_checkpoint

    path = tmp_path / "checkpoint.pt"
    save_checkpoint(path, {"iteration": 1})
    with pytest.raises(Exception):  # noqa: B017 (torch.save's own error type for a lambda)
        save_checkpoint(path, {"iteration": 2, "bad": lambda: None})
    assert load_checkpoint(path)["iteration"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]
