"""Turn a run folder's checkpoint (or a transformers DecisionTransformerModel folder) into a model
folder (models/pretrained.py), evaluate it, and write its model card.

Everything is written into a temporary sibling of ``--out`` and renamed into place at the end, so
a failure at any point leaves no half-written folder and never touches an existing one.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from ..data.scores import reference_scores
from ..envs import get_spec, make_env
from ..errors import ConfigError, UserError, one_line
from ..models.factory import folder_config
from ..models.pretrained import (
    CARD_NAME,
    CONFIG_NAME,
    GPT2_DT,
    MLP_BC,
    MULTITASK_DT,
    QWEN3_DT,
    ActingConfig,
    FolderConfig,
    GPT2DTConfig,
    MultiTaskFolderConfig,
    PretrainedError,
    build_from_config,
    from_pretrained,
    is_model_source,
    load_state,
    read_transformers_folder,
    save_pretrained,
)
from ..provenance import describe_versions, public_path, run_versions_or_now, stack_versions
from .cli import HelpFormatter, OneLineParser, finite_float, run_cli, target_return
from .config import RunConfig
from .evaluation import format_target, is_auto, summarize_returns, target_key
from .export_multitask import (
    auto_sentence,
    auto_use,
    card_metrics,
    evaluate_multitask_folder,
    is_multitask_checkpoint,
    load_metrics_row,
    multitask_folder,
    multitask_model_card,
    print_task_evaluation,
)
from .export_multitask import evaluation_from_metrics as multitask_evaluation_from_metrics

# The base commit's checkpoints and today's carry these; anything less is not a run's checkpoint.
CONFIG_KEYS = ("env", "dataset", "model_type", "K", "embed_dim", "n_layer", "n_head")


class ExportError(UserError, ValueError):
    """An export that cannot be made; the message names the fix."""


# ---------------------------------------------------------------------------------------------
# A run's checkpoint -> the folder's config and model
# ---------------------------------------------------------------------------------------------


def architecture_config(cfg: RunConfig, state_dim: int, act_dim: int, max_ep_len: int):
    """The folder's architecture name and config for the model a run's config builds."""
    return folder_config(cfg.model_config(), state_dim, act_dim, max_ep_len)


def _spell_difference(field: str, theirs: object, mine: object) -> str:
    if field == "timestep_embedding":  # a negated flag: say what to type
        return "--no_timestep_embedding" if not theirs else "no --no_timestep_embedding"
    return f"--{field} {theirs} (not {mine})"


# Fields that do not shape the weights: a fine-tuning run may choose its own.
UNSHAPING_FIELDS = {"dropout", "resid_pdrop", "embd_pdrop", "attn_pdrop", "eval_context"}


def init_from_folder(
    cfg: RunConfig, source: str, state_dim: int, act_dim: int, max_ep_len: int
) -> tuple[dict, np.ndarray, np.ndarray]:
    """--init_from FOLDER|REPO_ID: the weights of the model folder (or Hub repo) and the state
    mean/std it acts with, checked to be the model these flags build for this env."""
    try:
        model = from_pretrained(source)
    except UserError as e:
        raise ConfigError(f"--init_from: {one_line(e, 200)}") from None
    folder = model.pretrained_config
    if isinstance(folder, MultiTaskFolderConfig):
        raise ConfigError(
            f"--init_from: {source} is a multi-task model ({', '.join(folder.task_names)}); "
            "fine-tuning one is not supported: start from a single-task model folder"
        )
    if folder.acting.env != cfg.env:
        raise ConfigError(
            f"--init_from: {source} plays {folder.acting.env}, this run {cfg.env}: pass --env "
            f"{folder.acting.env}"
        )
    arch, mine = architecture_config(cfg, state_dim, act_dim, max_ep_len)
    if folder.architecture != arch:
        raise ConfigError(
            f"--init_from: {source} holds a {folder.architecture} model, these flags build a "
            f"{arch}: use the script and --model_type of that architecture"
        )
    theirs = folder.model
    differ = [
        _spell_difference(k, getattr(theirs, k), getattr(mine, k))
        for k in type(mine).__dataclass_fields__
        if k not in UNSHAPING_FIELDS and getattr(mine, k) != getattr(theirs, k)
    ]
    if differ:
        raise ConfigError(
            f"--init_from: {source} is another model than these flags build: its "
            f"{', '.join(differ[:4])}; pass its model flags"
        )
    mean = np.asarray(folder.acting.state_mean, dtype=np.float32)
    std = np.asarray(folder.acting.state_std, dtype=np.float32)
    return model.state_dict(), mean, std


def env_facts(env_name: str) -> tuple[int, int, np.ndarray, np.ndarray]:
    env = make_env(env_name)
    try:
        state_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
        return state_dim, act_dim, env.action_space.low, env.action_space.high
    finally:
        env.close()


def _floats(x) -> list[float]:
    """float32 values as the shortest decimals that read back to the same float32 (0.4, not
    0.4000000059604645): exact, and readable in config.json."""
    return [float(str(v)) for v in np.asarray(x, dtype=np.float32).reshape(-1)]


def run_targets(ckpt: dict, cfg: RunConfig, requested: list | None = None) -> list[float | str]:
    """The targets the run evaluated (or ``requested``: export.py's --target_return), read from
    its checkpoint as evaluate.py reads them, auto included: refused on a run without the head."""
    from .evaluate_checkpoint import eval_targets

    return eval_targets(ckpt, cfg, requested)


# Run flags that hold local paths (the user's folders): see provenance.public_path.
PATH_FLAGS = ("out_dir", "data_dir", "init_from", "init_backbone")


def public_flags(run_config: dict) -> dict:
    """The run's flags with :data:`PATH_FLAGS` made shareable."""
    return {k: public_path(v) if k in PATH_FLAGS else v for k, v in run_config.items()}


def folder_from_checkpoint(
    ckpt: dict,
    source: str,
    which: str,
    targets: list[float | str] | None = None,
    versions: dict | None = None,
) -> tuple[torch.nn.Module, FolderConfig]:
    """The run's model with its weights, and the folder config describing it. ``versions``:
    the stack it trained on (:func:`run_versions_or_now`); default: this process's."""
    cfg = _saved_config(ckpt, source)
    spec = get_spec(cfg.env)
    state_dim, act_dim, low, high = env_facts(cfg.env)
    mean, std = ckpt["state_mean"], ckpt["state_std"]
    if tuple(mean.shape) != (state_dim,) or tuple(std.shape) != (state_dim,):
        raise ExportError(
            f"{source}: the state statistics have shape {tuple(mean.shape)} but {cfg.env} "
            f"observations have {state_dim} dimensions"
        )
    try:
        arch, model_cfg = architecture_config(cfg, state_dim, act_dim, spec.max_ep_len)
    except (TypeError, ValueError) as e:
        raise ExportError(
            f"{source}: cannot describe the run's model ({one_line(e, 120)})"
        ) from None
    acting = ActingConfig(
        env=cfg.env,
        gym_id=spec.gym_id,
        state_mean=_floats(mean),
        state_std=_floats(std),
        return_scale=float(spec.scale),
        action_low=_floats(low),
        action_high=_floats(high),
        max_ep_len=spec.max_ep_len,
        context_length=cfg.K,
        attention=cfg.attention,
        targets=run_targets(ckpt, cfg, targets),
        conditioned=cfg.model_type == "dt",
        mode=cfg.mode,
        dtype="bf16" if cfg.dtype == "bf16" else "fp32",
        return_kappa=cfg.return_kappa,
    )
    provenance = {
        "source": "run checkpoint",
        "checkpoint": which,
        "iteration": ckpt.get("iteration"),
        "dataset": cfg.dataset,
        "env": cfg.env,
        "selection": ckpt.get("selection"),
        "run_config": public_flags(cfg.to_dict()),
        "versions": versions or {"recorded_by": "export", **stack_versions()},
    }
    folder = FolderConfig(arch, model_cfg, acting, provenance)
    return _through_folder_names(ckpt["model"], folder, source), folder


def _saved_config(ckpt: dict, source: str) -> RunConfig:
    """The run config a checkpoint saved, checked to describe a model of a known env."""
    saved = ckpt.get("config")
    missing = [k for k in CONFIG_KEYS if not isinstance(saved, dict) or k not in saved]
    if missing:
        raise ExportError(f"{source}: the checkpoint's config lacks {', '.join(missing)}")
    cfg = RunConfig.from_dict(saved)
    try:
        get_spec(cfg.env)
    except ValueError as e:
        raise ExportError(f"{source}: the checkpoint's env: {one_line(e)}") from None
    if cfg.backbone is None:  # runs before the field existed were experiment.py's
        cfg = replace(cfg, backbone="mlp" if cfg.model_type == "bc" else "gpt2")
    return cfg


def _through_folder_names(weights: dict, folder: FolderConfig, source: str) -> torch.nn.Module:
    """The folder's model holding ``weights`` (a checkpoint's own names), passed through the
    folder's naming (transformers' for the GPT-2 DT) and back, the path every load takes: a
    checkpoint that exports also loads."""
    from ..models.pretrained import folder_state_dict

    model = build_from_config(folder)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise ExportError(
            f"{source}: the weights do not fit the model its config describes ({one_line(e, 160)})"
        ) from None
    state = folder_state_dict(model, folder.architecture)
    fresh = build_from_config(folder)
    load_state(fresh, state, source, transformers_names=folder.architecture == GPT2_DT)
    return fresh.eval()


def read_run(run_dir: str | Path, which: str) -> dict:
    """The run's checkpoint, read as evaluate.py reads it (``weights_only=True``)."""
    from .checkpoint import CheckpointError
    from .evaluate_checkpoint import load_run_checkpoint

    if not Path(run_dir).is_dir():
        raise ExportError(f"no run folder at {run_dir}: give the --out_dir of an experiment.py run")
    try:
        ckpt = load_run_checkpoint(run_dir, which)[1]
    except CheckpointError as e:  # its fixes name evaluate.py's flags; export takes the same
        raise ExportError(str(e).replace("evaluate --which", "export --which")) from None
    return ckpt


# ---------------------------------------------------------------------------------------------
# Evaluation of a folder's model, and the model card
# ---------------------------------------------------------------------------------------------


def evaluate_folder(
    model: torch.nn.Module,
    folder: FolderConfig,
    num_episodes: int,
    seed: int,
    eval_envs: int,
    targets: list[float | str] | None = None,
    recorder=None,
    return_kappa: float | None = None,
) -> dict:
    """Play the folder's model through training's evaluator (same seeds, same numbers as
    evaluate.py on the run's checkpoint, on the CPU); what config.json's ``evaluation`` holds.
    ``recorder`` (evaluation/video.py's EpisodeRecorder) watches the first target's first
    episode. A target ``auto`` draws each step's return from the model's return head, tilted by
    ``return_kappa`` (default: the folder's, the run's --return_kappa)."""
    from .evaluation import episode_seeds, evaluate_returns

    a = folder.acting
    targets = targets or a.targets
    kappa = a.return_kappa if return_kappa is None else return_kappa
    check_auto(targets, kappa, getattr(folder.model, "return_bins", 0))
    dataset = folder.provenance.get("dataset") or ""
    ref = reference_scores(a.env, dataset) if dataset else None
    model_type = "dt" if a.conditioned else "bc"
    cfg = RunConfig(
        env=a.env, mode=a.mode, eval_envs=eval_envs, model_type=model_type, return_kappa=kappa
    )
    seeds = episode_seeds(seed, num_episodes)
    mean, std = np.asarray(a.state_mean, np.float32), np.asarray(a.state_std, np.float32)
    device = next(model.parameters()).device
    autocast = (
        torch.autocast(device.type, dtype=torch.bfloat16)
        if a.dtype == "bf16"
        else contextlib.nullcontext()
    )
    results, played = [], {}
    start = time.perf_counter()
    for target in targets:
        key = target if a.conditioned else None  # BC never sees the target: play once
        if key not in played:
            watch = recorder if not played else None
            with autocast:
                played[key] = evaluate_returns(
                    cfg, model, (mean, std), target, seeds, on_step=watch
                )
        results.append(_target_row(target, *played[key], ref))
    report = {
        "episodes_per_target": num_episodes,
        "seed": seed,
        "episode_seeds": seeds,
        "eval_envs": eval_envs,
        "device": str(device),
        "dtype": a.dtype,
        "reference_scores": list(ref) if ref is not None else None,
        "seconds": round(time.perf_counter() - start, 2),
        "targets": results,
    }
    if any(map(is_auto, targets)):
        report["return_kappa"] = kappa
    return report


def _target_row(target: float | str, returns, lengths, ref) -> dict:
    """One target's entry of a folder's evaluation: its summary and the episodes' numbers."""
    summary = summarize_returns(target, returns, lengths, ref)
    prefix = len(target_key(target)) + 1
    return {
        "target": target if is_auto(target) else float(target),
        **{k[prefix:]: v for k, v in summary.items()},
        "returns": [float(r) for r in returns],
        "lengths": [int(n) for n in lengths],
    }


def check_auto(targets: list[float | str], kappa: float, return_bins: int) -> None:
    """What evaluate.py checks on a run: auto needs the return head, kappa is >= 0."""
    if not (kappa >= 0):  # NaN too
        raise ConfigError(f"--return_kappa must be >= 0, got {kappa}")
    if any(map(is_auto, targets)) and not return_bins:
        raise ConfigError(
            "target auto samples returns from a return head this model lacks (trained without "
            "--return_bins): give numbers to --target_return"
        )


def play_folder(
    model: torch.nn.Module,
    folder: FolderConfig | MultiTaskFolderConfig,
    num_episodes: int,
    seed: int,
    eval_envs: int,
) -> dict:
    """:func:`evaluate_folder`; for a multi-task folder, every task's (run/export_multitask.py)."""
    if isinstance(folder, MultiTaskFolderConfig):
        return evaluate_multitask_folder(
            model, folder, num_episodes, seed, eval_envs, evaluate_folder
        )
    return evaluate_folder(model, folder, num_episodes, seed, eval_envs)


def model_card(folder: FolderConfig, name: str, reproduce: str | None) -> str:
    """README.md: Hub metadata (YAML front matter), what the model is, its measured returns."""
    if isinstance(folder, MultiTaskFolderConfig):
        return multitask_model_card(folder, name, reproduce)
    a, p = folder.acting, folder.provenance
    arch_name = {
        GPT2_DT: "Decision Transformer (GPT-2)",
        QWEN3_DT: "Decision Transformer (Qwen3-style backbone)",
        MLP_BC: "MLP behaviour cloning",
    }[folder.architecture]
    dataset = p.get("dataset") or "unknown"
    hf_ok = transformers_compatible(folder)
    lines = _card_front_matter(folder, name, dataset, hf_ok)
    lines += ["", f"# {name}", ""]
    lines.append(
        f"A {arch_name} trained offline on `{a.env}` / `{dataset}` ({a.gym_id}), exported from "
        f"a run's `{p.get('checkpoint', '?')}` checkpoint (iteration {p.get('iteration')})."
    )
    lines += ["", "## Evaluation", ""]
    lines += _card_evaluation(folder.evaluation, reproduce)
    lines += _card_use(a, name, hf_ok)
    lines += auto_use(name, getattr(folder.model, "return_bins", 0), a.return_kappa)
    flags = p.get("run_config") or {}
    if flags:
        keep = ("dataset", "K", "embed_dim", "n_layer", "n_head", "max_iters",
                "num_steps_per_iter", "batch_size", "learning_rate", "seed", "policy")  # fmt: skip
        shown_flags = ", ".join(f"{k}={flags[k]}" for k in keep if k in flags)
        lines += ["", "## Training", "", f"Flags (all in config.json's provenance): {shown_flags}."]
    versions = p.get("versions") or {}
    if versions:
        by = versions.get("recorded_by", "run")
        said = "Trained on" if by == "run" else f"Versions as of the export ({by})"
        lines += ["", f"{said}: {describe_versions(versions)}."]
    return "\n".join(lines) + "\n"


def _card_front_matter(folder: FolderConfig, name: str, dataset: str, hf_ok: bool) -> list[str]:
    """The Hub's metadata: library, tags, dataset and the measured returns (model-index)."""
    a, ev = folder.acting, folder.evaluation
    tags = ["reinforcement-learning", "offline-reinforcement-learning", "decision-transformer",
            "gymnasium", "mujoco", a.gym_id, folder.architecture]  # fmt: skip
    lines = ["---", f"library_name: {'transformers' if hf_ok else 'pytorch'}", "tags:"]
    lines += [f"- {t}" for t in tags]
    if dataset.startswith("minari:"):
        lines += ["datasets:", f"- {dataset.removeprefix('minari:')}"]
    if ev:
        lines += [
            "model-index:",
            f"- name: {name}",
            "  results:",
            "  - task:",
            "      type: reinforcement-learning",
            "      name: reinforcement-learning",
            "    dataset:",
            f"      type: {a.gym_id}",
            f"      name: {a.gym_id} ({dataset})",
            "    metrics:",
        ]
        lines += card_metrics(ev["targets"])
    return lines + ["---"]


def _card_evaluation(ev: dict | None, reproduce: str | None) -> list[str]:
    """The Evaluation section's body: a table per target and how it was measured."""
    if not ev:
        return [
            "Not evaluated at export: `python evaluate_pretrained.py FOLDER --num_eval_episodes N` "
            "measures it."
        ]
    has_score = ev.get("reference_scores") is not None
    head = "| target | return (mean ± std) | length (mean ± std) | episodes |"
    lines = [head + (" normalized score |" if has_score else "")]
    lines.append("|---:|---:|---:|---:|" + ("---:|" if has_score else ""))
    for r in ev["targets"]:
        row = (
            f"| {format_target(r['target'])} | {r['return_mean']:.1f} ± {r['return_std']:.1f} | "
            f"{r['length_mean']:.1f} ± {r['length_std']:.1f} | {ev['episodes_per_target']} |"
        )
        if has_score:
            row += f" {r.get('normalized_score', float('nan')):.1f} |"
        lines.append(row)
    seeds = ev["episode_seeds"]
    shown = f"{seeds[0]}..{seeds[-1]}" if len(seeds) > 1 else str(seeds[0])
    lines += [
        "",
        f"{ev['episodes_per_target']} episodes per target, env seeds {shown} (evaluation "
        f"seed {ev['seed']}), {ev['eval_envs']} envs at once, on {ev['device']}"
        + (f", measured by {ev['measured_by']}" if ev.get("measured_by") else "")
        + (" under bf16 autocast, as the run evaluated." if ev.get("dtype") == "bf16" else ".")
        + (
            " Normalized score: 100 x (return - lo) / (hi - lo), with the reference returns "
            f"lo = {ev['reference_scores'][0]:g} and hi = {ev['reference_scores'][1]:g}."
            if has_score
            else " No reference returns for this env: no normalized score."
        )
        + auto_sentence(ev),
    ]
    if reproduce:
        lines += ["", "Reproduce (from `gym/`):", "", "```bash", reproduce, "```"]
    return lines


def _card_use(a: ActingConfig, name: str, hf_ok: bool) -> list[str]:
    """The Use section: loading the folder, what the model expects, transformers' view."""
    lines = [
        "",
        "## Use",
        "",
        "```python",
        "from decision_transformer.models.pretrained import from_pretrained",
        "",
        f'model = from_pretrained("{name}")  # a local folder or a Hub repo id',
        "acting = model.pretrained_config.acting  # state mean/std, return scale, action box, ...",
        "```",
        "",
        f"Observations are normalized by `acting.state_mean`/`state_std`; returns-to-go are "
        f"divided by {a.return_scale:g}; the model sees the last {a.context_length} steps "
        f"({a.attention} attention); timesteps stay below {a.max_ep_len}. Actions: "
        f"`{a.action_mapping}`.",
    ]
    if hf_ok:
        lines += [
            "",
            "It also loads with transformers, whose head stops at tanh (actions in [-1, 1]); "
            "map them onto the env's box with `unit_to_box` (or the formula above):",
            "",
            "```python",
            "from transformers import DecisionTransformerModel",
            "",
            f'hf = DecisionTransformerModel.from_pretrained("{name}")',
            "```",
        ]
    return lines


def transformers_compatible(folder: FolderConfig) -> bool:
    """transformers' DecisionTransformerModel plays the GPT-2 DT with the deterministic head in
    full attention, with a timestep embedding, on all K steps (it has no stochastic head, no
    banded mask and no shorter acting context)."""
    m = folder.model
    return (
        folder.architecture == GPT2_DT
        and m.policy == "deterministic"
        and m.attention == "full"
        and m.action_tanh
        and m.timestep_embedding  # transformers' DT always adds one
        and m.eval_context in (None, m.context_length)
        and not m.return_bins  # its tokens are (s, R, a) and it has a head transformers lacks
    )


# ---------------------------------------------------------------------------------------------
# Writing a folder: all or nothing
# ---------------------------------------------------------------------------------------------


def check_out_dir(out: str | Path) -> Path:
    out = Path(out)
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise ExportError(f"--out {out} already exists and is not an empty folder: pick a new one")
    parent = out.resolve().parent
    if not parent.is_dir():
        raise ExportError(f"--out {out}: its parent folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise ExportError(f"--out {out}: cannot write in {parent}")
    return out


@dataclass(frozen=True)
class ExportEvaluation:
    """How an export evaluates the folder it writes (0 episodes: not at all), and the command
    its model card gives to measure the same again."""

    num_episodes: int = 0
    seed: int = 0
    eval_envs: int = 16

    def check(self) -> None:
        if self.num_episodes < 0:
            raise ConfigError(f"--num_eval_episodes must be >= 0, got {self.num_episodes}")
        if self.seed < 0:
            raise ConfigError(f"--seed must be >= 0, got {self.seed}")
        if self.eval_envs <= 0:
            raise ConfigError(f"--eval_envs must be positive, got {self.eval_envs}")

    def command(self, folder_name: str) -> str:
        return (
            f"python evaluate_pretrained.py {shlex.quote(folder_name)} --num_eval_episodes "
            f"{self.num_episodes} --seed {self.seed} --eval_envs {self.eval_envs}"
        )


def write_folder(
    model: torch.nn.Module,
    folder: FolderConfig,
    out: Path,
    evaluate: ExportEvaluation,
    measured: dict | None = None,
    replace_old: bool = False,
) -> Path:
    """Save into a temporary sibling of ``out``, reload from there, evaluate the reloaded model
    (so the card's numbers are the folder's), then rename into place. ``measured``: numbers
    already measured on these weights (the run's own), recorded instead of playing again.
    ``replace_old``: an existing ``out`` (a run's earlier auto-export) is swapped out whole."""
    tmp = Path(tempfile.mkdtemp(dir=out.resolve().parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        save_pretrained(model, folder, tmp)
        loaded = from_pretrained(tmp)
        if measured is not None:
            folder.evaluation = measured
        elif evaluate.num_episodes > 0:
            folder.evaluation = play_folder(
                loaded, folder, evaluate.num_episodes, evaluate.seed, evaluate.eval_envs
            )
        if folder.evaluation is not None:
            (tmp / CONFIG_NAME).write_text(json.dumps(folder.to_dict(), indent=2) + "\n")
        card = model_card(folder, out.name, evaluate.command(out.name))
        (tmp / CARD_NAME).write_text(card)
        old = None
        if out.exists() and replace_old and any(out.iterdir()):
            old = Path(tempfile.mkdtemp(dir=out.resolve().parent, prefix=f".{out.name}.old."))
            os.replace(out, old / out.name)
        elif out.exists():
            out.rmdir()  # empty, checked before any work
        os.replace(tmp, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def evaluation_from_metrics(run_dir: Path, ckpt: dict, folder: FolderConfig) -> dict | None:
    """The run's own evaluation of the checkpoint's weights (its metrics.jsonl row of the
    checkpoint's iteration), in the form :func:`evaluate_folder` gives; None when that
    iteration was not evaluated. The same seeds and evaluator: evaluating the folder again
    gives these numbers (bit for bit on the CPU)."""
    from .evaluation import episode_seeds
    from .metrics import read_metrics

    try:
        rows = read_metrics(run_dir)
    except (OSError, ValueError, KeyError):
        return None
    row = next((r for r in rows if r.get("iteration") == ckpt.get("iteration")), None)
    flags = folder.provenance.get("run_config") or {}
    episodes = flags.get("num_eval_episodes") or 0
    if row is None or episodes <= 0:
        return None
    targets = []
    for target in folder.acting.targets:
        prefix = f"evaluation/{target_key(target)}_"
        if f"{prefix}return_mean" not in row:
            return None
        numbers = ("return_mean", "return_std", "length_mean", "length_std", "normalized_score")
        found = {k: row[prefix + k] for k in numbers if prefix + k in row}
        targets.append({"target": target if is_auto(target) else float(target), **found})
    ref = reference_scores(folder.acting.env, folder.provenance.get("dataset") or "")
    seed = flags.get("seed", 0)
    measured = {
        "measured_by": f"the run, at iteration {row['iteration']} (metrics.jsonl)",
        "episodes_per_target": episodes,
        "seed": seed,
        "episode_seeds": episode_seeds(seed, episodes),
        "eval_envs": flags.get("eval_envs", 1),
        "device": flags.get("device", "cpu"),
        "dtype": folder.acting.dtype,
        "reference_scores": list(ref) if ref is not None else None,
        "targets": targets,
    }
    if any(map(is_auto, folder.acting.targets)):
        measured["return_kappa"] = folder.acting.return_kappa
    return measured


def export_run(
    run_dir: str | Path,
    out: str | Path,
    which: str = "last",
    num_eval_episodes: int | None = None,
    seed: int | None = None,
    eval_envs: int | None = None,
    target_return: list[float] | None = None,
    reuse_run_evaluation: bool = False,
) -> Path:
    """``run_dir``'s best or last checkpoint as a model folder at ``out``. With
    ``reuse_run_evaluation`` (the end of training) the card takes the run's own evaluation of
    those weights instead of playing again, and an earlier folder at ``out`` is replaced."""
    out = Path(out) if reuse_run_evaluation else check_out_dir(out)
    ckpt = read_run(run_dir, which)
    versions = run_versions_or_now(run_dir)
    if is_multitask_checkpoint(ckpt):
        if target_return:
            raise ConfigError(
                f"--target_return: {run_dir} is a multi-task run, each task evaluated at its "
                "own targets (the run's): drop --target_return"
            )
        flags = public_flags(RunConfig.from_dict(ckpt["config"]).to_dict())
        model, folder = multitask_folder(ckpt, str(run_dir), which, flags, versions)
    else:
        model, folder = folder_from_checkpoint(ckpt, str(run_dir), which, target_return, versions)
    run_cfg = folder.provenance["run_config"]
    evaluate = ExportEvaluation(
        run_cfg.get("num_eval_episodes", 0) if num_eval_episodes is None else num_eval_episodes,
        run_cfg.get("seed", 0) if seed is None else seed,
        eval_envs or run_cfg.get("eval_envs") or 16,
    )
    evaluate.check()
    if reuse_run_evaluation:
        if isinstance(folder, MultiTaskFolderConfig):
            row = load_metrics_row(Path(run_dir), ckpt.get("iteration"))
            measured = multitask_evaluation_from_metrics(row, folder)
        else:
            measured = evaluation_from_metrics(Path(run_dir), ckpt, folder)
        return write_folder(model, folder, out, evaluate, measured, replace_old=True)
    return write_folder(model, folder, out, evaluate)


# ---------------------------------------------------------------------------------------------
# A transformers DecisionTransformerModel folder -> a model folder
# ---------------------------------------------------------------------------------------------


def import_transformers(
    source: str | Path,
    out: str | Path,
    env: str | None,
    dataset: str | None,
    data_dir: str,
    K: int | None,
    action_box: str = "unit",
    evaluate: ExportEvaluation = ExportEvaluation(),
) -> Path:
    """A folder ``DecisionTransformerModel.save_pretrained`` wrote, with what its config lacks
    supplied by the user: the env, the dataset (for the state mean/std) and K. ``action_box``:
    ``unit`` keeps transformers' convention that the tanh output is the action (what its users
    feed the env); ``env`` maps it onto the env's box, for a model trained on actions rescaled
    to [-1, 1]."""
    from ..data.loading import load_dataset

    spec = _supplied_env(env, dataset, K)
    out = check_out_dir(out)
    evaluate.check()
    src = Path(source)
    if not src.is_dir():
        raise PretrainedError(f"no folder at {source}: give the folder save_pretrained wrote")
    model_cfg, state = read_transformers_folder(src, K)
    low, high = _env_box_fitting(model_cfg, env, source)
    data = load_dataset(data_dir, env, dataset)
    if action_box == "unit":
        low, high = -np.ones(model_cfg.act_dim), np.ones(model_cfg.act_dim)
    acting = ActingConfig(
        env=env,
        gym_id=spec.gym_id,
        state_mean=_floats(data.state_mean),
        state_std=_floats(data.state_std),
        return_scale=float(spec.scale),
        action_low=_floats(low),
        action_high=_floats(high),
        max_ep_len=spec.max_ep_len,
        context_length=K,
        attention="full",
        targets=[float(t) for t in spec.env_targets],
    )
    provenance = {
        "source": "transformers DecisionTransformerModel folder",
        "transformers_folder": src.resolve().name,
        "dataset": dataset,
        "env": env,
        "action_box": action_box,
        "state_statistics": f"from dataset {dataset} ({public_path(data_dir)})",
        "versions": {"recorded_by": "export", **stack_versions()},
    }
    folder = FolderConfig(GPT2_DT, model_cfg, acting, provenance)
    model = build_from_config(folder)
    load_state(model, state, str(src))
    return write_folder(model.eval(), folder, out, evaluate)


def _supplied_env(env: str | None, dataset: str | None, K: int | None):
    """The env's spec, once the flags a transformers folder needs are all given and valid."""
    if env is None or dataset is None or K is None:
        lacking = [f for f, v in (("--env", env), ("--dataset", dataset), ("--K", K)) if v is None]
        raise ConfigError(
            f"a transformers folder has no env, state statistics or context length: pass "
            f"{' '.join(lacking)} (the env and dataset it was trained on, for the state mean/std; "
            "K as trained, 20 in transformers' example)"
        )
    if K <= 0:
        raise ConfigError(f"--K must be positive, got {K}")
    try:
        return get_spec(env)
    except ValueError as e:
        raise ConfigError(one_line(e)) from None


def _env_box_fitting(model_cfg: GPT2DTConfig, env: str, source) -> tuple[np.ndarray, np.ndarray]:
    """``env``'s action box, once the model is known to fit its observations, actions and
    episode length."""
    state_dim, act_dim, low, high = env_facts(env)
    if (model_cfg.state_dim, model_cfg.act_dim) != (state_dim, act_dim):
        raise ExportError(
            f"{source} is a model for {model_cfg.state_dim} observations and {model_cfg.act_dim} "
            f"actions, {env} has {state_dim} and {act_dim}: pass the env it was trained on"
        )
    max_ep_len = get_spec(env).max_ep_len
    if model_cfg.max_ep_len < max_ep_len:
        raise ExportError(
            f"{source} embeds {model_cfg.max_ep_len} timesteps, {env} episodes last "
            f"{max_ep_len}: it cannot play whole episodes here"
        )
    return low, high


# ---------------------------------------------------------------------------------------------
# Command lines: export.py and evaluate_pretrained.py
# ---------------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        formatter_class=HelpFormatter,
        description="Export a run's checkpoint (or a transformers DecisionTransformerModel "
        "folder, with --from_transformers) as a model folder: config.json, model.safetensors "
        "and a README.md model card with the folder's measured evaluation.",
    )
    a = p.add_argument
    a("source", help="a run folder experiment.py wrote (or, with --from_transformers, the "
      "folder DecisionTransformerModel.save_pretrained wrote)")  # fmt: skip
    a("--out", required=True, help="the model folder to write (must not exist, or be empty)")
    a("--which", default="last", choices=["last", "best"],
      help="last: checkpoint.pt; best: best.pt (the run's best iteration)")  # fmt: skip
    a("--num_eval_episodes", type=int, default=None,
      help="episodes per target for the card (default: the run's; 0 skips evaluation)")  # fmt: skip
    a("--seed", type=int, default=None, help="evaluation seed (default: the run's)")
    a("--eval_envs", type=int, default=None, help="episodes played at once (default: the run's)")
    a("--target_return", type=target_return, nargs="+", default=None,
      help="targets recorded in the folder and evaluated; auto: the returns the model picks "
      "itself (a run with --return_bins) (default: the run's)")  # fmt: skip
    g = p.add_argument_group("--from_transformers: what transformers' config lacks")
    g.add_argument("--from_transformers", action="store_true",
                   help="SOURCE is a transformers DecisionTransformerModel folder")  # fmt: skip
    g.add_argument("--env", default=None, help="the env it plays (hopper, humanoid, ...)")
    g.add_argument("--dataset", default=None, help="its training dataset, for the state mean/std")
    g.add_argument("--data_dir", default="data", help="folder holding the dataset file")
    g.add_argument("--K", type=int, default=None, help="the context length it was trained with")
    g.add_argument("--action_box", default="unit", choices=["unit", "env"],
                   help="unit: its tanh output is the action (transformers' convention); env: "
                   "map it onto the env's action box")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    """export.py; a user error is one line on stderr and exit code 2."""
    args = build_parser().parse_args(argv)
    return run_cli(_export, args)


def _export(args: argparse.Namespace) -> int:
    if args.from_transformers:
        evaluate = ExportEvaluation(
            args.num_eval_episodes or 0, args.seed or 0, args.eval_envs or 16
        )
        out = import_transformers(
            args.source, args.out, args.env, args.dataset, args.data_dir, args.K,
            args.action_box, evaluate,
        )  # fmt: skip
    else:
        out = export_run(
            args.source, args.out, args.which, args.num_eval_episodes, args.seed,
            args.eval_envs, args.target_return,
        )  # fmt: skip
    print_summary(out)
    return 0


def print_summary(out: Path) -> None:
    cfg = json.loads((out / CONFIG_NAME).read_text())
    if "tasks" in cfg:  # a multi-task folder
        gym_ids = ", ".join(t["acting"]["gym_id"] for t in cfg["tasks"])
        print(f"{out}: {cfg['architecture']} ({cfg['backbone']}) for {gym_ids}")
        if cfg.get("evaluation"):
            print_task_evaluation(cfg["evaluation"])
        return
    print(f"{out}: {cfg['architecture']} for {cfg['acting']['gym_id']}")
    for r in (cfg.get("evaluation") or {}).get("targets", []):
        shown = format_target(r["target"])
        print(f"  target {shown}: return {r['return_mean']:.1f} ± {r['return_std']:.1f}")


def build_eval_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        formatter_class=HelpFormatter,
        description="Evaluate a model folder (or Hub repo id) through training's evaluator; "
        "prints the returns per target (the model card's numbers for the same flags).",
    )
    a = p.add_argument
    a("model", help="a model folder export.py wrote, or a Hub repo id")
    a("--num_eval_episodes", type=int, default=10, help="episodes per target")
    a("--seed", type=int, default=0, help="evaluation seed")
    a("--eval_envs", type=int, default=16, help="episodes played at once")
    a("--target_return", type=target_return, nargs="+", default=None,
      help="returns to condition on; auto: the returns the model picks itself each step (a "
      "model with a return head) (default: the folder's targets)")  # fmt: skip
    a("--return_kappa", type=finite_float, default=None,
      help="with target auto: the tilt toward high returns (default: the folder's, its run's "
      "--return_kappa)")  # fmt: skip
    a("--json", default=None, metavar="PATH", help="also write the results here")
    a("--video", default=None, metavar="PATH",
      help="render the first episode to PATH (.mp4/.gif; default: no video); a multi-task "
      "model: one clip per task, PATH's name + '-<task>' (or --video_task's alone)")  # fmt: skip
    a("--video_task", default=None, metavar="NAME",
      help="a multi-task model: film this task only (e.g. hopper-medium)")  # fmt: skip
    a("--video_quality", default="auto", choices=["auto", "fast", "full"],
      help="fast drops multisampling, shadows, reflections; auto: fast on software GL")  # fmt: skip
    a("--device", default="cpu", help="cpu, cuda, auto, ...")
    return p


def evaluate_main(argv: list[str] | None = None) -> int:
    """evaluate_pretrained.py; a user error is one line on stderr and exit code 2."""
    return run_cli(_evaluate, build_eval_parser().parse_args(argv))


def _evaluate(args: argparse.Namespace) -> int:
    from .config import resolve_device
    from .evaluate_checkpoint import check_video_arg
    from .paths import check_output_file

    ExportEvaluation(args.num_eval_episodes, args.seed, args.eval_envs).check()
    if args.num_eval_episodes == 0:
        raise ConfigError("--num_eval_episodes must be positive to evaluate")
    if args.return_kappa is not None and args.return_kappa < 0:
        raise ConfigError(f"--return_kappa must be >= 0, got {args.return_kappa}")
    if args.video is not None:
        check_video_arg(args.video)
    if args.json is not None:
        check_output_file(args.json, "--json", make_parent=True)
    device = resolve_device(args.device)
    model = from_pretrained(args.model, device=device)
    folder = model.pretrained_config
    if isinstance(folder, MultiTaskFolderConfig):
        return _evaluate_tasks(args, model, folder)
    if args.video_task is not None:
        raise ConfigError("--video_task picks a task of a multi-task model: drop it here")
    recorder = None
    if args.video is not None:
        from ..evaluation.video import EpisodeRecorder

        recorder = EpisodeRecorder(seed=args.seed * 100_000)  # episode_seeds' first
    report = evaluate_folder(
        model, folder, args.num_eval_episodes, args.seed, args.eval_envs, args.target_return,
        recorder, args.return_kappa,
    )  # fmt: skip
    for r in report["targets"]:
        print(
            f"target {format_target(r['target'])}: return {r['return_mean']:.4f} ± "
            f"{r['return_std']:.4f}, length {r['length_mean']:.1f}"
        )
    if recorder is not None:
        from ..evaluation.video import Caption, render_episode

        a = folder.acting
        target = report["targets"][0]["target"] if a.conditioned else None
        title = f"{a.env} {folder.architecture}"
        title += f"  target {format_target(target)}" if target else ""
        shown = None if is_auto(target) else target  # auto: no return-to-go to count down
        caption = Caption(title, shown, a.mode, a.max_ep_len)
        report["video"] = render_episode(
            a.env, recorder, args.video, caption, quality=args.video_quality
        )
        print(f"video: {args.video}, {report['video']['frames']} frames")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"results: {args.json}")
    return 0


def _evaluate_tasks(args: argparse.Namespace, model, folder: MultiTaskFolderConfig) -> int:
    """evaluate_pretrained.py on a multi-task folder: every task at its own targets (or
    --target_return, refused: one list cannot fit every body), a clip per filmed task."""
    from ..evaluation.video import Caption, EpisodeRecorder, render_episode
    from .evaluate_checkpoint import check_video_arg
    from .multitask import task_video_paths

    if args.target_return:
        raise ConfigError(
            "--target_return is one list for one task; a multi-task model plays each task at "
            "its own targets: drop --target_return"
        )
    videos = task_video_paths(args.video, folder.task_names, args.video_task)
    for path in videos.values():
        check_video_arg(str(path))
    recorders = {i: EpisodeRecorder(seed=args.seed * 100_000) for i in videos}  # the 1st seed
    report = evaluate_multitask_folder(
        model, folder, args.num_eval_episodes, args.seed, args.eval_envs, evaluate_folder,
        recorders, args.return_kappa,
    )  # fmt: skip
    print_task_evaluation(report)
    report["videos"] = {}
    for i, path in videos.items():
        t = folder.tasks[i]
        target = t.acting.targets[0]
        title = f"{t.name} {MULTITASK_DT}  target {format_target(target)}"
        shown = None if is_auto(target) else target  # auto: no return-to-go to count down
        caption = Caption(title, shown, t.acting.mode, t.acting.max_ep_len)
        report["videos"][t.name] = render_episode(
            t.acting.env, recorders[i], path, caption, quality=args.video_quality
        )
        print(f"video of {t.name}: {path}, {report['videos'][t.name]['frames']} frames")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        print(f"results: {args.json}")
    return 0


def evaluate_py_argv(argv: list[str]) -> list[str] | None:
    """evaluate.py's flags for evaluate_pretrained.py when ``--checkpoint`` names a model folder
    or Hub repo id; None when it names a run (evaluate.py's own path)."""
    if "--checkpoint" not in argv[:-1]:
        return None
    i = argv.index("--checkpoint")
    source = argv[i + 1]
    if not is_model_source(source):
        return None
    return [source, *argv[:i], *argv[i + 2 :]]
