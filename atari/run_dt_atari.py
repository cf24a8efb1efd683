"""Train the Decision Transformer (or BC with --model_type naive) on DQN-Replay Atari data.

    python run_dt_atari.py --seed 123 --context_length 30 --epochs 5 \
        --model_type reward_conditioned --num_steps 500000 --num_buffers 50 --game Breakout \
        --batch_size 128 --data_dir_prefix ./dqn_replay/ [--backbone qwen3]

The original's flags and defaults, plus the backbone, evaluation and run-directory flags. After
each epoch the model plays ``--eval_episodes`` games at ``--target_return``; the run directory
holds config.json, metrics.jsonl and an atomic checkpoint.pt that ``--resume`` continues exactly.

Under ``torchrun --nproc_per_node N run_dt_atari.py ...`` the model trains in DDP (the gym
half's process group and wrapper): ``--batch_size`` stays the global batch, each rank taking its
slice; evaluation episodes are split across the ranks; rank 0 alone writes the run folder.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import _paths  # noqa: F401
import numpy as np
import torch
import torch.distributed as dist
from atari_env import PAPER_TARGETS, check_game
from create_dataset import add_data_flags, create_dataset
from decision_transformer.errors import ConfigError, DatasetError, UserError, one_line
from decision_transformer.models.qwen3_transformer import Qwen3Config
from decision_transformer.run.checkpoint import (
    changed_flags,
    read_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from decision_transformer.run.cli import OneLineParser, report
from decision_transformer.run.config import resolve_device, str2bool
from decision_transformer.run.distributed import DistContext
from decision_transformer.run.metrics import MetricsLog
from decision_transformer.run.paths import (
    CHECKPOINT_NAME,
    RunDirLock,
    WriteError,
    check_output_dir,
    check_run_start,
    kept_after_failure,
    open_run_folder,
    writing,
)
from mingpt.evaluate_atari import evaluate_episodes
from mingpt.model_atari import AtariDecisionTransformer, AtariDTConfig, compile_blocks
from mingpt.trainer_atari import Trainer, TrainerConfig, WindowDataset
from multigame import (
    FULL_ACTIONS,
    evaluate_games,
    games_logs,
    games_table,
    load_games,
    mean_scores,
    minimal_action_set,
    resolve_games,
    select_game,
)
from results import eval_table, runs_table, summarize

# Flags that may change on --resume (everything else must match the run's config.json).
RESUME_FREE = {
    "resume", "out_dir", "device", "num_workers", "log_to_wandb", "eval_envs", "cache_dir",
    "compile", "seeds", "evaluate_only", "preset", "export",
}  # fmt: skip
DERIVED = {"eval_target", "game_specs"}  # filled in from the data, not flags

# The original's run.sh, per game: one flag (--preset original) sets these as defaults; flags
# given on the command line still win. Its seeds were 123 231 312 (--seeds 123 231 312).
PRESETS = {
    "original": {
        "*": {
            "context_length": 30,
            "epochs": 5,
            "num_steps": 500_000,
            "num_buffers": 50,
            "batch_size": 128,
            "trajectories_per_buffer": 10,
        },
        "Pong": {"context_length": 50, "batch_size": 512},
    }
}


def default_workers() -> int:
    """DataLoader workers: the CPUs this process may run on, one left for the training loop
    (at most 8: past that the conv encoder, not batch assembly, is the bottleneck)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    return max(0, min(8, cpus - 1))


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    a = p.add_argument
    a("--seed", type=int, default=123)
    a("--context_length", type=int, default=30, help="steps per window (3 tokens each)")
    a("--block_size", type=int, default=None, help="tokens per window: 3 x --context_length")
    a("--epochs", type=int, default=5)
    a("--model_type", default="reward_conditioned", choices=["reward_conditioned", "naive"])
    a("--num_steps", type=int, default=500_000, help="transitions to sample")
    a("--num_buffers", type=int, default=50)
    a("--game", default=None, help="the game (default Breakout; several at once: --games)")
    a(
        "--games",
        nargs="+",
        default=None,
        metavar="GAME",
        help="train ONE model over several games (as the gym half's --tasks), e.g. --games "
        "Breakout Qbert: actions in ALE's full 18-action set, each game its own return scale, "
        "target and evaluation; --num_steps per game (multigame.py, atari/README.md)",
    )
    a("--batch_size", type=int, default=128)
    a("--trajectories_per_buffer", type=int, default=10, help="trajectories per buffer visit")
    a("--data_dir_prefix", default="./dqn_replay/")
    a("--no_cache", action="store_true", help="resample instead of reading the cached sample")
    add_data_flags(p)
    a(
        "--preset",
        default=None,
        choices=sorted(PRESETS),
        help="original: the original run.sh's settings for --game as defaults (Pong: "
        "--context_length 50 --batch_size 512; others 30 and 128; 500k steps of 50 buffers, "
        "5 epochs); add --seeds 123 231 312 for its three seeds",
    )
    a(
        "--seeds",
        type=int,
        nargs="+",
        default=None,
        help="train one run per seed, one after another (out_dir ...-s<seed>), then print the "
        "per-seed table and the mean ± std across seeds",
    )
    m = p.add_argument_group("model")
    m.add_argument("--backbone", default="gpt", choices=["gpt", "qwen3"])
    m.add_argument("--n_layer", type=int, default=6)
    m.add_argument("--n_head", type=int, default=8)
    m.add_argument("--embed_dim", type=int, default=128)
    m.add_argument("--dropout", type=float, default=0.1)
    m.add_argument("--learning_rate", type=float, default=6e-4)
    m.add_argument("--weight_decay", type=float, default=0.1)
    q = p.add_argument_group("Qwen3 backbone (as gym/experiment_qwen.py)")
    q.add_argument("--n_kv_head", type=int, default=None, help="default: --n_head")
    q.add_argument("--head_dim", type=int, default=None, help="default: embed_dim // n_head")
    q.add_argument("--mlp_ratio", type=float, default=4.0)
    q.add_argument("--intermediate_size", type=int, default=None)
    q.add_argument("--rope_theta", type=float, default=1e6)
    q.add_argument("--no_qk_norm", action="store_true")
    e = p.add_argument_group("evaluation")
    e.add_argument(
        "--target_return",
        type=float,
        default=None,
        help="return to condition on (default: the paper's: "
        + ", ".join(f"{g} {t}" for g, t in PAPER_TARGETS.items())
        + "; else the best sampled trajectory's)",
    )
    e.add_argument(
        "--game_targets",
        nargs="+",
        default=None,
        metavar="GAME=RETURN",
        help="with --games, the targets in game points of games without a paper target (or to "
        "change one), e.g. MsPacman=3000",
    )
    e.add_argument("--eval_episodes", type=int, default=10)
    e.add_argument("--eval_envs", type=int, default=10, help="environments played at once")
    e.add_argument("--eval_max_steps", type=int, default=None, help="cap on agent steps")
    e.add_argument(
        "--evaluate_only",
        action="store_true",
        help="evaluate the run in --out_dir instead of training (as evaluate_atari.py)",
    )
    r = p.add_argument_group("run")
    r.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N, mps")
    r.add_argument(
        "--dtype",
        default="auto",
        choices=["auto", "fp32", "bf16"],
        help="bf16: torch.autocast, weights and AdamW in fp32. auto: bf16 on CUDA, else fp32",
    )
    r.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile each transformer block on its own (regional: one compile serves "
        "all blocks, so start-up stays short)",
    )
    r.add_argument("--out_dir", default=None, help="default runs/<game>-<model>-<backbone>-s<seed>")
    r.add_argument("--resume", action="store_true", help="continue the run in --out_dir")
    r.add_argument("-w", "--log_to_wandb", action="store_true")
    r.add_argument(
        "--num_workers",
        type=int,
        default=None,
        help=f"DataLoader workers (default: the usable CPUs minus one, at most 8: here "
        f"{default_workers()})",
    )
    r.add_argument("--steps_per_epoch", type=int, default=None, help="cap on steps per epoch")
    r.add_argument("--save_every", type=int, default=500, help="checkpoint every N steps too")
    r.add_argument(
        "--export",
        type=str2bool,
        default=True,
        help="at the end, write the model as a model folder in {out_dir}/model (export_atari.py's "
        "format), its card with the run's own last evaluation of it",
    )
    return p


def resolve(args: argparse.Namespace) -> dict:
    cfg = dict(vars(args))
    if cfg["games"] is not None:
        resolve_games(cfg)
    else:  # a single-game run's config stays what it was before --games existed
        if cfg["game_targets"] is not None:
            raise ConfigError("--game_targets is for --games; for one game use --target_return")
        del cfg["games"], cfg["game_targets"]
        cfg["game"] = cfg["game"] or "Breakout"
    if cfg["block_size"] is not None:
        if cfg["block_size"] % 3 or cfg["block_size"] < 3:
            raise ConfigError(f"--block_size is 3 tokens per step; {cfg['block_size']} is not")
        cfg["context_length"] = cfg["block_size"] // 3
    cfg["block_size"] = 3 * cfg["context_length"]
    for flag in ("context_length", "epochs", "batch_size", "eval_envs", "save_every"):
        if cfg[flag] < 1:
            raise ConfigError(f"--{flag} must be positive, got {cfg[flag]}")
    check_world(cfg)
    if cfg["num_workers"] is None:
        cfg["num_workers"] = default_workers()
    for flag in ("eval_max_steps", "steps_per_epoch"):
        if cfg[flag] is not None and cfg[flag] < 1:
            raise ConfigError(f"--{flag} must be positive, got {cfg[flag]}")
    if cfg["eval_episodes"] < 0 or cfg["num_workers"] < 0 or cfg["seed"] < 0:
        raise ConfigError("--eval_episodes, --num_workers and --seed must not be negative")
    if not 0 < cfg["learning_rate"] < math.inf or not 0 <= cfg["weight_decay"] < math.inf:
        raise ConfigError("--learning_rate must be positive and --weight_decay >= 0, both finite")
    if not 0 <= cfg["dropout"] < 1:
        raise ConfigError(f"--dropout must be in [0, 1), got {cfg['dropout']}")
    if cfg["target_return"] is not None and not math.isfinite(cfg["target_return"]):
        raise ConfigError(f"--target_return must be a number, got {cfg['target_return']}")
    if not 0 < cfg["rope_theta"] < math.inf:
        raise ConfigError(f"--rope_theta must be positive, got {cfg['rope_theta']}")
    cfg["device"] = resolve_device(cfg["device"])  # the gym half's check: one line, exit 2
    if cfg["dtype"] == "auto":
        cfg["dtype"] = "bf16" if cfg["device"].startswith("cuda") else "fp32"
    if (
        cfg["target_return"] is None
        and not cfg.get("games")
        and cfg["model_type"] == "reward_conditioned"
        and cfg["game"] not in PAPER_TARGETS
        and not cfg["evaluate_only"]
    ):
        # The data's returns are sums of clipped rewards, evaluation's are game points: the
        # data cannot give a target in evaluation's units (the original raised here too).
        raise ConfigError(
            f"{cfg['game']} has no paper target; pass --target_return in game points (the "
            f"paper's: {', '.join(f'{g} {t}' for g, t in PAPER_TARGETS.items())})"
        )
    if cfg["seeds"] is not None and len(set(cfg["seeds"])) != len(cfg["seeds"]):
        raise ConfigError("--seeds lists a seed twice")
    # Backbone shapes are checked here, before any data is read.
    if cfg["backbone"] == "qwen3":
        try:
            Qwen3Config(
                embed_dim=cfg["embed_dim"],
                n_layer=cfg["n_layer"],
                n_head=cfg["n_head"],
                n_kv_head=cfg["n_kv_head"] or cfg["n_head"],
                head_dim=cfg["head_dim"],
                intermediate_size=cfg["intermediate_size"],
                mlp_ratio=cfg["mlp_ratio"],
            )
        except ValueError as e:
            raise ConfigError(str(e)) from None
    elif cfg["n_layer"] < 1 or cfg["n_head"] < 1 or cfg["embed_dim"] % cfg["n_head"]:
        raise ConfigError(
            f"--embed_dim ({cfg['embed_dim']}) must be a multiple of --n_head ({cfg['n_head']}), "
            "both positive, and --n_layer positive"
        )
    game = "multi-" + "-".join(cfg["games"]) if cfg.get("games") else cfg["game"]
    if cfg["out_dir"] is None:
        cfg["out_dir"] = f"runs/{game}-{cfg['model_type']}-{cfg['backbone']}-s{cfg['seed']}"
    check_output_dir(cfg["out_dir"], "--out_dir", probe=True)
    if cfg["cache_dir"] and not cfg["no_cache"]:  # where the sampled replay is cached
        check_output_dir(cfg["cache_dir"], "--cache_dir")
    # For gym's MetricsLog (wandb group name).
    cfg["env"], cfg["dataset"] = game, "dqn-replay"
    return cfg


def check_world(cfg: dict) -> None:
    """Under torchrun (before any process group): the global batch must split evenly over the
    ranks, and evaluating a saved run is one process's work."""
    n = DistContext.described().world_size
    if n == 1:
        return
    if cfg["evaluate_only"]:
        raise ConfigError("--evaluate_only runs in one process: start it with python, not "
                          "torchrun")  # fmt: skip
    if cfg["batch_size"] % n:
        raise ConfigError(
            f"--batch_size {cfg['batch_size']} (the global batch) does not split evenly over "
            f"{n} processes: use a multiple of {n}"
        )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = build_parser()
    args = p.parse_args(argv)
    if args.preset is not None:  # the preset's values become defaults; given flags still win
        spec = PRESETS[args.preset]
        p.set_defaults(**{**spec["*"], **spec.get(args.game, {})})
        args = p.parse_args(argv)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.evaluate_only:  # the run's own evaluation settings (evaluate_atari.py: others)
            return evaluate_saved(Path(resolve(args)["out_dir"]), device=args.device)
        if args.seeds:
            return run_seeds(args)
        return run(resolve(args))
    except UserError as e:
        return report(e)


def run_seeds(args: argparse.Namespace) -> int:
    """One run per seed, one after another, then one table of all of them."""
    if args.games:
        resolve(args)  # refuses --seeds with --games in one line
    cfgs = []
    for seed in args.seeds:
        one = argparse.Namespace(**vars(args))
        one.seed, one.seeds = seed, None
        if args.out_dir is not None:
            one.out_dir = str(Path(args.out_dir) / f"s{seed}")
        cfgs.append(resolve(one))  # every seed's flags are checked before the first trains
    world = join_world(cfgs[0])
    for cfg in cfgs:
        if world.is_main:
            print(f"--- seed {cfg['seed']} -> {cfg['out_dir']}")
        code = run(cfg, world)
        if code:
            return code
    world.close()
    if not cfgs[0]["eval_episodes"] or not world.is_main:
        return 0
    table, data = runs_table([Path(c["out_dir"]) for c in cfgs])
    print(f"\n{cfgs[0]['game']} {cfgs[0]['model_type']} ({cfgs[0]['backbone']}), last evaluation:")
    print(table)
    summary = Path(cfgs[0]["out_dir"]).parent / "seeds.json"
    summary.write_text(json.dumps(data, indent=2) + "\n")
    print(f"wrote {summary}")
    return 0


AUTOCAST = {"fp32": None, "bf16": torch.bfloat16}


def build_model(cfg: dict, n_actions: int, max_timestep: int) -> AtariDecisionTransformer:
    model_cfg = AtariDTConfig(
        n_actions=n_actions,
        max_timestep=max_timestep,
        context_length=cfg["context_length"],
        model_type=cfg["model_type"],
        backbone=cfg["backbone"],
        n_layer=cfg["n_layer"],
        n_head=cfg["n_head"],
        n_embd=cfg["embed_dim"],
        dropout=cfg["dropout"],
        n_kv_head=cfg["n_kv_head"],
        head_dim=cfg["head_dim"],
        mlp_ratio=cfg["mlp_ratio"],
        intermediate_size=cfg["intermediate_size"],
        rope_theta=cfg["rope_theta"],
        qk_norm=not cfg["no_qk_norm"],
    )
    try:
        return AtariDecisionTransformer(model_cfg)
    except ValueError as e:  # backbone shape checks (heads, head_dim, ...)
        raise ConfigError(str(e)) from None


def evaluate_model(
    model: AtariDecisionTransformer,
    cfg: dict,
    device: torch.device,
    episodes: int | None = None,
    trace: list | None = None,
    world: DistContext | None = None,
) -> dict:
    """The run's evaluation: ``episodes`` (default --eval_episodes) games at the run's target,
    episode i seeded seed + i (under torchrun, ``world``: split across the ranks and gathered).
    Returns ``results.summarize`` plus the lengths and the time taken."""
    naive = cfg["model_type"] == "naive"
    t0 = time.time()
    rets, lengths = evaluate_episodes(
        model,
        cfg["game"],
        0.0 if naive else cfg["eval_target"],
        episodes or cfg["eval_episodes"],
        cfg["eval_envs"],
        seed=cfg["seed"],
        device=device,
        world=world,
        trace=trace,
        max_steps=cfg["eval_max_steps"],
        autocast_dtype=AUTOCAST[cfg["dtype"]],
    )
    res = summarize(cfg["game"], None if naive else cfg["eval_target"], rets)
    res["lengths"] = lengths
    res["seconds"] = time.time() - t0
    return res


def eval_logs(res: dict) -> dict:
    """An evaluation as metrics.jsonl keys."""
    logs = {
        "eval/return_mean": res["return_mean"],
        "eval/return_std": res["return_std"],
        "eval/returns": res["returns"],
        "eval/lengths": res["lengths"],
        "eval/target": res["target"],
        "time/eval_s": res["seconds"],
    }
    for key in ("human_normalized", "gamer_normalized"):
        if key in res:
            logs[f"eval/{key}"] = res[key]
    return logs


@dataclass(frozen=True)
class EvalRequest:
    """evaluate_atari.py's flags: what to change from the saved evaluation (None: keep the run's
    or the folder's), and where to write JSON and the video of episode 0."""

    episodes: int | None = None
    target: float | None = None
    eval_envs: int | None = None
    max_steps: int | None = None
    json_path: Path | None = None
    video: Path | None = None
    game: str | None = None  # one game of a multi-game model (None: every game)


def evaluate_saved(source: Path, device: str = "auto", req: EvalRequest = EvalRequest()) -> int:
    """evaluate_atari.py and --evaluate_only: a run folder (or its checkpoint), a model folder
    export_atari.py wrote, or a Hub repo id holding one (no such local path)."""
    from pretrained_atari import evaluate_saved_folder, is_model_folder

    if req.video is not None:
        from video_atari import check_video_path

        try:
            check_video_path(req.video)
        except ValueError as e:
            raise ConfigError(str(e)) from None
    text = str(source)
    repo_id = not source.exists() and text.count("/") == 1 and not text.startswith((".", "/"))
    if is_model_folder(source) or repo_id:
        return evaluate_saved_folder(source, device, req)
    return evaluate_saved_run(source, device, req)


def evaluate_saved_run(run_dir: Path, device: str, req: EvalRequest) -> int:
    """Evaluate a run's checkpoint as its training did after each epoch (same seeds, target,
    episode count, step cap and dtype, unless given), print the table, write JSON and
    optionally a video of its first episode."""
    from decision_transformer.run.checkpoint import read_checkpoint

    path = run_dir / "checkpoint.pt" if run_dir.is_dir() else run_dir
    state = read_checkpoint(
        path, ("model", "config"), "pass a run directory written by run_dt_atari.py"
    )
    cfg = dict(state["config"])
    multi = "game_specs" in cfg
    if cfg.get("model_type") not in ("reward_conditioned", "naive") or not (
        "eval_target" in cfg or multi
    ):
        raise ConfigError(f"{path} is not an Atari run's checkpoint; pass one of run_dt_atari.py")
    if multi and req.target is not None:
        raise ConfigError(f"--target_return: {path} is a multi-game run with one target per game "
                          "(--game_targets); evaluate it at its own targets")  # fmt: skip
    cfg = select_game(cfg, req.game, path)
    if req.target is not None:
        cfg["eval_target"] = float(req.target)
    if req.max_steps is not None:
        cfg["eval_max_steps"] = req.max_steps
    if req.eval_envs is not None:
        cfg["eval_envs"] = req.eval_envs
    if req.episodes is not None:
        if req.episodes < 1:
            raise ConfigError(f"--eval_episodes must be positive, got {req.episodes}")
        cfg["eval_episodes"] = req.episodes
    cfg["eval_episodes"] = cfg["eval_episodes"] or 10  # a run trained without evaluation
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    weights = state["model"]
    model = build_model(
        cfg,
        n_actions=weights["head.weight"].shape[0],
        max_timestep=weights["global_pos_emb"].shape[1] - 1,
    )
    model.load_state_dict(weights)
    model.to(torch.device(device))
    step = state.get("trainer", {}).get("global_step")
    if multi:
        about = {"checkpoint": str(path), "step": step}
        json_path = req.json_path or path.parent / "eval.json"
        return evaluate_saved_games(model, cfg, torch.device(device), req, about, json_path)
    trace: list | None = [] if req.video is not None else None
    res = evaluate_model(model, cfg, torch.device(device), trace=trace)
    res.update(checkpoint=str(path), seed=cfg["seed"], step=step, max_steps=cfg["eval_max_steps"])
    print(eval_table([dict(res, run=path.parent.name)]))
    json_path = req.json_path or path.parent / "eval.json"
    if req.video is not None:
        from video_atari import render_traced_episode

        res["video"] = render_traced_episode(cfg, trace, res["returns"], req.video)
    json_path.write_text(json.dumps(res, indent=2) + "\n")
    print(f"wrote {json_path}")
    return 0


def evaluate_saved_games(model, cfg: dict, device: torch.device, req: EvalRequest, about: dict,
                         json_path: Path | None) -> int:  # fmt: skip
    """evaluate_saved_run for a multi-game run (or model folder): every game of
    ``cfg['game_specs']`` as its training evaluated it, one table row per game, JSON (at
    ``json_path``, if any) with ``about`` and each game's numbers; the video is of the first
    game's episode 0."""
    traces: dict = {}
    results = evaluate_games(model, cfg, device, AUTOCAST[cfg["dtype"]], traces)
    print(games_table(results))
    res = {**about, "seed": cfg["seed"], "max_steps": cfg["eval_max_steps"], "games": results,
           **{f"mean_{k}": v for k, v in mean_scores(results).items()}}  # fmt: skip
    if req.video is not None:
        from video_atari import render_traced_episode

        game = cfg["games"][0]
        one = dict(cfg, game=game, eval_target=cfg["game_specs"][game]["target"])
        video = render_traced_episode(one, traces[game], results[game]["returns"], req.video)
        res["video"] = dict(video, game=game)
    if json_path is not None:
        json_path.write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {json_path}")
    return 0


def join_world(cfg: dict) -> DistContext:
    """The process group torchrun describes (a world of one without it); a CUDA device becomes
    this rank's local GPU."""
    world = DistContext.from_env(cfg["device"])
    cfg["device"] = world.device(cfg["device"])
    return world


def run(cfg: dict, world: DistContext | None = None) -> int:
    """One training run; under torchrun every rank calls it (``world``: joined here if not
    given, and then left at the end)."""
    own = world is None
    if world is None:
        world = join_world(cfg)
    else:
        cfg["device"] = world.device(cfg["device"])
    # One process trains in a run folder at a time (the gym half's lock: a second one resuming
    # the same folder is refused in one line); under torchrun rank 0 holds it.
    with RunDirLock(cfg["out_dir"], enabled=world.is_main) as lock:
        code = train_run(cfg, lock, world)
    if own and code == 0:
        world.close()
    return code


def read_resume(cfg: dict) -> dict | None:
    """The run's own checkpoint (--resume; its flags compared), None for a fresh run; the gym
    half's folder rules and checkpoint reader."""
    ckpt_path = check_run_start(cfg["out_dir"], cfg["resume"])
    if not cfg["resume"]:
        return None
    state = read_checkpoint(
        ckpt_path, ("model", "trainer", "rng", "config"), "start the run without --resume"
    )
    saved = state["config"]
    changed = changed_flags(saved, cfg, RESUME_FREE | DERIVED)
    if changed:
        raise ConfigError(
            "--resume with changed flags: "
            + ", ".join(f"{k} {saved[k]} -> {cfg.get(k)}" for k in changed)
        )
    return state


def load_windows(cfg: dict, n_actions: int) -> tuple:
    """The sampled replay and its training windows, checked against the game."""
    data = create_dataset(
        cfg["num_buffers"],
        cfg["num_steps"],
        cfg["game"],
        cfg["data_dir_prefix"],
        cfg["trajectories_per_buffer"],
        cfg["seed"],
        cache=not cfg["no_cache"],
        keep_blank_rows=cfg["keep_blank_rows"],
        cache_dir=cfg["cache_dir"],
    )
    if data.actions.max() >= n_actions or data.actions.min() < 0:
        raise DatasetError(
            f"the replay holds action {data.actions.max()}, but {cfg['game']} has {n_actions}: "
            "is --game the game the data was recorded in?"
        )
    dataset = WindowDataset(data, cfg["context_length"])
    if len(dataset) == 0:
        raise DatasetError(
            f"no sampled trajectory is {cfg['context_length']} steps long; lower --context_length"
        )
    return data, dataset


def make_trainer(
    cfg: dict, model, dataset, device: torch.device, world: DistContext | None = None
) -> Trainer:
    tcfg = TrainerConfig(
        epochs=cfg["epochs"],
        batch_size=cfg["batch_size"],
        learning_rate=cfg["learning_rate"],
        weight_decay=cfg["weight_decay"],
        final_tokens=2 * len(dataset) * cfg["context_length"] * 3,
        num_workers=cfg["num_workers"],
        seed=cfg["seed"],
        steps_per_epoch=cfg["steps_per_epoch"],
    )
    return Trainer(model, dataset, tcfg, device, AUTOCAST[cfg["dtype"]], world)


def load_data(cfg: dict) -> tuple:
    """The training windows, the model's action count and largest timestep, and a description;
    settles the evaluation target(s) in ``cfg``. Every game's ROM is checked before any data."""
    if cfg.get("games"):
        action_sets = {g: minimal_action_set(g) for g in cfg["games"]}
        random.seed(cfg["seed"])
        np.random.seed(cfg["seed"])
        torch.manual_seed(cfg["seed"])
        dataset, max_t, specs = load_games(cfg, action_sets)
        cfg["game_specs"] = {g: asdict(spec) for g, spec in specs.items()}
        return dataset, FULL_ACTIONS, max_t, (f"{len(specs)} games {cfg['model_type']}", "")
    n_actions = check_game(cfg["game"])  # a game without a ROM fails before reading data
    random.seed(cfg["seed"])
    np.random.seed(cfg["seed"])
    torch.manual_seed(cfg["seed"])
    data, dataset = load_windows(cfg, n_actions)
    target = cfg["target_return"]
    if target is None:  # resolve() made sure a DT has one; BC is not conditioned on it
        target = PAPER_TARGETS.get(cfg["game"], 0.0)
    cfg["eval_target"] = float(target)
    about = (f"{cfg['game']} {cfg['model_type']}", f"{len(data)} transitions, ")
    return dataset, n_actions, int(data.timesteps.max()), about


def train_run(cfg: dict, lock: RunDirLock, world: DistContext | None = None) -> int:
    """The run on this rank (every rank trains and evaluates its share; rank 0 alone writes)."""
    world = world or DistContext()
    out = Path(cfg["out_dir"])
    state = read_resume(cfg)
    with world.local_rank_first():  # one sampler per node writes the cache, the others read it
        dataset, n_actions, max_timestep, about = load_data(cfg)
    np_rng = np.random.default_rng(cfg["seed"])

    device = torch.device(cfg["device"])
    model = build_model(cfg, n_actions, max_timestep).to(device)
    if state is not None:
        model.load_state_dict(state["model"])
    if cfg["compile"]:  # after loading: compiled blocks keep their state-dict names anyway
        compile_blocks(model)
    trainer = make_trainer(cfg, model, dataset, device, world)  # DDP-wraps it under torchrun
    if world.is_main:  # a resume writes the run's own config again (to warn of another stack)
        open_run_folder(out, lock, state["config"] if state is not None else cfg)
    if state is not None:
        trainer.load_state_dict(state["trainer"])
        set_rng_state(state["rng"], np_rng)
    seed_ranks(cfg, state, world)
    if state is not None and world.is_main:
        print(f"resumed {out} at epoch {trainer.epoch + 1}, step {trainer.step}")
    metrics = None
    if world.is_main:
        metrics = MetricsLog(out, cfg, wandb_id=state.get("wandb_id") if state else None)
        metrics.truncate(trainer.epoch)
        n_params = sum(p.numel() for p in model.parameters())
        steps = f"{trainer.steps_in_epoch()} steps/epoch{world_note(cfg, world)}"
        print(
            f"{about[0]} ({cfg['backbone']}, {n_params / 1e6:.2f}M params): {about[1]}"
            f"{len(dataset)} windows, {steps}"
        )
    saved = {"epoch": trainer.epoch if state is not None else None}
    try:
        train_epochs(cfg, model, trainer, metrics, np_rng, saved)
    except WriteError as e:
        kept = kept_after_failure(out / CHECKPOINT_NAME, saved["epoch"], "epoch")
        print(f"error: {e}; {kept}", file=sys.stderr)
        return 1
    if not world.is_main:  # the model folder is rank 0's
        return 0
    metrics.close()
    if cfg.get("export", True):
        export_model(out)
    return 0


def export_model(out: Path) -> None:
    """The run's model as a model folder in ``{out}/model`` (pretrained_atari.py), its card with
    the run's own last evaluation; a folder that cannot be written leaves the run a success and
    says, in one line, how to export later."""
    from pretrained_atari import export_atari_run

    try:
        folder = export_atari_run(out, out / "model", reuse_run_evaluation=True)
    except (UserError, OSError) as e:
        print(f"warning: no model folder written ({one_line(e)}); export the run later with "
              "export_atari.py", file=sys.stderr)  # fmt: skip
        return
    print(f"model folder: {folder}")


def world_note(cfg: dict, world: DistContext) -> str:
    """How the global batch is cut under torchrun (nothing for one process)."""
    n = world.world_size
    if n == 1:
        return ""
    b = cfg["batch_size"]
    return f" of {b} windows ({b // n} per process x {n} processes, DDP)"


def rank_seed(seed: int, rank: int, step: int) -> int:
    return int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0])


def seed_ranks(cfg: dict, state: dict | None, world: DistContext) -> None:
    """Each rank's own dropout stream under torchrun (rank 0 keeps one process's). A resume
    with the same number of processes takes every rank's saved generator back (exact); with
    another number the ranks other than 0 draw afresh from (seed, rank, step), said in one
    line (dropout cannot then repeat the first run's; the batches and schedule still do)."""
    saved = state.get("rank_rng") if state is not None else None
    saved_world = state.get("world_size", 1) if state is not None else world.world_size
    if saved is not None and len(saved) == world.world_size:
        mine = saved[world.rank]
        torch.set_rng_state(mine["torch"])
        if "cuda" in mine and torch.device(cfg["device"]).type == "cuda":
            torch.cuda.set_rng_state(mine["cuda"])
        return
    if saved_world != world.world_size and world.is_main:
        print(f"resuming with {world.world_size} processes instead of {saved_world}: the same "
              "batches and schedule, the gradients summed in another order (equal within float "
              "rounding); with --dropout > 0 the other ranks' dropout draws afresh")  # fmt: skip
    if world.rank > 0:
        step = state["trainer"]["global_step"] if state is not None else 0
        torch.manual_seed(rank_seed(cfg["seed"], world.rank, step))


def rank_rng_states(cfg: dict, world: DistContext) -> list | None:
    """Every rank's torch generator (collective: every rank calls it), for rank 0's checkpoint."""
    if world.world_size == 1:
        return None
    mine = {"torch": torch.get_rng_state()}
    if torch.device(cfg["device"]).type == "cuda":
        mine["cuda"] = torch.cuda.get_rng_state()
    states: list = [None] * world.world_size
    dist.all_gather_object(states, mine)
    return states


def train_epochs(
    cfg: dict, model, trainer: Trainer, metrics: MetricsLog | None, np_rng, saved
) -> None:
    """The epochs not yet done, each evaluated, logged and checkpointed (also every
    --save_every steps); ``saved['epoch']`` follows the checkpoint on disk. Under torchrun
    every rank trains and evaluates its share; rank 0 (``metrics`` given) logs and writes."""
    ckpt_path = Path(cfg["out_dir"]) / CHECKPOINT_NAME
    device = torch.device(cfg["device"])
    world = trainer.world

    def save(tr: Trainer) -> None:
        ranks = rank_rng_states(cfg, world)
        if world.is_main:
            write_checkpoint(tr, ranks)
        # Every rank waits for rank 0's write: a rank that fails later cannot take an unwritten
        # checkpoint down with it (torchrun stops every rank when one fails).
        world.barrier()
        saved["epoch"] = tr.epoch

    def write_checkpoint(tr: Trainer, ranks: list | None) -> None:
        state = {
            "model": model.state_dict(),  # the plain model's (no DDP prefix): any world resumes
            "trainer": tr.state_dict(),
            "rng": rng_state(np_rng),
            "config": cfg,
            "wandb_id": metrics.wandb_id,
        }
        if ranks is not None:
            state.update(world_size=world.world_size, rank_rng=ranks)
        with writing(ckpt_path):
            save_checkpoint(ckpt_path, state)

    def every(tr: Trainer) -> None:
        if tr.step % cfg["save_every"] == 0:
            save(tr)

    while trainer.epoch < cfg["epochs"]:
        t0 = time.time()
        logs = trainer.run_epoch(every)
        logs["time/train_s"] = time.time() - t0
        main = world.is_main
        if main:
            print(f"epoch {trainer.epoch}: loss {logs['train/loss']:.4f}")
        if cfg["eval_episodes"] and cfg.get("games"):
            results = evaluate_games(model, cfg, device, AUTOCAST[cfg["dtype"]], world=world)
            logs.update(games_logs(results))
            if main:
                print(f"epoch {trainer.epoch}:\n{games_table(results)}")
        elif cfg["eval_episodes"]:
            res = evaluate_model(model, cfg, device, world=world)
            logs.update(eval_logs(res))
            if main:
                print(eval_table([dict(res, run=f"epoch {trainer.epoch}")]))
        if main:
            with writing(metrics.path):
                metrics.log(trainer.epoch, trainer.global_step, logs)
        save(trainer)


if __name__ == "__main__":
    sys.exit(main())
