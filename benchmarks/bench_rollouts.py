"""Evaluation speed: env-steps per second of the rollout paths, side by side in one run.

    python benchmarks/bench_rollouts.py                 # GPT-2 DT, both envs, K 20 and 100
    python benchmarks/bench_rollouts.py --backbone qwen3 --steps 300

For each env (Humanoid-v5, HalfCheetah-v5) and context length K, with untrained models of the
default size (experiment.py's flags) on one thread:

* ``one-episode``: ``evaluate_episode_rtg``, the original one-episode evaluator, full attention;
* ``batched full``: the batched evaluator, full attention, 16 envs;
* ``window+cache``: the batched evaluator, window attention with the rolling key/value cache, at
  16 and 100 envs.

Every episode runs ``--steps`` env steps: Humanoid is built with ``terminate_when_unhealthy=False``
(an untrained policy falls within a few dozen steps) and HalfCheetah never ends. Only stepping is
timed, not building the envs (Humanoid's cost ~0.1 s each), and in CPU seconds of this process
(``time.process_time``), so that other jobs on a shared machine slow every column less unevenly
than wall-clock time would (on an idle machine with one thread the two agree).

Targets (exit 1 naming any missed): window+cache >= 5x one-episode at 16 envs and >= 10x at 100
envs, >= 3x batched full at 16 envs, and a window-mode step at K=100 costs < 1.5x one at K=20 (16
envs). A second table counts only the time spent choosing actions. MuJoCo's share is the same
for every evaluator, so it caps the ratios: a third table times the vector env's ``step`` alone
inside the window+cache runs and gives the best ratio any evaluator could reach (the slower
evaluator's seconds per step / the env's alone); a missed target names that cap.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gym"))

from decision_transformer.envs import get_spec, make_env, make_vector_env  # noqa: E402
from decision_transformer.evaluation.evaluate_episodes import (  # noqa: E402
    evaluate_episode_rtg,
    run_chunk,
)
from decision_transformer.evaluation.rollout import Rollout, RolloutSpec  # noqa: E402
from decision_transformer.models.factory import build_model  # noqa: E402
from decision_transformer.run.config import build_parser, resolve  # noqa: E402

ENVS = {"humanoid": {"terminate_when_unhealthy": False}, "halfcheetah": {}}


def clocked(fn, spent: list[float]):
    """``fn``, adding the CPU seconds each call takes to ``spent[0]``."""

    def timed(*args):
        start = time.process_time()
        try:
            return fn(*args)
        finally:
            spent[0] += time.process_time() - start

    return timed


class ModelClock:
    """Seconds spent choosing actions (``Rollout.act``: model calls and history slicing), so
    the table can show the model's share apart from MuJoCo's."""

    spent = [0.0]

    @classmethod
    def install(cls) -> None:
        Rollout.act = clocked(Rollout.act, cls.spent)

    @classmethod
    def lap(cls) -> float:
        seconds, cls.spent[0] = cls.spent[0], 0.0
        return seconds


def ratios(x16: float, x100: float, one_episode: float, full16: float) -> dict[str, float]:
    """The three compared ratios of env-step rates (window+cache x16 and x100 against the
    one-episode and the batched full evaluators)."""
    return {
        "x16 / one-episode": x16 / one_episode,
        "x100 / one-episode": x100 / one_episode,
        "x16 / batched full": x16 / full16,
    }


def print_rows(rows: list[dict], rates: str, ratios: str) -> None:
    """One markdown row per (env, K): the ``rates`` (env-steps/s), then the ``ratios``."""
    for row in rows:
        cells = [f"{v:.0f}" for v in row[rates].values()]
        cells += [f"{v:.1f}x" for v in row[ratios].values()]
        print(f"| {row['env']} | {row['K']} | " + " | ".join(cells) + " |")


def make_model(env: str, backbone: str, K: int, attention: str, state_dim, act_dim, low, high):
    argv = ["--env", env, "--K", str(K), "--attention", attention, "--device", "cpu"]
    cfg = resolve(build_parser(qwen=backbone == "qwen3").parse_args(argv), backbone)
    torch.manual_seed(0)
    return build_model(
        cfg.model_config(), state_dim, act_dim, get_spec(env).max_ep_len, low, high
    ).eval()


def one_episode(env_name: str, model, steps: int, mean, std) -> tuple[float, float]:
    """Env-steps per second of the one-episode evaluator over one ``steps``-long episode, all
    told and of the model's time alone."""
    env = make_env(env_name, **ENVS[env_name])
    ModelClock.lap()
    S, A = env.observation_space.shape[0], env.action_space.shape[0]
    spec = get_spec(env_name)
    start = time.process_time()
    _, n = evaluate_episode_rtg(
        env, S, A, model, steps, spec.scale, mean, std, "cpu", spec.env_targets[0] / spec.scale,
        seed=0,
    )  # fmt: skip
    elapsed = time.process_time() - start
    env.close()
    assert n == steps, f"{env_name} ended after {n} of {steps} steps"
    return n / elapsed, n / ModelClock.lap()


def batched(env_name: str, model, n_envs: int, steps: int, mean, std) -> tuple[float, float, float]:
    """Env-steps per second of the batched evaluator, ``n_envs`` episodes of ``steps`` steps:
    all told, of the model's time alone, and of the env's ``step`` alone."""
    envs = make_vector_env(env_name, n_envs, **ENVS[env_name])
    spec = get_spec(env_name)
    env_seconds = [0.0]
    envs.step = clocked(envs.step, env_seconds)  # MuJoCo and gymnasium, nothing of ours
    try:
        ModelClock.lap()
        start = time.process_time()
        target = spec.env_targets[0] / spec.scale
        play = RolloutSpec(steps, mean, std, "cpu", target, spec.scale)
        _, lengths = run_chunk(envs, model, list(range(n_envs)), play)
        elapsed = time.process_time() - start
    finally:
        envs.close()
    assert (lengths == steps).all(), f"{env_name} episodes ended early: {lengths}"
    n = lengths.sum()
    return n / elapsed, n / ModelClock.lap(), n / env_seconds[0]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backbone", default="gpt2", choices=["gpt2", "qwen3"])
    p.add_argument("--steps", type=int, default=1000, help="env steps per episode (<= 1000)")
    p.add_argument("--envs", nargs="+", default=list(ENVS), choices=list(ENVS))
    p.add_argument("--Ks", nargs="+", type=int, default=[20, 100])
    args = p.parse_args()
    torch.set_num_threads(1)
    ModelClock.install()

    rows, missed = [], []
    step_cost: dict[tuple[str, int], float] = {}
    for env_name in args.envs:
        env = make_env(env_name)
        S, A = env.observation_space.shape[0], env.action_space.shape[0]
        low, high = env.action_space.low, env.action_space.high
        env.close()
        mean, std = np.zeros(S, np.float32), np.ones(S, np.float32)
        for K in args.Ks:
            full = make_model(env_name, args.backbone, K, "full", S, A, low, high)
            window = make_model(env_name, args.backbone, K, "window", S, A, low, high)
            both = {
                "one-episode": one_episode(env_name, full, args.steps, mean, std),
                "batched full x16": batched(env_name, full, 16, args.steps, mean, std),
                "window+cache x16": batched(env_name, window, 16, args.steps, mean, std),
                "window+cache x100": batched(env_name, window, 100, args.steps, mean, std),
            }
            r = {k: v[0] for k, v in both.items()}
            m = {k: v[1] for k, v in both.items()}
            step_cost[env_name, K] = 16 / r["window+cache x16"]  # seconds per batched step
            env_alone = {n: both[f"window+cache {n}"][2] for n in ("x16", "x100")}
            row = {
                "env": env_name,
                "K": K,
                "rates": r,
                "ratios": ratios(r["window+cache x16"], r["window+cache x100"],
                                 r["one-episode"], r["batched full x16"]),
                "model_rates": m,
                "model_ratios": ratios(m["window+cache x16"], m["window+cache x100"],
                                       m["one-episode"], m["batched full x16"]),
                "env_alone": env_alone,
                # The best each ratio could be if choosing actions cost nothing.
                "caps": ratios(*env_alone.values(), r["one-episode"], r["batched full x16"]),
            }  # fmt: skip
            rows.append(row)
            for (name, ratio), goal in zip(row["ratios"].items(), (5.0, 10.0, 3.0)):
                if ratio < goal:
                    missed.append(
                        f"{env_name} K={K}: window+cache {name} {ratio:.1f}x < {goal:g}x "
                        f"(the env's own step time caps it at {row['caps'][name]:.1f}x)"
                    )
            print(f"{env_name} K={K}: " + ", ".join(f"{k} {v:.0f}" for k, v in r.items()),
                  flush=True)  # fmt: skip

    print(
        f"\nenv-steps per CPU second, {args.backbone} DT of the default size, 1 thread, "
        f"{args.steps} steps per episode"
    )
    print(
        "| env | K | one-episode | batched full x16 | window+cache x16 | window+cache x100 "
        "| x16 / one-ep | x100 / one-ep | x16 / full x16 |"
    )
    print("|" + "---|" * 9)
    print_rows(rows, "rates", "ratios")
    print("\nthe same, counting only the time spent choosing actions (no MuJoCo)")
    print("|" + "---|" * 9)
    print_rows(rows, "model_rates", "model_ratios")
    print("\nthe env's step alone (MuJoCo + gymnasium) in the window+cache runs, and the ratios it")
    print("allows: the one-episode (or batched full) seconds per step over the env's alone")
    print("| env | K | env alone x16 | env alone x100 | cap x16 / one-ep | cap x100 / one-ep "
          "| cap x16 / full x16 |")  # fmt: skip
    print("|" + "---|" * 7)
    print_rows(rows, "env_alone", "caps")
    if len(args.Ks) > 1:
        lo, hi = min(args.Ks), max(args.Ks)
        for env_name in args.envs:
            growth = step_cost[env_name, hi] / step_cost[env_name, lo]
            print(f"{env_name}: window-mode step cost K={hi} / K={lo}: {growth:.2f}x")
            if growth >= 1.5:
                missed.append(f"{env_name}: window step cost grows {growth:.2f}x from K={lo}")
    if missed:
        print("missed targets:\n  " + "\n  ".join(missed), file=sys.stderr)
        return 1
    print("all targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
