"""Build datasets of the suite from the real simulator (no download), seeded and cached.

    cd gym && python data/make_suite.py --name humanoid-pd-20k        # one dataset
    cd gym && python data/make_suite.py --all --size small medium     # the 20k and 100k ones
    cd gym && python data/make_suite.py --all                         # every size, 1m included
    cd gym && python data/make_suite.py --list                        # names and what is built

Each writes ``data/<name>-v2.pkl`` (train on it with ``--env <env> --dataset <rest of the
name>``, e.g. ``python experiment_qwen.py --env humanoid --dataset pd-20k``) and a description
``data/<name>-v2.json`` (episodes, steps, return percentiles, build time, the recipe and its
hash), then prints a table of what was asked for. A dataset whose file exists with the same
recipe is skipped; ``--force`` rebuilds. ``--minari`` also stores each as a local Minari dataset
``suite/<env>/<rest of the name>-v0`` (train with ``--dataset minari:suite/humanoid/pd-20k-v0``),
rewritten whenever the pickle is. The ARS datasets first train their linear policy (a few
minutes, cached as ``data/policies/<env>-ars-seed0.npz``), as does the mixed family (one of
its behaviours is that policy). Names: ``humanoid-pd``, ``humanoid-ars``, ``hopper-ars``,
``walker2d-ars``, ``halfcheetah-ars``, ``ant-ars`` and ``humanoid-mixed`` followed by ``-20k``,
``-100k``, ``-1m`` or any step count
(``humanoid-pd-300``). How each behaviour is made: ``decision_transformer/data/behaviours.py``;
the recipes: ``decision_transformer/data/suite.py``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

# Work from the repo root and from gym/ alike: the package lives next to this folder.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from decision_transformer.data import suite  # noqa: E402
from decision_transformer.provenance import describe_versions  # noqa: E402
from decision_transformer.run.cli import (  # noqa: E402
    HelpFormatter,
    OneLineParser,
    UserError,
    run_cli,
)


class SuiteRequestError(UserError, ValueError):
    """A bad request, reported as one line before any work starts."""


COLUMNS = (
    "dataset",
    "episodes",
    "steps",
    "median length",
    "return p10",
    "p50",
    "p90",
    "max",
    "build s",
    "policy s",
)


def table_rows(records: list[dict[str, Any]]) -> list[list[str]]:
    rows = []
    for r in records:
        ret = r["returns"]
        policy = r.get("policy")
        rows.append(
            [
                r["name"],
                str(r["episodes"]),
                str(r["steps"]),
                f"{r['length']['median']:.0f}",
                *(f"{ret[k]:.0f}" for k in ("p10", "p50", "p90", "max")),
                f"{r['build_seconds']:.0f}",
                f"{policy['train_seconds']:.0f}" if policy else "-",
            ]
        )
    return rows


def format_table(records: list[dict[str, Any]], markdown: bool = False) -> str:
    rows = table_rows(records)
    if markdown:
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(x) for x in col) for col in zip(COLUMNS, *rows)]
    return "\n".join(
        "  ".join(x.rjust(w) if i else x.ljust(w) for i, (x, w) in enumerate(zip(row, widths)))
        for row in [list(COLUMNS), *rows]
    )


def requested_names(args) -> list[str]:
    if args.size and not args.all:
        raise SuiteRequestError("--size picks sizes for --all: add --all, or name datasets")
    names = list(args.name or [])
    if args.all:
        names += suite.suite_names(tuple(args.size or suite.SIZES))
    if not names:
        raise SuiteRequestError("name a dataset with --name NAME, or pass --all (or --list)")
    for name in names:
        try:
            suite.parse_name(name)
        except suite.SuiteError as e:
            raise SuiteRequestError(str(e)) from None
    return list(dict.fromkeys(names))


def minari_id(name: str) -> str:
    env, _, _ = suite.parse_name(name)
    return f"suite/{env}/{name[len(env) + 1 :]}-v0"


def write_minari_copy(name: str, data_dir: str, rebuilt: bool) -> None:
    """Store the dataset in the local Minari store too (the second format collect_dataset
    writes), unless a copy is there already and the pickle was not just rebuilt."""
    import minari
    from collect_dataset import write_minari  # this script's neighbour in gym/data
    from decision_transformer.envs import ENV_SPECS
    from minari.storage.datasets_root_dir import get_dataset_path

    dataset_id = minari_id(name)
    if get_dataset_path(dataset_id).exists():
        if not rebuilt:
            return
        minari.delete_dataset(dataset_id)
    env, _, _ = suite.parse_name(name)
    write_minari(dataset_id, ENV_SPECS[env].gym_id, suite.load_suite_dataset(data_dir, name))
    print(f"wrote local Minari dataset {dataset_id}", flush=True)


def make(args) -> int:
    if args.list:
        for name in suite.suite_names():
            state = "built" if suite.is_cached(args.out, suite.recipe_for(name)) else "not built"
            print(f"{name:20s} {state}")
        return 0
    if args.seed < 0:
        raise SuiteRequestError(f"--seed must be >= 0, got {args.seed}")
    names = requested_names(args)
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise SuiteRequestError(f"--out {args.out} is a file: name a folder for the datasets")
    records = []
    for name in names:
        recipe = suite.recipe_for(name, args.seed)
        record, built = suite.build(recipe, args.out, force=args.force)
        path = suite.data_file(args.out, name)
        if built:
            print(f"wrote {path} in {record['build_seconds']:.1f} s, content", end=" ")
            print(f"{record['content_hash']}, made with {describe_versions(record['versions'])}")
        else:
            print(f"{path} is up to date (recipe {record['recipe_hash']}), skipping", flush=True)
        if args.minari:
            write_minari_copy(name, args.out, built)
        records.append(record)
    print(format_table(records, markdown=args.markdown))
    return 0


def parse_args(argv: list[str] | None = None):
    parser = OneLineParser(description=__doc__.split("\n")[0], formatter_class=HelpFormatter)
    parser.add_argument("--name", nargs="+", help="suite datasets to build, e.g. humanoid-pd-20k")
    parser.add_argument("--all", action="store_true", help="every family of the suite")
    parser.add_argument(
        "--size",
        nargs="+",
        choices=list(suite.SIZES),
        help="with --all: only these sizes (small ~20k, medium ~100k, large ~1m steps; "
        "default: all three)",
    )
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent), help="data folder")
    parser.add_argument("--seed", type=int, default=0, help="episode i resets with seed + i")
    parser.add_argument("--force", action="store_true", help="rebuild even if up to date")
    parser.add_argument(
        "--minari", action="store_true", help="also store each as a local Minari dataset"
    )
    parser.add_argument("--list", action="store_true", help="list the suite and what is built")
    parser.add_argument("--markdown", action="store_true", help="print the table as markdown")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    return run_cli(make, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
