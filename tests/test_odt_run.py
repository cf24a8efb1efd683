"""Online fine-tuning (the Online Decision Transformer) end to end: sampling through the rollout
core, a short online run of each backbone on real Humanoid as a subprocess, kill -9 inside an
online round then --resume, --init_from an offline run's checkpoint, and the bad inputs."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from cli import TINY, assert_one_line_error, run_main, run_script
from decision_transformer.evaluation.rollout import Rollout, RolloutSpec
from decision_transformer.models.decision_transformer import DecisionTransformer
from decision_transformer.models.decision_transformer_qwen3 import DecisionTransformerQwen3
from decision_transformer.run import experiment
from rollouts import write_dataset

KILL_AT = str(Path(__file__).resolve().parent / "kill_at.py")
MODELS = {
    "gpt2": ("experiment.py", []),
    # bf16 autocast and the rolling key/value cache in collection (--attention window)
    "qwen3": (
        "experiment_qwen.py",
        ["--n_head", "2", "--n_kv_head", "1", "--dtype", "bf16", "--attention", "window"],
    ),
}
OFFLINE_ITERS, ROUNDS, UPDATES, EPISODES = 1, 3, 3, 2
STEPS_PER_ITER = 5  # TINY's --num_steps_per_iter


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_dataset(d, "humanoid", "medium", episodes=6, max_steps=40)
    return d


def flags(data_dir, backbone, rounds=ROUNDS):
    return [
        "--env", "humanoid", "--data_dir", str(data_dir), *TINY,
        "--max_iters", str(OFFLINE_ITERS), "--seed", "3",
        "--policy", "stochastic", "--online_rounds", str(rounds),
        "--online_updates", str(UPDATES), "--online_episodes", str(EPISODES),
        "--online_eval_every", "2",
        # 6 offline episodes, the best 5 kept: the rounds' episodes push the oldest out
        "--buffer_size", "5",
        *MODELS[backbone][1],
    ]  # fmt: skip


def rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


class References(dict):
    """One uninterrupted online run per backbone, made when a test first asks for it."""

    def __init__(self, data_dir, factory):
        super().__init__()
        self.data_dir, self.factory = data_dir, factory

    def __missing__(self, backbone):
        script, _ = MODELS[backbone]
        out = self.factory.mktemp(f"ref-{backbone}") / "run"
        proc = run_script(script, *flags(self.data_dir, backbone), "--out_dir", out, check=True)
        self[backbone] = (out, proc.stdout)
        return self[backbone]


@pytest.fixture(scope="module")
def reference(data_dir, tmp_path_factory):
    return References(data_dir, tmp_path_factory)


def same_rows(got, want):
    assert [r["iteration"] for r in got] == [r["iteration"] for r in want]
    for g, w in zip(got, want):
        assert g.keys() == w.keys()
        for key in w:
            if not key.startswith("time/"):
                assert g[key] == w[key], (g["iteration"], key, g[key], w[key])


def same_checkpoints(a_path, b_path):
    a = torch.load(a_path, weights_only=True)
    b = torch.load(b_path, weights_only=True)
    assert a["model"].keys() == b["model"].keys()
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in b["model"])
    assert torch.equal(a["temperature"]["log_value"], b["temperature"]["log_value"])
    for k, v in b["online"]["buffer"].items():
        assert (
            torch.equal(a["online"]["buffer"][k], v)
            if torch.is_tensor(v)
            else a["online"]["buffer"][k] == v
        ), k


@pytest.mark.parametrize("backbone", list(MODELS))
def test_online_run(reference, backbone):
    out, stdout = reference[backbone]
    got = rows(out)
    assert [r["iteration"] for r in got] == list(range(1, OFFLINE_ITERS + ROUNDS + 1))
    online = [r for r in got if "online/round" in r]
    assert [r["online/round"] for r in online] == list(range(1, ROUNDS + 1))
    # Optimizer steps: the offline iteration's, then UPDATES per round.
    assert [r["step"] for r in online] == [
        OFFLINE_ITERS * STEPS_PER_ITER + UPDATES * (i + 1) for i in range(ROUNDS)
    ]
    # Env steps grow by the collected episodes' lengths, EPISODES a round.
    steps = [r["online/env_steps"] for r in online]
    diffs = np.diff([0, *steps])
    assert all(d == EPISODES * r["online/collected_length_mean"] for d, r in zip(diffs, online))
    # Humanoid has no ODT exploration return: the rule's 2 x the largest target (6000).
    assert all(r["online/rtg"] == 12000.0 for r in online)
    # Evaluated on rounds 2 and 3 (every 2nd, and the last), not on round 1.
    assert ["evaluation/target_6000_return_mean" in r for r in online] == [False, True, True]
    # The temperature is learned by the dual step: with the entropy below its target (-act_dim
    # on the unit box is -17 + 17 log 0.4 on Humanoid's [-0.4, 0.4]; this noisy data's
    # likelihood pulls the log-std down) it rises, every iteration.
    target = -17 + 17 * np.log(0.4)
    assert all(r["training/entropy"] < target for r in got), [r["training/entropy"] for r in got]
    temps = [0.1, *(r["training/temperature"] for r in got)]
    assert all(b > a + 1e-6 for a, b in zip(temps, temps[1:])), temps
    assert "online round 3/3" in stdout
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    state = ckpt["online"]
    assert state["round"] == ROUNDS and state["env_steps"] == steps[-1]
    buf = state["buffer"]
    assert buf["num_added"] == ROUNDS * EPISODES
    # 5 trajectories: the 6 collected pushed all the offline ones out, FIFO.
    assert len(buf["offline_episodes"]) == 0 and len(buf["lengths"]) == 5
    # The buffer's newest episodes are the last round's: their returns are what was logged.
    last = online[-1]
    ends = np.cumsum(buf["lengths"].numpy())
    starts = ends - buf["lengths"].numpy()
    newest = [float(buf["rewards"][s:e].double().sum()) for s, e in zip(starts, ends)][-EPISODES:]
    assert np.mean(newest) == pytest.approx(last["online/collected_return_mean"], rel=1e-5)


@pytest.mark.parametrize("backbone", list(MODELS))
def test_kill_9_in_an_online_round_then_resume_equals_uninterrupted(
    data_dir, reference, tmp_path, backbone
):
    script, _ = MODELS[backbone]
    out = tmp_path / "run"
    args = [*flags(data_dir, backbone), "--out_dir", str(out)]
    # Optimizer step 5 + 3 + 2: inside round 2's updates, after its episodes were collected.
    n = OFFLINE_ITERS * STEPS_PER_ITER + UPDATES + 2
    killed = run_script(KILL_AT, "step", n, backbone, *args)
    assert killed.returncode == -9, killed.stderr[-2000:]
    kept = torch.load(out / "checkpoint.pt", weights_only=True)
    assert kept["iteration"] == OFFLINE_ITERS + 1 and kept["online"]["round"] == 1
    run_script(script, *args, "--resume", check=True)
    ref_out, _ = reference[backbone]
    same_rows(rows(out), rows(ref_out))
    same_checkpoints(out / "checkpoint.pt", ref_out / "checkpoint.pt")


@pytest.fixture(scope="module")
def offline_run(data_dir, tmp_path_factory):
    """The reference's offline phase alone (a stochastic GPT-2 DT, one iteration)."""
    offline = tmp_path_factory.mktemp("offline") / "run"
    args = flags(data_dir, "gpt2")
    i = args.index("--online_rounds")
    run_script("experiment.py", *args[:i], *args[i + 2 :], "--out_dir", offline, check=True)
    return offline


def test_init_from_an_offline_run_equals_one_run(data_dir, reference, offline_run, tmp_path):
    """Pretrain offline in one run, fine-tune online from its checkpoint in another: the same
    numbers and weights as the run that did both."""
    args = flags(data_dir, "gpt2")
    offline = offline_run
    online = tmp_path / "online"
    run_script(
        "experiment.py", *args, "--init_from", offline / "checkpoint.pt",
        "--out_dir", online, "--max_iters", "7", check=True,
    )  # fmt: skip
    ref_out, _ = reference["gpt2"]
    want = [r for r in rows(ref_out) if r["iteration"] > OFFLINE_ITERS]
    same_rows(rows(online), want)
    same_checkpoints(online / "checkpoint.pt", ref_out / "checkpoint.pt")
    # Its config records the offline phase it started from.
    assert json.loads((online / "config.json").read_text())["max_iters"] == OFFLINE_ITERS


@pytest.mark.parametrize("backbone", ["gpt2", "qwen3"])
def test_collection_samples_the_same_with_and_without_the_cache(backbone):
    """A collecting rollout samples its stochastic head from the generator (not the mean); the
    rolling cache and recomputation draw the same actions from the same generator."""
    torch.manual_seed(0)
    common = dict(max_length=4, max_ep_len=100, attention="window", n_layer=2)
    cls = DecisionTransformerQwen3 if backbone == "qwen3" else DecisionTransformer
    extra = dict(n_head=2, n_kv_head=1) if backbone == "qwen3" else dict(n_head=2)
    model = cls(6, 3, 32, policy="stochastic", **common, **extra).eval()
    obs = np.random.default_rng(0).normal(size=(13, 2, 6))

    def play(use_cache, generator):
        spec = RolloutSpec(100, np.zeros(6), np.ones(6), target_return=1.0, use_cache=use_cache)
        r = Rollout(model, 2, 6, 3, spec, generator)
        r.start(obs[0])
        acts = []
        for t in range(12):
            acts.append(r.act().clone())
            r.record(obs[t + 1], np.ones(2))
        return torch.stack(acts)

    cached = play(True, torch.Generator().manual_seed(7))
    recomputed = play(False, torch.Generator().manual_seed(7))
    torch.testing.assert_close(cached, recomputed, atol=1e-5, rtol=1e-5)
    mean = play(True, None)
    assert (cached - mean).abs().max() > 1e-3  # sampled, not the mean
    assert (cached.abs() <= 1.0).all()  # squashed into the box


BAD_FLAGS = {
    "online_deterministic": (["--online_rounds", "2"], "add --policy stochastic"),
    "bc_stochastic": (["--model_type", "bc", "--policy", "stochastic"], "drop it for --model_"),
    "init_without_rounds": (
        ["--policy", "stochastic", "--init_from", "x.pt"],
        "--init_from starts an online phase: add --online_rounds",
    ),
    "rounds_negative": (["--online_rounds", "-1"], "--online_rounds must be >= 0"),
    "updates_zero": (
        ["--policy", "stochastic", "--online_rounds", "1", "--online_updates", "0"],
        "--online_updates must be positive",
    ),
    "buffer_zero": (["--buffer_size", "0"], "--buffer_size must be positive"),
    "temperature_zero": (["--init_temperature", "0"], "--init_temperature must be positive"),
    "bad_policy": (["--policy", "gaussian"], "invalid choice: 'gaussian'"),
    "init_from_missing": (
        ["--policy", "stochastic", "--online_rounds", "1", "--init_from", "/nonexistent.pt"],
        "no checkpoint at /nonexistent.pt",
    ),
}


def in_process(*args) -> subprocess.CompletedProcess:
    return run_main(experiment.main, *args)


@pytest.mark.parametrize("case", list(BAD_FLAGS))
def test_bad_online_flags(data_dir, tmp_path, case):
    args, needle = BAD_FLAGS[case]
    proc = in_process(
        "--env", "humanoid", "--data_dir", data_dir, *TINY, "--out_dir", tmp_path / "run", *args
    )
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("case", ["bad_policy", "online_deterministic"])
def test_bad_online_flags_as_a_user_meets_them(data_dir, tmp_path, case):
    """An argparse refusal and a config refusal, from a real process."""
    args, needle = BAD_FLAGS[case]
    proc = run_script(
        "experiment.py", "--env", "humanoid", "--data_dir", data_dir, *TINY,
        "--out_dir", tmp_path / "run", *args,
    )  # fmt: skip
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "run").exists()


def test_init_from_a_checkpoint_that_does_not_fit(data_dir, offline_run, tmp_path):
    """A deterministic checkpoint, and a stochastic one of another size: one line, exit 2."""
    base = ["--env", "humanoid", "--data_dir", str(data_dir), *TINY, "--max_iters", "1"]
    base += ["--num_eval_episodes", "0"]
    det = tmp_path / "det"
    run_script("experiment.py", *base, "--out_dir", det, check=True)
    online = ["--policy", "stochastic", "--online_rounds", "1"]
    proc = in_process(
        *base, *online, "--init_from", det / "checkpoint.pt", "--out_dir", tmp_path / "a"
    )
    assert_one_line_error(proc, "has a deterministic head")
    # The offline run's checkpoint: a stochastic GPT-2 DT with --embed_dim 32.
    proc = in_process(
        *base, *online, "--init_from", offline_run / "checkpoint.pt",
        "--embed_dim", "64", "--out_dir", tmp_path / "b",
    )  # fmt: skip
    assert_one_line_error(proc, "other model flags: use experiment.py with --embed_dim 32")
    proc = in_process(
        *base, *online, "--init_from", offline_run / "checkpoint.pt",
        "--no_timestep_embedding", "--out_dir", tmp_path / "d",
    )  # fmt: skip
    assert_one_line_error(proc, "use experiment.py without --no_timestep_embedding")
    # Its AdamW state cannot continue as LAMB's.
    proc = in_process(
        *base, *online, "--init_from", offline_run / "checkpoint.pt",
        "--optimizer", "lamb", "--out_dir", tmp_path / "c",
    )  # fmt: skip
    assert_one_line_error(proc, "was trained with --optimizer adamw: use it here too")
    assert not any((tmp_path / x).exists() for x in "abcd")


def test_init_from_an_evaluation_only_checkpoint_is_refused_before_the_data(
    data_dir, offline_run, tmp_path, monkeypatch
):
    """A checkpoint with weights and config but no training state (what best.pt holds) cannot
    start an online phase: resolve, which reads --init_from for the offline phase's length,
    reads it as the run does and refuses it in one line, before any data is read."""
    from decision_transformer.run import inputs

    ckpt = torch.load(offline_run / "checkpoint.pt", weights_only=True)
    for key in ("optimizer", "scheduler", "rng"):
        del ckpt[key]
    torch.save(ckpt, tmp_path / "best.pt")

    def never(*args, **kwargs):
        raise AssertionError("the dataset was read")

    monkeypatch.setattr(inputs, "load_dataset", never)
    proc = in_process(
        "--env", "humanoid", "--data_dir", data_dir, *TINY, "--policy", "stochastic",
        "--online_rounds", "1", "--init_from", tmp_path / "best.pt", "--out_dir", tmp_path / "a",
    )  # fmt: skip
    assert_one_line_error(proc, "(no optimizer, scheduler, rng); pass the checkpoint.pt of a")
    assert not (tmp_path / "a").exists()


def test_torchrun_ranks_share_collection_and_one_buffer(data_dir, tmp_path):
    """Two processes: each plays its share of a round's 3 episodes (1 and 2), and every rank's
    buffer takes all of them (rank 0's checkpoint holds the 6 of two rounds)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    launch = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
              "127.0.0.1", "--master_port", str(port), "experiment.py"]  # fmt: skip
    args = flags(data_dir, "gpt2", rounds=2)
    args[args.index("--online_episodes") + 1] = "3"
    args[args.index("--buffer_size") + 1] = "20"
    proc = run_script(*launch, *args, "--out_dir", out, timeout=900)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    got = rows(out)
    online = [r for r in got if "online/round" in r]
    assert [r["online/round"] for r in online] == [1, 2]
    buf = torch.load(out / "checkpoint.pt", weights_only=True)["online"]["buffer"]
    assert buf["num_added"] == 6 and len(buf["lengths"]) == 6
    assert int(buf["lengths"].sum()) == online[-1]["online/env_steps"]
