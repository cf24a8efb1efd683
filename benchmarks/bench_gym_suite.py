"""Speed and memory of the gym suite's machinery, each measured side by side with its baseline.

    python benchmarks/bench_gym_suite.py            # full sizes (1M-step dataset, ~5 minutes)
    python benchmarks/bench_gym_suite.py --quick    # small sizes, a smoke run

Prints a markdown table: sampler vs the original per-sample get_batch; a training step vs the bare
model step it wraps; peak memory of loading a dataset vs its raw array bytes; batched vs
sequential evaluation on Humanoid-v5.
"""

from __future__ import annotations

import argparse
import functools
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gym"))

from decision_transformer.data.pickle_io import save_paths  # noqa: E402
from decision_transformer.data.sampler import BatchSampler  # noqa: E402
from decision_transformer.data.trajectories import TrajectoryDataset  # noqa: E402
from decision_transformer.envs import make_env  # noqa: E402
from decision_transformer.evaluation.evaluate_episodes import (  # noqa: E402
    EvalEpisodes,
    evaluate_batched,
    evaluate_episode_rtg,
)
from decision_transformer.models.decision_transformer import DecisionTransformer  # noqa: E402
from decision_transformer.training.seq_trainer import SequenceTrainer  # noqa: E402
from decision_transformer.training.trainer import TrainerOptions  # noqa: E402

S, A, EP_LEN = 348, 17, 1000  # Humanoid-v5 shapes


def humanoid_shaped_paths(num_steps: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    lengths = []
    while sum(lengths) < num_steps:  # episode lengths spread like real data, 50..1000
        lengths.append(int(min(rng.integers(50, EP_LEN + 1), num_steps - sum(lengths))))
    return [
        {
            "observations": rng.standard_normal((n, S), dtype=np.float32),
            "actions": rng.uniform(-0.4, 0.4, (n, A)).astype(np.float32),
            "rewards": rng.uniform(0, 6, n).astype(np.float32),
            "terminals": np.arange(n) == n - 1,
        }
        for n in lengths
    ]


def best_time(fn, repeats: int) -> float:
    """Median seconds of ``fn`` over ``repeats`` calls after one warm-up."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


# --- 1. sampler --------------------------------------------------------------------------------


def original_get_batch(trajectories, sorted_inds, p_sample, batch_size, K, mean, std, scale):
    """The original experiment.py get_batch, re-implemented as it ran: a Python loop per sample,
    with the return-to-go recomputed from the sampled step to the episode's end every draw."""

    def discount_cumsum(x, gamma):
        out = np.zeros_like(x)
        out[-1] = x[-1]
        for t in reversed(range(x.shape[0] - 1)):
            out[t] = x[t] + gamma * out[t + 1]
        return out

    batch_inds = np.random.choice(np.arange(len(sorted_inds)), size=batch_size, p=p_sample)
    s, a, r, d, rtg, timesteps, mask = [], [], [], [], [], [], []
    for i in range(batch_size):
        traj = trajectories[int(sorted_inds[batch_inds[i]])]
        si = np.random.randint(0, traj["rewards"].shape[0])
        s.append(traj["observations"][si : si + K].reshape(1, -1, S))
        a.append(traj["actions"][si : si + K].reshape(1, -1, A))
        r.append(traj["rewards"][si : si + K].reshape(1, -1, 1))
        d.append(traj["terminals"][si : si + K].reshape(1, -1))
        timesteps.append(np.arange(si, si + s[-1].shape[1]).reshape(1, -1))
        timesteps[-1][timesteps[-1] >= EP_LEN] = EP_LEN - 1
        rtg.append(
            discount_cumsum(traj["rewards"][si:], 1.0)[: s[-1].shape[1] + 1].reshape(1, -1, 1)
        )
        if rtg[-1].shape[1] <= s[-1].shape[1]:
            rtg[-1] = np.concatenate([rtg[-1], np.zeros((1, 1, 1))], axis=1)
        tlen = s[-1].shape[1]
        s[-1] = (np.concatenate([np.zeros((1, K - tlen, S)), s[-1]], axis=1) - mean) / std
        a[-1] = np.concatenate([np.ones((1, K - tlen, A)) * -10.0, a[-1]], axis=1)
        r[-1] = np.concatenate([np.zeros((1, K - tlen, 1)), r[-1]], axis=1)
        d[-1] = np.concatenate([np.ones((1, K - tlen)) * 2, d[-1]], axis=1)
        rtg[-1] = np.concatenate([np.zeros((1, K - tlen, 1)), rtg[-1]], axis=1) / scale
        timesteps[-1] = np.concatenate([np.zeros((1, K - tlen)), timesteps[-1]], axis=1)
        mask.append(np.concatenate([np.zeros((1, K - tlen)), np.ones((1, tlen))], axis=1))
    f32 = lambda xs: torch.from_numpy(np.concatenate(xs, axis=0)).float()
    return (
        f32(s),
        f32(a),
        f32(r),
        f32(d),
        f32(rtg),
        torch.from_numpy(np.concatenate(timesteps)).long(),
        f32(mask),
    )


def bench_sampler(paths, repeats):
    originals = [{k: v.copy() for k, v in p.items()} for p in paths]
    ds = TrajectoryDataset.from_paths(paths)
    sampler = BatchSampler(ds, K=20, max_ep_len=EP_LEN, scale=1000.0)
    lengths = np.array([len(p["rewards"]) for p in originals])
    order = np.argsort([p["rewards"].sum() for p in originals])
    p_sample = lengths[order] / lengths.sum()
    ours = best_time(lambda: sampler(64), repeats)
    orig = best_time(
        lambda: original_get_batch(
            originals, order, p_sample, 64, 20, ds.state_mean, ds.state_std, 1000.0
        ),
        repeats,
    )
    return ds, ours, orig


# --- 2. training step overhead -----------------------------------------------------------------


def default_model():
    # experiment.py's defaults: embed 128, 3 layers, 1 head, relu, dropout 0.1, K 20.
    return DecisionTransformer(
        S,
        A,
        128,
        max_length=20,
        max_ep_len=EP_LEN,
        n_layer=3,
        n_head=1,
        n_inner=512,
        activation_function="relu",
        resid_pdrop=0.1,
        attn_pdrop=0.1,
        action_low=-0.4,
        action_high=0.4,
    )


def bench_train_step(ds, repeats):
    torch.manual_seed(0)
    model = default_model()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / 10000, 1))
    sampler = BatchSampler(ds, K=20, max_ep_len=EP_LEN, scale=1000.0)
    trainer = SequenceTrainer(
        model,
        opt,
        functools.partial(sampler, 64),
        lambda *x: torch.mean((x[1] - x[4]) ** 2),
        scheduler=sched,
        options=TrainerOptions(progress=False),
    )
    batch = sampler(64)

    def bare():  # the model's own work: forward, loss, backward, optimizer step
        s, a, r, d, rtg, t, m = batch
        _, pred, _ = model(s, a, r, rtg[:, :-1], t, attention_mask=m)
        loss = torch.mean((pred - a) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def full():  # what train_iteration does per step: sample, mask, clip, schedule, log
        trainer.train_step()
        sched.step()

    # Interleave so that both see the same machine state.
    t_bare, t_full = [], []
    for _ in range(repeats):
        t_bare.append(best_time(bare, 3))
        t_full.append(best_time(full, 3))
    return float(np.median(t_full)), float(np.median(t_bare))


# --- 3. memory ---------------------------------------------------------------------------------

MEASURE = """
import sys, resource
sys.path.insert(0, {gym!r})
from decision_transformer.data.loading import load_dataset
def rss():
    for line in open('/proc/self/status'):
        if line.startswith('VmRSS'):
            return int(line.split()[1]) * 1024
base = rss()
ds = load_dataset({data!r}, 'humanoid', 'bench')
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
held = sum(a.nbytes for a in (ds.observations, ds.actions, ds.rewards, ds.dones,
                                  ds.returns_to_go))
print(peak - base, held)
"""


def bench_memory(paths, tmp):
    raw = sum(v.nbytes for p in paths for v in p.values())
    save_paths(paths, Path(tmp) / "humanoid-bench-v2.pkl")
    del paths
    code = MEASURE.format(gym=str(Path(__file__).resolve().parents[1] / "gym"), data=tmp)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    peak, held = map(int, out.stdout.split())
    return peak, raw, held


# --- 4. evaluation -----------------------------------------------------------------------------


def bench_eval(ds, episodes, envs):
    torch.manual_seed(0)
    model = default_model().eval()
    seeds = list(range(episodes))
    env = make_env("humanoid")
    t = time.perf_counter()
    seq_steps = sum(
        evaluate_episode_rtg(
            env, S, A, model, EP_LEN, 1000.0, ds.state_mean, ds.state_std, "cpu", 6.0, seed=s
        )[1]
        for s in seeds
    )
    t_seq = time.perf_counter() - t
    t = time.perf_counter()
    episodes = EvalEpisodes("humanoid", ds.state_mean, ds.state_std, 6000.0, max_ep_len=EP_LEN)
    _, lengths = evaluate_batched(episodes, model, seeds, envs)
    t_bat = time.perf_counter() - t
    assert lengths.sum() == seq_steps
    return seq_steps / t_bat, seq_steps / t_seq


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--quick", action="store_true", help="small sizes for a smoke run")
    p.add_argument("--steps", type=int, default=None, help="dataset steps (default 1M, quick 50k)")
    p.add_argument(
        "--parts",
        nargs="+",
        default=["memory", "sampler", "train", "eval"],
        choices=["memory", "sampler", "train", "eval"],
        help="which measurements to run",
    )
    args = p.parse_args()
    steps = args.steps or (50_000 if args.quick else 1_000_000)
    repeats = 5 if args.quick else 20
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} cores; "
        f"dataset {steps:,} steps of Humanoid shape (obs {S}, act {A})"
    )

    rows = []
    if "memory" in args.parts:
        with tempfile.TemporaryDirectory() as tmp:
            peak, raw, held = bench_memory(humanoid_shaped_paths(steps), tmp)
        rows.append(
            (
                "dataset load peak RSS / raw array bytes",
                f"{peak / 2**20:,.0f} MiB",
                f"{raw / 2**20:,.0f} MiB",
                peak / raw,
                "<= 1.5",
            )
        )

    ds = None
    if {"sampler", "train"} & set(args.parts):
        ds, ours, orig = bench_sampler(humanoid_shaped_paths(steps), repeats)
    if "sampler" in args.parts:
        rows.append(
            (
                "sampler batch (64 x K=20), ours vs original",
                f"{ours * 1e3:.2f} ms",
                f"{orig * 1e3:.2f} ms",
                orig / ours,
                ">= 20 (speed-up)",
            )
        )

    if "train" in args.parts:
        full, bare = bench_train_step(ds, repeats)
        rows.append(
            (
                "training step vs bare model step (default cfg)",
                f"{full * 1e3:.1f} ms",
                f"{bare * 1e3:.1f} ms",
                full / bare - 1,
                "<= 0.05 (overhead)",
            )
        )

    if "eval" in args.parts:
        if ds is None:  # only the state statistics are needed
            ds = TrajectoryDataset.from_paths(humanoid_shaped_paths(10_000))
        bat, seq = bench_eval(ds, 16 if args.quick else 32, 16)
        rows.append(
            (
                "evaluation env-steps/s, 16 envs vs sequential",
                f"{bat:,.0f}",
                f"{seq:,.0f}",
                bat / seq,
                ">= 5 (speed-up)",
            )
        )

    print("\n| measure | ours | baseline | ratio | target |")
    print("|---|---|---|---|---|")
    for name, a, b, ratio, target in rows:
        print(f"| {name} | {a} | {b} | {ratio:.2f} | {target} |")
    missed = [(name, ratio, target) for name, _, _, ratio, target in rows if not met(ratio, target)]
    for name, ratio, target in missed:
        print(f"MISSED: {name}: {ratio:.2f}, target {target}", file=sys.stderr)
    return 1 if missed else 0


def met(ratio: float, target: str) -> bool:
    """``target`` reads '<= 1.5' or '>= 20 (speed-up)': a comparison and a bound."""
    op, bound = target.split()[:2]
    return ratio <= float(bound) if op == "<=" else ratio >= float(bound)


if __name__ == "__main__":
    sys.exit(main())
