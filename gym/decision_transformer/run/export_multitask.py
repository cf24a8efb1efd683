"""A multi-task run's checkpoint as a multi-task model folder (models/pretrained.py,
``multitask_dt``), its evaluation per task, and its model card. export.py (run/export.py) calls
these for a run trained with ``--tasks``; the folder is written, reloaded and evaluated there, as
a single-task folder is.

Each task is evaluated through its single-task view (``model.task_model(i)``) by the
single-task folder's evaluator, with the task's own acting section: the same seeds, batching and
functions as the run's per-task evaluation (run/multitask.py), so the card's numbers are the
run's, bit for bit on the CPU.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from ..envs import get_spec
from ..errors import one_line
from ..models.factory import folder_config
from ..models.pretrained import (
    MULTITASK_DT,
    QWEN3_DT,
    ActingConfig,
    MultiTaskFolderConfig,
    TaskEntry,
    build_multitask_from_config,
    folder_state_dict,
    load_state,
)
from ..provenance import describe_versions
from .checkpoint import CheckpointError
from .config import RunConfig, task_name, task_shapes
from .evaluation import episode_seeds, format_target, is_auto, target_key

# evaluate_folder's signature (run/export.py): (model, folder, episodes, seed, eval_envs,
# targets, recorder, return_kappa) -> that folder's evaluation.
Play = Callable[..., dict]


def _float32_list(x) -> list[float]:
    """float32 values as the shortest decimals that read back to the same float32."""
    return [float(str(v)) for v in np.asarray(x, dtype=np.float32).reshape(-1)]


def is_multitask_checkpoint(ckpt: dict) -> bool:
    return isinstance(ckpt.get("config"), dict) and bool(ckpt["config"].get("tasks"))


def multitask_folder(
    ckpt: dict, source: str, which: str, run_flags: dict, versions: dict
) -> tuple[torch.nn.Module, MultiTaskFolderConfig]:
    """The run's model with its weights and the folder config describing it. ``run_flags``: the
    run's flags made shareable (export.public_flags); ``versions``: the stack it trained on."""
    cfg = RunConfig.from_dict(ckpt["config"])
    try:
        names = [task_name(t) for t in cfg.tasks]
        shapes = task_shapes(cfg.tasks)
        stats = [(ckpt["state_mean"][n], ckpt["state_std"][n]) for n in names]
        targets = [[x if is_auto(x) else float(x) for x in ckpt["eval_targets"][n]] for n in names]
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise CheckpointError(
            f"{source} does not describe its tasks ({one_line(e, 120)}): export a multi-task "
            "run experiment.py wrote"
        ) from None
    tasks = [
        _task_entry(cfg, task, name, shape, mean, std, ts)
        for task, name, shape, (mean, std), ts in zip(cfg.tasks, names, shapes, stats, targets)
    ]
    longest = max(s.max_ep_len for s in shapes)
    backbone, model_cfg = folder_config(
        cfg.model_config(), shapes[0].state_dim, shapes[0].act_dim, longest
    )
    provenance = {
        "source": "run checkpoint",
        "checkpoint": which,
        "iteration": ckpt.get("iteration"),
        "tasks": cfg.tasks,
        "task_sampling": cfg.task_sampling,
        "selection": ckpt.get("selection"),
        "run_config": run_flags,
        "versions": versions,
    }
    folder = MultiTaskFolderConfig(backbone, model_cfg, tasks, provenance)
    model = build_multitask_from_config(folder)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as e:
        raise CheckpointError(
            f"{source}: the weights do not fit the model its config describes ({one_line(e, 160)})"
        ) from None
    # Through the folder's naming and back, the path every load takes.
    fresh = build_multitask_from_config(folder)
    load_state(fresh, folder_state_dict(model, MULTITASK_DT), source)
    return fresh.eval(), folder


def _task_entry(cfg: RunConfig, task: str, name: str, shape, mean, std, targets) -> TaskEntry:
    """One task of the folder: how it acts (a single-task folder's acting section)."""
    env, dataset = task.split(":", 1)
    spec = get_spec(env)
    acting = ActingConfig(
        env=env,
        gym_id=spec.gym_id,
        state_mean=_float32_list(mean),
        state_std=_float32_list(std),
        return_scale=float(spec.scale),
        action_low=_float32_list(shape.action_low),
        action_high=_float32_list(shape.action_high),
        max_ep_len=spec.max_ep_len,
        context_length=cfg.K,
        attention=cfg.attention,
        targets=targets,
        mode=cfg.mode,
        dtype="bf16" if cfg.dtype == "bf16" else "fp32",
        return_kappa=cfg.return_kappa,
    )
    return TaskEntry(name, dataset, acting)


def mean_labels(folder: MultiTaskFolderConfig) -> list[str]:
    """The names of the target positions the mean over tasks is taken at, as the run's
    metrics name them (run/multitask.py's target_labels)."""
    specs = (folder.provenance.get("run_config") or {}).get("env_targets")
    if specs:
        # Folders written before they kept auto hold the run's other targets only.
        kept_auto = any(is_auto(x) for t in folder.tasks for x in t.acting.targets)
        return [str(t) for t in specs if kept_auto or not is_auto(str(t))]
    return [f"target{j + 1}" for j in range(min(len(t.acting.targets) for t in folder.tasks))]


def _with_means(folder: MultiTaskFolderConfig, per_task: list[dict]) -> dict[str, float]:
    """The mean normalized score over the tasks that have one, per target position."""
    means = {}
    for j, label in enumerate(mean_labels(folder)):
        scores = [
            t["targets"][j]["normalized_score"]
            for t in per_task
            if j < len(t["targets"]) and "normalized_score" in t["targets"][j]
        ]
        if scores:
            means[label] = float(np.mean(scores))
    return means


def evaluate_multitask_folder(
    model: torch.nn.Module,
    folder: MultiTaskFolderConfig,
    num_episodes: int,
    seed: int,
    eval_envs: int,
    play: Play,
    recorders: dict[int, object] | None = None,
    return_kappa: float | None = None,
) -> dict:
    """Every task's episodes at its own targets, each through its view and ``play`` (the
    single-task folder's evaluator); ``recorders``: task index -> an EpisodeRecorder watching
    that task's first target's first episode; ``return_kappa``: target auto's tilt (default:
    the folder's). What config.json's ``evaluation`` holds."""
    start = time.perf_counter()
    per_task, kappa = [], None
    for i, t in enumerate(folder.tasks):
        recorder = (recorders or {}).get(i)
        ev = play(
            model.task_model(i), folder.task_folder(i), num_episodes, seed, eval_envs,
            None, recorder, return_kappa,
        )  # fmt: skip
        per_task.append(
            {"name": t.name, "reference_scores": ev["reference_scores"], "targets": ev["targets"]}
        )
        kappa = ev.get("return_kappa", kappa)  # one run's flag: the tasks share it
    out = {
        "episodes_per_target": num_episodes,
        "seed": seed,
        "episode_seeds": episode_seeds(seed, num_episodes),
        "eval_envs": eval_envs,
        "device": str(next(model.parameters()).device),
        "dtype": folder.tasks[0].acting.dtype,
        "seconds": round(time.perf_counter() - start, 2),
        "tasks": per_task,
        "mean_normalized_score": _with_means(folder, per_task),
    }
    if kappa is not None:
        out["return_kappa"] = kappa
    return out


def auto_use(name: str, return_bins: int, kappa: float) -> list[str]:
    """The card's Use lines on target auto, for a model with a return head."""
    if not return_bins:
        return []
    return [
        "",
        f"It has a return head ({return_bins} bins): `python evaluate.py --checkpoint {name} "
        "--target_return auto` lets it pick its own return each step, tilted toward high "
        f"returns by `acting.return_kappa` ({kappa:g}, its run's; `--return_kappa K` to change).",
    ]


def auto_sentence(evaluation: dict) -> str:
    """The card's word on target auto, when it was played."""
    kappa = evaluation.get("return_kappa")
    if kappa is None:
        return ""
    return (
        " Target auto: each step's return drawn from the model's return head, tilted toward high "
        f"returns by kappa {kappa:g} (`--return_kappa`)."
    )


def evaluation_from_metrics(row: dict | None, folder: MultiTaskFolderConfig) -> dict | None:
    """The run's own evaluation of the checkpoint's weights (``row``: its metrics.jsonl row of
    the checkpoint's iteration) in :func:`evaluate_multitask_folder`'s form; None when that
    iteration was not evaluated."""
    from ..data.scores import reference_scores

    flags = folder.provenance.get("run_config") or {}
    episodes = flags.get("num_eval_episodes") or 0
    if row is None or episodes <= 0:
        return None
    numbers = ("return_mean", "return_std", "length_mean", "length_std", "normalized_score")
    per_task = []
    for t in folder.tasks:
        targets = []
        for target in t.acting.targets:
            prefix = f"evaluation/{t.name}/{target_key(target)}_"
            if f"{prefix}return_mean" not in row:
                return None
            found = {k: row[prefix + k] for k in numbers if prefix + k in row}
            targets.append({"target": target if is_auto(target) else float(target), **found})
        ref = reference_scores(t.acting.env, t.dataset)
        per_task.append(
            {"name": t.name, "reference_scores": list(ref) if ref else None, "targets": targets}
        )
    seed = flags.get("seed", 0)
    out = {
        "measured_by": f"the run, at iteration {row['iteration']} (metrics.jsonl)",
        "episodes_per_target": episodes,
        "seed": seed,
        "episode_seeds": episode_seeds(seed, episodes),
        "eval_envs": flags.get("eval_envs", 1),
        "device": flags.get("device", "cpu"),
        "dtype": folder.tasks[0].acting.dtype,
        "tasks": per_task,
        "mean_normalized_score": _with_means(folder, per_task),
    }
    if any(is_auto(x) for t in folder.tasks for x in t.acting.targets):
        out["return_kappa"] = folder.tasks[0].acting.return_kappa
    return out


def print_task_evaluation(evaluation: dict) -> None:
    """The per-task lines evaluate_pretrained.py and export.py print."""
    for t in evaluation["tasks"]:
        for r in t["targets"]:
            print(
                f"{t['name']} target {format_target(r['target'])}: return "
                f"{r['return_mean']:.4f} ± {r['return_std']:.4f}, length {r['length_mean']:.1f}"
            )
    for label, value in evaluation.get("mean_normalized_score", {}).items():
        print(f"mean normalized score over tasks at {label}: {value:.1f}")


# ---------------------------------------------------------------------------------------------
# The model card
# ---------------------------------------------------------------------------------------------


def multitask_model_card(folder: MultiTaskFolderConfig, name: str, reproduce: str | None) -> str:
    """README.md of a multi-task folder: Hub metadata, the tasks, their measured returns."""
    p, ev = folder.provenance, folder.evaluation
    backbone = "Qwen3-style" if folder.backbone == QWEN3_DT else "GPT-2"
    lines = _front_matter(folder, name)
    lines += ["", f"# {name}", ""]
    lines.append(
        f"One Decision Transformer ({backbone} backbone) trained offline on {len(folder.tasks)} "
        f"tasks at once, exported from a run's `{p.get('checkpoint', '?')}` checkpoint "
        f"(iteration {p.get('iteration')}). The backbone, the timestep and return embeddings "
        "and the token LayerNorm are shared; each task has its own state and action "
        "embeddings, action head and action bounds."
    )
    lines += ["", "## Tasks", "", "| task | env | dataset | state / action sizes | targets |"]
    lines.append("|---|---|---|---:|---:|")
    for t in folder.tasks:
        targets = ", ".join(map(format_target, t.acting.targets))
        lines.append(
            f"| {t.name} | {t.acting.gym_id} | {t.dataset} | {t.state_dim} / {t.act_dim} | "
            f"{targets} |"
        )
    lines += ["", "## Evaluation", ""]
    lines += _card_evaluation(ev, reproduce)
    lines += _card_use(folder, name)
    versions = p.get("versions") or {}
    if versions:
        by = versions.get("recorded_by", "run")
        said = "Trained on" if by == "run" else f"Versions as of the export ({by})"
        lines += ["", f"{said}: {describe_versions(versions)}."]
    return "\n".join(lines) + "\n"


def _front_matter(folder: MultiTaskFolderConfig, name: str) -> list[str]:
    ev = folder.evaluation
    gym_ids = list(dict.fromkeys(t.acting.gym_id for t in folder.tasks))
    tags = ["reinforcement-learning", "offline-reinforcement-learning", "decision-transformer",
            "multi-task", "gymnasium", "mujoco", *gym_ids, MULTITASK_DT]  # fmt: skip
    lines = ["---", "library_name: pytorch", "tags:", *[f"- {t}" for t in tags]]
    minari = [t.dataset.removeprefix("minari:") for t in folder.tasks if "minari:" in t.dataset]
    if minari:
        lines += ["datasets:", *[f"- {d}" for d in minari]]
    if ev:
        lines += ["model-index:", f"- name: {name}", "  results:"]
        for t, measured in zip(folder.tasks, ev["tasks"]):
            lines += [
                "  - task:",
                "      type: reinforcement-learning",
                "      name: reinforcement-learning",
                "    dataset:",
                f"      type: {t.acting.gym_id}",
                f"      name: {t.acting.gym_id} ({t.dataset})",
                "    metrics:",
            ]
            lines += card_metrics(measured["targets"], f"{t.name} ")
    return lines + ["---"]


def card_metrics(targets: list[dict], who: str = "") -> list[str]:
    """The card's front-matter metrics: one mean_reward entry per evaluated target (target
    None: an unconditioned model's, e.g. an Atari naive one's)."""
    lines = []
    for r in targets:
        at = "" if r["target"] is None else f" at target {format_target(r['target'])}"
        lines += [
            "    - type: mean_reward",
            f"      value: {r['return_mean']:.2f} +/- {r['return_std']:.2f}",
            f"      name: {who}mean return{at}",
        ]
    return lines


def _card_evaluation(ev: dict | None, reproduce: str | None) -> list[str]:
    if not ev:
        return [
            "Not evaluated at export: `python evaluate_pretrained.py FOLDER --num_eval_episodes N` "
            "measures every task."
        ]
    lines = ["| task | target | return (mean ± std) | length (mean ± std) | normalized score |"]
    lines.append("|---|---:|---:|---:|---:|")
    for t in ev["tasks"]:
        for r in t["targets"]:
            score = r.get("normalized_score")
            shown = f"{score:.1f}" if score is not None else "–"
            lines.append(
                f"| {t['name']} | {format_target(r['target'])} | {r['return_mean']:.1f} ± "
                f"{r['return_std']:.1f} | {r['length_mean']:.1f} ± {r['length_std']:.1f} | "
                f"{shown} |"
            )
    means = ev.get("mean_normalized_score") or {}
    if means:
        shown = ", ".join(f"{v:.1f} at {k}" for k, v in means.items())
        lines += ["", f"Mean normalized score over the tasks that have one: {shown}."]
    seeds = ev["episode_seeds"]
    span = f"{seeds[0]}..{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])
    lines += [
        "",
        f"{ev['episodes_per_target']} episodes per task and target, env seeds {span} "
        f"(evaluation seed {ev['seed']}), {ev['eval_envs']} envs at once, on {ev['device']}"
        + (f", measured by {ev['measured_by']}" if ev.get("measured_by") else "")
        + (" under bf16 autocast, as the run evaluated." if ev.get("dtype") == "bf16" else ".")
        + " Normalized score: 100 x (return - lo) / (hi - lo) with the env's D4RL reference "
        "returns lo and hi (– where the env has none)." + auto_sentence(ev),
    ]
    if reproduce:
        lines += ["", "Reproduce (from `gym/`):", "", "```bash", reproduce, "```"]
    return lines


def _card_use(folder: MultiTaskFolderConfig, name: str) -> list[str]:
    first = folder.tasks[0].name
    return [
        "",
        "## Use",
        "",
        "```python",
        "from decision_transformer.models.pretrained import from_pretrained",
        "",
        f'model = from_pretrained("{name}")  # a local folder or a Hub repo id',
        "config = model.pretrained_config",
        f'i = config.task_index("{first}")',
        "policy = model.task_model(i)  # a single-task DT sharing the model's weights",
        "acting = config.task_folder(i).acting  # its state mean/std, return scale, action box",
        "```",
        "",
        "Each task acts as a single-task model folder's model does with its own `acting` "
        "section: observations normalized by its state mean/std, returns-to-go divided by its "
        f"return scale, the last {folder.model.context_length} steps in context.",
        *auto_use(name, folder.model.return_bins, folder.tasks[0].acting.return_kappa),
    ]


def load_metrics_row(run_dir: Path, iteration: int | None) -> dict | None:
    from .metrics import read_metrics

    try:
        rows = read_metrics(run_dir)
    except (OSError, ValueError, KeyError):
        return None
    return next((r for r in rows if r.get("iteration") == iteration), None)
