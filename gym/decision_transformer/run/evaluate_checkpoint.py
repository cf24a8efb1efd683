"""evaluate.py: evaluate a training checkpoint, from the checkpoint alone, as training did.

The model, env and state normalisation come from the checkpoint (its config, weights, state
mean/std and resolved targets). Episodes are played by ``evaluate_returns`` and summarised by
``summarize_returns``, the functions training's own evaluation runs, with the same episode
seeds and the run's numerics (dtype and autocast, compilation, TF32 on CUDA): on the CPU, for the
same checkpoint, seed, episode count and ``eval_envs`` the numbers are those of the run's last
metrics.jsonl row, bit for bit. On a GPU they can differ per episode (see match_run_numerics).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from ..envs import get_spec, make_env
from ..errors import UserError
from ..evaluation.evaluate_episodes import StepHook
from ..models.factory import build_model, build_multitask_model
from ..provenance import run_versions, stack_versions, version_drift
from .checkpoint import CheckpointError, read_run_checkpoint
from .cli import HelpFormatter, OneLineParser, finite_float, target_return
from .cli import report as report_error
from .config import (
    ConfigError,
    RunConfig,
    resolve_device,
    resolve_targets,
    task_name,
    task_shapes,
)
from .evaluation import (
    enable_tf32,
    episode_seeds,
    evaluate_returns,
    format_target,
    is_auto,
    reference_scores_for,
    summarize_returns,
    target_key,
)
from .multitask import (
    MultiTaskEvaluation,
    TaskEval,
    format_task_table,
    target_labels,
    task_video_paths,
)
from .parallel import compile_regions
from .paths import check_output_file
from .state import BEST_NAME, CHECKPOINT_NAME, load_full_weights

# What evaluation itself reads from the config; build_model reads the model's own flags.
CONFIG_KEYS = ("env", "dataset", "model_type", "mode", "seed", "num_eval_episodes", "eval_envs")


def saved_target(value) -> float | str:
    """A target as a checkpoint recorded it: a number, or ``auto``."""
    return value if is_auto(value) else float(value)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        formatter_class=HelpFormatter,
        description="Evaluate a checkpoint written by experiment.py / experiment_qwen.py, the "
        "way training evaluates; optionally render the first episode to a video.",
    )
    a = p.add_argument
    a(
        "--checkpoint",
        required=True,
        help="RUN/checkpoint.pt, RUN/best.pt, or the run directory (see --which)",
    )
    a(
        "--which",
        default=None,
        choices=["last", "best"],
        help="with a run directory: last is its checkpoint.pt, best its best.pt (the best "
        "iteration by the run's --select_by); given a file, picks that file's sibling "
        "(default: the file named, or last for a directory)",
    )
    a(
        "--num_eval_episodes",
        type=int,
        default=None,
        help="episodes per target (default: the run's --num_eval_episodes)",
    )
    a(
        "--target_return",
        type=target_return,
        nargs="+",
        default=None,
        help="returns to condition on; auto: the returns the model picks itself each step (a "
        "model trained with --return_bins) (default: the targets the run evaluated)",
    )
    a(
        "--return_kappa",
        type=finite_float,
        default=None,
        help="with target auto: the tilt toward high returns (default: the run's --return_kappa)",
    )
    a(
        "--eval_envs",
        type=int,
        default=None,
        help="episodes played at once; 1 is the one-episode evaluator (default: the run's)",
    )
    a("--seed", type=int, default=None, help="evaluation seed (default: the run's --seed)")
    add_output_flags(p)
    return p


def add_output_flags(p: argparse.ArgumentParser) -> None:
    """Where results go: the video, the JSON file, the device that plays."""
    a = p.add_argument
    a(
        "--video",
        default=None,
        metavar="PATH",
        help="render the first episode to PATH (.mp4/.gif; default: no video); a multi-task "
        "run: one clip per task, PATH's name + '-<task>' (or --video_task's alone, to PATH)",
    )
    a(
        "--video_task",
        default=None,
        metavar="NAME",
        help="a multi-task run: film this task only (its name as in the table, e.g. hopper-medium)",
    )
    a(
        "--video_quality",
        default="auto",
        choices=["auto", "fast", "full"],
        help="fast drops multisampling, shadows and reflections (~10x faster on software GL); "
        "auto (the default) picks fast when OpenGL is a software rasteriser",
    )
    a(
        "--json",
        default=None,
        metavar="PATH",
        help="where to write results (default RUN/eval.json, RUN/eval-best.json for best.pt)",
    )
    a("--device", default="auto", help="auto (the default: CUDA when present, else CPU), cpu, ...")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    return line if len(line) <= 160 else line[:157] + "..."


FILES = {"last": CHECKPOINT_NAME, "best": BEST_NAME}


def load_run_checkpoint(path: str | Path, which: str | None = None) -> tuple[Path, dict]:
    """The checkpoint at ``path`` (a file or a run directory, ``which`` choosing last or best),
    checked to be experiment.py's."""
    path = Path(path)
    if path.is_dir():
        path = path / FILES[which or "last"]
    elif which is not None:
        path = path.parent / FILES[which]
    if which == "best" and not path.is_file():
        raise CheckpointError(
            f"no best.pt in {path.parent}: the run kept none (it had neither --val_episodes nor "
            "--select_by); evaluate --which last"
        )
    ckpt = read_run_checkpoint(path, "evaluate")
    if "model" in ckpt:
        return path, ckpt
    if "dcp" in ckpt:  # an FSDP run's checkpoint without the consolidated copy
        raise CheckpointError(
            f"{path} holds only sharded weights ({ckpt['dcp']}, written with "
            "--consolidate_checkpoint false): resume the run once under torchrun with --fsdp "
            "--consolidate_checkpoint true to write full weights, then evaluate that"
        )
    raise CheckpointError(
        f"{path} is not a checkpoint written by experiment.py (no model); point --checkpoint at "
        "the checkpoint.pt of a run experiment.py wrote"
    )


def eval_config(ckpt: dict, args: argparse.Namespace) -> RunConfig:
    """The run's config with this evaluation's overrides."""
    saved = ckpt["config"]
    missing = [k for k in CONFIG_KEYS if not isinstance(saved, dict) or k not in saved]
    if missing:
        raise CheckpointError(f"the checkpoint's config lacks {', '.join(missing)}")
    cfg = RunConfig.from_dict(saved)
    try:
        get_spec(cfg.env)
    except ValueError as e:
        raise CheckpointError(f"the checkpoint's env: {e}") from None
    overrides = {
        flag: getattr(args, flag)
        for flag in ("num_eval_episodes", "eval_envs", "seed", "return_kappa")
        if getattr(args, flag, None) is not None  # callers' namespaces may predate a flag
    }
    cfg = replace(cfg, **overrides)
    if cfg.return_kappa < 0:
        raise ConfigError(f"--return_kappa must be >= 0, got {cfg.return_kappa}")
    for flag in ("num_eval_episodes", "eval_envs"):
        if getattr(cfg, flag) <= 0:
            hint = "" if getattr(args, flag) is not None else f" (the run's): pass --{flag} N"
            raise ConfigError(f"--{flag} must be positive, got {getattr(cfg, flag)}{hint}")
    if cfg.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {cfg.seed}")
    return replace(cfg, device=resolve_device(args.device))


def eval_targets(
    ckpt: dict, cfg: RunConfig, requested: list[float | str] | None
) -> list[float | str]:
    targets = _eval_targets(ckpt, cfg, requested)
    if any(map(is_auto, targets)) and not cfg.return_bins:
        raise ConfigError(
            "target auto samples returns from a return head this model lacks (trained without "
            "--return_bins): give numbers to --target_return"
        )
    return targets


def _eval_targets(ckpt: dict, cfg: RunConfig, requested: list | None) -> list[float | str]:
    if requested:
        return [saved_target(t) for t in requested]
    if "eval_targets" in ckpt:
        return [saved_target(t) for t in ckpt["eval_targets"]]
    # Older checkpoints lack the resolved targets; numbers can be resolved without the dataset.
    specs = cfg.env_targets
    if specs and any(isinstance(t, str) for t in specs):
        raise CheckpointError(
            f"the run's targets ({' '.join(map(str, specs))}) depend on its dataset and the "
            "checkpoint does not record them: pass --target_return"
        )
    return resolve_targets(specs, None, get_spec(cfg.env).env_targets)


def restore_model(ckpt: dict, cfg: RunConfig) -> torch.nn.Module:
    spec = get_spec(cfg.env)
    env = make_env(cfg.env)
    state_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    low, high = env.action_space.low, env.action_space.high
    env.close()
    if tuple(ckpt["state_mean"].shape) != (state_dim,):
        raise CheckpointError(
            f"the checkpoint's state mean has shape {tuple(ckpt['state_mean'].shape)} but "
            f"{cfg.env} observations have {state_dim} dimensions"
        )
    try:
        model = build_model(cfg.model_config(), state_dim, act_dim, spec.max_ep_len, low, high)
    except (ImportError, KeyError, TypeError, ValueError) as e:
        raise CheckpointError(f"cannot rebuild the run's model: {_first_line(e)}") from None
    load_full_weights(model, ckpt)
    model = model.to(cfg.device).eval()
    if cfg.compile:
        # Training evaluated the compiled model; compiled kernels round differently.
        compile_regions(model)
    return model


def match_run_numerics(run_device: str, device: str) -> bool:
    """Evaluate fp32 matmuls as the run did: in TF32 on CUDA when the run trained (and evaluated)
    on CUDA, where experiment.py turns TF32 on; IEEE fp32 otherwise. Returns whether TF32 is on.

    This makes the arithmetic the same, not the results bit for bit: on GPUs, bf16 and TF32
    kernels pick their algorithm (and so their rounding) by matrix shape, so a batch of 16
    episodes and one of 2 (a rank's share under torchrun) can round differently, and over 1000
    chaotic simulator steps that can change an episode's return. On the CPU the kernels of one
    machine are deterministic for a given shape."""
    tf32 = str(run_device).startswith("cuda") and torch.device(device).type == "cuda"
    if tf32:
        enable_tf32(device)
    return tf32


def autocast_for(cfg: RunConfig, device: str):
    """bf16 runs evaluate under autocast during training; do the same, or the numbers differ."""
    if cfg.dtype != "bf16":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def warn_on_version_drift(run_dir: Path) -> None:
    """One line on stderr when this evaluation runs on other versions (or another CPU/GPU) than
    the run it reads: the same policy can then return other numbers than the run reported."""
    recorded = run_versions(run_dir)
    drift = version_drift(recorded) if recorded else []
    if drift:
        print(f"warning: evaluating on other versions than the run's: {'; '.join(drift)}; "
              "returns may differ from its own evaluation", file=sys.stderr)  # fmt: skip


def markdown_table(results: list[dict], has_score: bool) -> str:
    head = "| target | return | length |" + (" normalized score |" if has_score else "")
    rows = [head, "|---:|---:|---:|" + ("---:|" if has_score else "")]
    for r in results:
        row = (
            f"| {format_target(r['target'])} | {r['return_mean']:.1f} ± {r['return_std']:.1f} "
            f"| {r['length_mean']:.1f} ± {r['length_std']:.1f} |"
        )
        if has_score:
            score = r.get("normalized_score")
            row += f" {score:.1f} |" if score is not None else " – |"
        rows.append(row)
    return "\n".join(rows)


def evaluate(args: argparse.Namespace) -> dict:
    """Everything evaluate.py does but printing; returns what goes into the JSON file."""
    if args.video is not None:
        check_video_arg(args.video)
    if args.json is not None:
        check_output_file(args.json, "--json", make_parent=True)
    ckpt_path, ckpt = load_run_checkpoint(args.checkpoint, args.which)
    if isinstance(ckpt["config"], dict) and ckpt["config"].get("tasks"):
        return evaluate_tasks(args, ckpt_path, ckpt)
    if args.video_task is not None:
        raise ConfigError("--video_task picks a task of a multi-task run: drop it here")
    cfg = eval_config(ckpt, args)  # checks the config; its device becomes this evaluation's
    warn_on_version_drift(ckpt_path.parent)
    targets = eval_targets(ckpt, cfg, args.target_return)
    tf32 = match_run_numerics(ckpt["config"].get("device", "cpu"), cfg.device)
    model = restore_model(ckpt, cfg)
    seeds = episode_seeds(cfg.seed, cfg.num_eval_episodes)
    ref = reference_scores_for(cfg)
    recorder = None
    if args.video is not None:
        from ..evaluation.video import EpisodeRecorder

        recorder = EpisodeRecorder(seed=seeds[0])
    start = time.perf_counter()
    results, metrics = play_targets(cfg, ckpt, model, targets, seeds, ref, recorder)
    report = {
        "checkpoint": str(ckpt_path),
        "iteration": ckpt.get("iteration"),
        "env": cfg.env,
        "dataset": cfg.dataset,
        "model_type": cfg.model_type,
        "backbone": cfg.backbone,
        "params": cfg.params,
        "mode": cfg.mode,
        "seed": cfg.seed,
        "num_eval_episodes": cfg.num_eval_episodes,
        "eval_envs": cfg.eval_envs,
        "device": cfg.device,
        "dtype": cfg.dtype,
        "tf32": tf32,
        "episode_seeds": seeds,
        "reference_scores": list(ref) if ref is not None else None,
        "evaluation_seconds": time.perf_counter() - start,
        "versions": stack_versions(),
        "targets": results,
        "metrics": metrics,
    }
    if "selection" in ckpt:  # best.pt: by what, and the value that made it best
        report["selection"] = ckpt["selection"]
    if recorder is not None:
        report["video"] = render_video(cfg, recorder, targets[0], args)
    return report


def _refuse_single_task_flags(args: argparse.Namespace) -> None:
    if args.target_return:
        raise ConfigError(
            "--target_return is one list for one task; a multi-task run evaluates each task at "
            "its own targets: drop --target_return"
        )


def _saved_tasks(ckpt_path: Path, ckpt: dict) -> tuple[RunConfig, list, list, list, list]:
    """The run's config and, per task, its name, state statistics, targets and shapes."""
    saved = RunConfig.from_dict(ckpt["config"])
    try:
        names = [task_name(t) for t in saved.tasks]
        stats = [(ckpt["state_mean"][n].numpy(), ckpt["state_std"][n].numpy()) for n in names]
        targets = [[saved_target(x) for x in ckpt["eval_targets"][n]] for n in names]
        shapes = task_shapes(saved.tasks)
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise CheckpointError(
            f"{ckpt_path} does not describe its tasks ({_first_line(e)}); point --checkpoint "
            "at a multi-task run experiment.py wrote"
        ) from None
    return saved, names, stats, targets, shapes


def _evaluation_config(args: argparse.Namespace, saved: RunConfig) -> RunConfig:
    """The run's config with the evaluation flags given on the command line, checked."""
    overrides = {
        flag: getattr(args, flag)
        for flag in ("num_eval_episodes", "eval_envs", "seed", "return_kappa")
        if getattr(args, flag, None) is not None  # callers' namespaces may predate a flag
    }
    cfg = replace(saved, **overrides, device=resolve_device(args.device))
    if cfg.return_kappa < 0:
        raise ConfigError(f"--return_kappa must be >= 0, got {cfg.return_kappa}")
    for flag in ("num_eval_episodes", "eval_envs"):
        if getattr(cfg, flag) <= 0:
            raise ConfigError(f"--{flag} must be positive, got {getattr(cfg, flag)}")
    if cfg.seed < 0:
        raise ConfigError(f"--seed must be >= 0, got {cfg.seed}")
    return cfg


def evaluate_tasks(args: argparse.Namespace, ckpt_path: Path, ckpt: dict) -> dict:
    """evaluate.py on a multi-task run (--tasks): every task at its own targets, as the run's
    evaluation played them (run/multitask.py), each with its own state statistics."""
    _refuse_single_task_flags(args)
    saved, names, stats, targets, shapes = _saved_tasks(ckpt_path, ckpt)
    cfg = _evaluation_config(args, saved)
    warn_on_version_drift(ckpt_path.parent)
    tf32 = match_run_numerics(ckpt["config"].get("device", "cpu"), cfg.device)
    model = build_multitask_model(cfg.model_config(), shapes)
    load_full_weights(model, ckpt)
    model = model.to(cfg.device).eval()
    if cfg.compile:
        compile_regions(model)
    tasks = [
        TaskEval(n, t.split(":", 1)[0], t.split(":", 1)[1], mean, std, tuple(ts))
        for n, t, (mean, std), ts in zip(names, cfg.tasks, stats, targets)
    ]
    evaluation = MultiTaskEvaluation(cfg, tasks, target_labels(cfg, targets))
    videos = task_video_paths(args.video, names, args.video_task)
    for path in videos.values():
        check_video_arg(str(path))
    seeds = episode_seeds(cfg.seed, cfg.num_eval_episodes)
    from ..evaluation.video import EpisodeRecorder

    recorders = {i: EpisodeRecorder(seed=seeds[0]) for i in videos}
    start = time.perf_counter()
    with autocast_for(cfg, cfg.device):
        metrics = evaluation(model, recorders)
    report = {
        "checkpoint": str(ckpt_path),
        "iteration": ckpt.get("iteration"),
        "tasks": cfg.tasks,
        "task_names": names,
        "task_targets": dict(zip(names, targets)),
        "model_type": cfg.model_type,
        "backbone": cfg.backbone,
        "params": cfg.params,
        "seed": cfg.seed,
        "num_eval_episodes": cfg.num_eval_episodes,
        "eval_envs": cfg.eval_envs,
        "device": cfg.device,
        "dtype": cfg.dtype,
        "tf32": tf32,
        "episode_seeds": episode_seeds(cfg.seed, cfg.num_eval_episodes),
        "evaluation_seconds": time.perf_counter() - start,
        "versions": stack_versions(),
        "metrics": metrics,
        "table": format_task_table(tasks, metrics),
    }
    if "selection" in ckpt:  # best.pt: by what, and the value that made it best
        report["selection"] = ckpt["selection"]
    if videos:
        report["videos"] = {
            tasks[i].name: render_task_video(cfg, tasks[i], recorders[i], path, args)
            for i, path in videos.items()
        }
    return report


def render_task_video(cfg: RunConfig, task: TaskEval, recorder, path: Path, args) -> dict:
    """A multi-task run's recorded episode of ``task`` (at its first target) rendered to
    ``path``."""
    from ..evaluation.video import Caption, render_episode

    target = task.targets[0]
    title = f"{task.name} {cfg.backbone} multi-task  target {format_target(target)}"
    shown = None if is_auto(target) else target  # auto: no return-to-go to count down
    caption = Caption(title, shown, cfg.mode, get_spec(task.env).max_ep_len)
    return render_episode(task.env, recorder, path, caption, quality=args.video_quality)


def check_video_arg(path: str) -> None:
    from ..evaluation.video import check_video_path

    try:
        check_video_path(path)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    check_output_file(path, "--video")


def play_targets(
    cfg: RunConfig,
    ckpt: dict,
    model: torch.nn.Module,
    targets: list[float],
    seeds: list[int],
    ref: tuple[float, float] | None,
    recorder: StepHook | None,
) -> tuple[list[dict], dict]:
    """Every target's episodes: per-target results for the report, and metrics.jsonl's numbers
    (the recorder watches the first target's first episode)."""
    state_mean, state_std = ckpt["state_mean"].numpy(), ckpt["state_std"].numpy()
    conditioned = cfg.model_type == "dt"
    results, metrics, played = [], {}, {}
    for i, target in enumerate(targets):
        # BC never sees the target: its episodes are the same for every target, so play once.
        cache_key = target if conditioned else None
        if cache_key not in played:
            with autocast_for(cfg, cfg.device):
                played[cache_key] = evaluate_returns(
                    cfg, model, (state_mean, state_std), target, seeds, progress=True,
                    on_step=recorder if i == 0 else None,
                )  # fmt: skip
        returns, lengths = played[cache_key]
        summary = summarize_returns(target, returns, lengths, ref)
        metrics.update(summary)
        key = target_key(target)
        results.append(
            {
                "target": target,
                **{k[len(key) + 1 :]: v for k, v in summary.items()},
                "returns": [float(r) for r in returns],
                "lengths": [int(n) for n in lengths],
            }
        )
    return results, metrics


def render_video(cfg: RunConfig, recorder, target, args: argparse.Namespace) -> dict:
    """The recorded episode rendered to ``--video``."""
    from ..evaluation.video import Caption, render_episode

    conditioned = cfg.model_type == "dt"
    title = f"{cfg.env} {cfg.model_type} {cfg.backbone or ''}".rstrip()
    if conditioned:
        title += f"  target {format_target(target)}"
    # auto has no return-to-go to count down: the model picks each step's anew
    shown = target if conditioned and not is_auto(target) else None
    caption = Caption(title, shown, cfg.mode, get_spec(cfg.env).max_ep_len)
    return render_episode(cfg.env, recorder, args.video, caption, quality=args.video_quality)


def main(argv: list[str] | None = None) -> int:
    # Offscreen rendering with no display; must be set before mujoco is first imported.
    os.environ.setdefault("MUJOCO_GL", "egl")
    args = build_parser().parse_args(argv)
    try:
        report = evaluate(args)
    except UserError as e:
        return report_error(e)

    params = f", {report['params']:,} parameters" if report["params"] else ""
    if "tasks" in report:
        print(
            f"{report['checkpoint']} (iteration {report['iteration']}): "
            f"{len(report['tasks'])} tasks, {report['model_type']} {report['backbone']}{params}"
        )
        print(f"{report['num_eval_episodes']} episodes per target, seed {report['seed']}")
        print(report["table"])
        for name, v in report.get("videos", {}).items():
            print(f"video of {name}: {v['path']}, {v['frames']} frames (seed {v['seed']}, "
                  f"return {v['episode_return']:.1f})")  # fmt: skip
        return write_report(args, report)
    print(
        f"{report['checkpoint']} (iteration {report['iteration']}): {report['env']} "
        f"{report['dataset']}, {report['model_type']} {report['backbone']}{params}"
    )
    print(
        f"{report['num_eval_episodes']} episodes per target, seed {report['seed']}, "
        f"eval_envs {report['eval_envs']}, {report['evaluation_seconds']:.1f}s"
    )
    has_score = report["reference_scores"] is not None
    print(markdown_table(report["targets"], has_score))
    if "video" in report:
        v = report["video"]
        print(
            f"video: {v['path']}, {v['frames']} frames at {v['fps']:g} fps "
            f"(episode of seed {v['seed']}, return {v['episode_return']:.1f}), "
            f"rendered at {v['render_fps']:.1f} frames/s"
        )
    return write_report(args, report)


def write_report(args: argparse.Namespace, report: dict) -> int:
    ckpt_path = Path(report["checkpoint"])
    default = "eval-best.json" if ckpt_path.name == FILES["best"] else "eval.json"
    out = Path(args.json) if args.json else ckpt_path.parent / default
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"results: {out}")
    return 0
