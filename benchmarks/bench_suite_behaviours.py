"""How good the dataset suite's behaviours are next to a uniformly random policy.

    python benchmarks/bench_suite_behaviours.py [--episodes 10] [--data_dir gym/data]

For Humanoid-v5 and Hopper-v5: the mean (and std) return over ``--episodes`` resets of a uniform
random policy, of the randomised PD controller (a fresh draw per episode, Humanoid only) and of
the trained ARS linear policy without noise (read from ``{data_dir}/policies``, trained there
first if missing, as ``gym/data/make_suite.py`` does). Exits non-zero, naming the behaviour, if
one does not beat random by the margin below: the suite needs behaviours better than random.

    python benchmarks/bench_suite_behaviours.py --noise_bands humanoid-ars-100k hopper-ars-100k

also reads those built ARS datasets and tabulates their episodes' returns by action-noise band
(each episode's level is set by its index, as make_suite.py drew it): where a dataset's best
returns come from. If its top 10% lies above what every band returns on average, reaching the
data's p90 asks a return-conditioned policy to reproduce luck rather than a behaviour.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "gym"))

from decision_transformer.data import suite  # noqa: E402
from decision_transformer.data.behaviours import RandomisedPD, graded_noise_levels  # noqa: E402
from decision_transformer.data.loading import load_dataset  # noqa: E402
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


def ars_recipe(data_dir: str, name: str) -> dict | None:
    """The build recipe make_suite.py wrote beside a built ARS dataset, else None."""
    path = Path(data_dir) / f"{name}-v2.json"
    recipe = json.loads(path.read_text())["recipe"] if path.is_file() else {}
    return recipe if recipe.get("behaviour") == "ars" else None


def noise_bands(data_dir: str, name: str, recipe: dict, bands: int = 4) -> list[str]:
    """Markdown rows: per noise band, episodes, mean / p90 return, share of the data's top 10%."""
    max_noise = recipe["max_noise"]
    env = recipe["env"]
    returns = load_dataset(data_dir, env, name.removeprefix(f"{env}-")).returns
    levels = graded_noise_levels(len(returns), max_noise)  # episode i was rolled out at levels[i]
    top = returns >= np.percentile(returns, 90)
    edges = np.linspace(0.0, max_noise, bands + 1)
    rows = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        band = (levels >= lo) & (levels < hi)
        r = returns[band]
        rows.append(
            f"| {name} | [{lo:.3g}, {hi:.3g}) | {band.sum()} | {r.mean():.0f} | "
            f"{np.percentile(r, 90):.0f} | {top[band].sum() / top.sum():.0%} |"
        )
    rows.append(
        f"| {name} | all | {len(returns)} | {returns.mean():.0f} | "
        f"{np.percentile(returns, 90):.0f} | 100% |"
    )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--episodes", type=int, default=10)
    parser.add_argument("--data_dir", default=str(ROOT / "gym" / "data"))
    parser.add_argument(
        "--noise_bands", nargs="*", default=[], metavar="NAME",
        help="built ARS datasets (e.g. humanoid-ars-100k) to tabulate by noise band",
    )  # fmt: skip
    args = parser.parse_args()
    recipes = {name: ars_recipe(args.data_dir, name) for name in args.noise_bands}
    for name, recipe in recipes.items():
        if recipe is None:
            print(
                f"error: --noise_bands {name}: not a built ARS dataset in {args.data_dir}; "
                "name an ARS one built by: cd gym && python data/make_suite.py --name NAME",
                file=sys.stderr,
            )
            return 2

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
    if args.noise_bands:
        print("\n| dataset | noise std | episodes | return mean | p90 | share of the top 10% |")
        print("|---|---|---:|---:|---:|---:|")
        for name, recipe in recipes.items():
            print("\n".join(noise_bands(args.data_dir, name, recipe)))
    if missed:
        print(f"MISSED: not {MARGIN}x the random return: {', '.join(missed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
