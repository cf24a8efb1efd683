"""How good the dataset suite's behaviours are next to a uniformly random policy.

    python benchmarks/bench_suite_behaviours.py [--episodes 10] [--data_dir gym/data]

For Humanoid-v5 and Hopper-v5: the mean (and std) return over ``--episodes`` resets of a uniform
random policy, of the randomised PD controller (a fresh draw per episode, Humanoid only) and of
the trained ARS linear policy without noise (read from ``{data_dir}/policies``, trained there
first if missing, as ``gym/data/make_suite.py`` does). Exits non-zero, naming the behaviour, if
one does not beat random by the margin below: the suite needs behaviours better than random.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "gym"))

from decision_transformer.data import suite  # noqa: E402
from decision_transformer.data.behaviours import RandomisedPD  # noqa: E402
from decision_transformer.envs import make_env  # noqa: E402

MARGIN = 1.5  # a behaviour must return at least this many times the random policy's mean


def returns(env_name: str, make_act: Callable[[int], Callable], episodes: int) -> np.ndarray:
    env = make_env(env_name)
    out = []
    for i in range(episodes):
        act = make_act(i)
        obs, _ = env.reset(seed=10_000 + i)  # resets no dataset uses (they start at seed 0)
        total = 0.0
        while True:
            obs, reward, terminated, truncated, _ = env.step(act(obs))
            total += float(reward)
            if terminated or truncated:
                break
        out.append(total)
    env.close()
    return np.asarray(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--data_dir", default=str(ROOT / "gym" / "data"))
    args = parser.parse_args()

    rows, missed = [], []
    for env_name in ("humanoid", "hopper"):
        env = make_env(env_name)
        space = env.action_space

        def random_act(i: int, space=space) -> Callable:
            rng = np.random.default_rng(i)
            return lambda obs: rng.uniform(space.low, space.high)

        baseline = returns(env_name, random_act, args.episodes)
        rows.append((env_name, "uniform random", baseline))
        if env_name == "humanoid":
            pd = RandomisedPD(env)
            draws = [pd.draw(np.random.default_rng([99, i])) for i in range(args.episodes)]
            got = returns(env_name, draws.__getitem__, args.episodes)
            rows.append((env_name, "randomised PD (one draw per episode)", got))
            if got.mean() < MARGIN * baseline.mean():
                missed.append(f"{env_name} PD")
        env.close()
        policy, meta = suite.ensure_policy(
            args.data_dir, suite.PolicyRecipe(env_name, suite.ARS_CONFIGS[env_name])
        )
        got = returns(env_name, lambda i, policy=policy: policy, args.episodes)
        seconds = float(meta["train_seconds"])
        rows.append((env_name, f"ARS linear, no noise (trained in {seconds:.0f} s)", got))
        if got.mean() < MARGIN * baseline.mean():
            missed.append(f"{env_name} ARS")

    print(f"| env | behaviour | return mean ± std over {args.episodes} resets |")
    print("|---|---|---|")
    for env_name, name, r in rows:
        print(f"| {env_name} | {name} | {r.mean():.0f} ± {r.std():.0f} |")
    if missed:
        print(f"MISSED: not {MARGIN}x the random return: {', '.join(missed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
