"""Atari DTs (GPT or Qwen3 backbone, reward-conditioned or naive) as model folders, the gym half's
format (decision_transformer/models/pretrained.py): config.json, model.safetensors, README.md.

    python export_atari.py runs/RUN --out models/breakout-dt [--eval_episodes N]
    python evaluate_atari.py --checkpoint models/breakout-dt        # or a Hub repo id

config.json holds ``architecture: atari_dt``, the model's :class:`AtariDTConfig` under ``model``,
``acting`` (game, the preprocessing, target, step cap, how actions are drawn) and the run's flags
as provenance. :func:`from_pretrained_atari` needs the model code only; evaluating imports the run
script's evaluation, so the numbers are training's.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict, fields
from pathlib import Path
from typing import TYPE_CHECKING

import _paths  # noqa: F401
import torch
from decision_transformer.errors import UserError, one_line
from decision_transformer.models.pretrained import (
    CARD_NAME,
    CONFIG_NAME,
    FORMAT_NAME,
    FORMAT_VERSION,
    WEIGHTS_NAME,
    PretrainedError,
    read_config_json,
    read_weights,
    resolve_folder,
)
from decision_transformer.provenance import describe_versions, public_path, run_versions_or_now
from mingpt.model_atari import AtariDecisionTransformer, AtariDTConfig

if TYPE_CHECKING:
    from run_dt_atari import EvalRequest

ARCHITECTURE = "atari_dt"
# What evaluation reads from a run's config (run_dt_atari.evaluate_model).
ACTING_KEYS = ("game", "model_type", "eval_target", "eval_max_steps", "dtype")
PREPROCESSING = (
    "ALE v5 via atari/atari_env.py: 84x84 grayscale, 4 emulator frames per step (last two "
    "max-pooled), no sticky actions, up to 30 no-op starts, minimal action set, episode ends at "
    "game over; 4 frames stacked, zeros before the first"
)
# Run flags holding local paths: only their last part travels (provenance.public_path).
PATH_FLAGS = ("out_dir", "data_dir_prefix", "cache_dir")
ACTION_RULE = (
    "sampled from softmax(logits at the last state token) with a torch.Generator per episode "
    "seeded with the episode's env seed"
)


def folder_dict(
    run_cfg: dict, model_cfg: AtariDTConfig, step: int | None, versions: dict | None = None
) -> dict:
    """config.json of a run's model; ``versions``: the stack it trained on
    (provenance.run_versions_or_now)."""
    naive = run_cfg["model_type"] == "naive"
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "architecture": ARCHITECTURE,
        "model": asdict(model_cfg),
        "acting": {
            "game": run_cfg["game"],
            "preprocessing": PREPROCESSING,
            "conditioned": not naive,
            "target_return": None if naive else float(run_cfg["eval_target"]),
            "returns_to_go": "raw game reward: start at the target, fall by each reward",
            "max_steps": run_cfg.get("eval_max_steps"),
            "context_length": model_cfg.context_length,
            "actions": ACTION_RULE,
            "dtype": run_cfg.get("dtype", "fp32"),
        },
        "provenance": {
            "source": "run_dt_atari.py checkpoint",
            "step": step,
            "run_config": {k: public_path(v) if k in PATH_FLAGS else v for k, v in run_cfg.items()},
            "versions": versions,
        },
    }


def read_folder_config(directory: Path) -> dict:
    cfg, path = read_config_json(directory)
    if not isinstance(cfg, dict) or cfg.get("format") != FORMAT_NAME:
        raise PretrainedError(f"{path} is not a model folder written by export_atari.py")
    if not isinstance(cfg.get("format_version"), int) or cfg["format_version"] > FORMAT_VERSION:
        raise PretrainedError(
            f"{path} has format version {cfg.get('format_version')}, newer than this code reads "
            f"({FORMAT_VERSION}): update this project to load it"
        )
    if cfg.get("architecture") != ARCHITECTURE:
        raise PretrainedError(
            f"{path} holds a {cfg.get('architecture')} model, not an Atari DT: load it with "
            "decision_transformer.models.pretrained.from_pretrained"
        )
    acting = cfg.get("acting")
    lacking = [k for k in ("game", "conditioned", "target_return", "context_length")
               if not isinstance(acting, dict) or k not in acting]  # fmt: skip
    if lacking:
        raise PretrainedError(f"{path} lacks what acting needs: {', '.join(lacking)}")
    return cfg


def from_pretrained_atari(
    path_or_repo_id: str | Path, device: str | torch.device = "cpu", revision: str | None = None
) -> AtariDecisionTransformer:
    """The Atari DT in a folder export_atari.py wrote (or a Hub repo holding one), in eval mode,
    its config.json as ``model.pretrained_config``."""
    directory = resolve_folder(path_or_repo_id, revision)
    cfg = read_folder_config(directory)
    known = {f.name for f in fields(AtariDTConfig)}
    model_fields = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    try:
        model = AtariDecisionTransformer(
            AtariDTConfig(**{k: v for k, v in model_fields.items() if k in known})
        )
    except (TypeError, ValueError) as e:
        raise PretrainedError(
            f"cannot build the Atari DT {directory}/config.json describes ({one_line(e, 120)})"
        ) from None
    state = read_weights(directory)
    own = model.state_dict()
    bad = sorted(own.keys() ^ state.keys()) + [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if bad:
        raise PretrainedError(
            f"the weights in {directory} do not fit the model its config.json describes: "
            f"{', '.join(bad[:3])}{'...' if len(bad) > 3 else ''}"
        )
    model.load_state_dict(state)
    model.pretrained_config = cfg
    return model.to(device).eval()


def eval_config(folder_cfg: dict, episodes: int | None, eval_envs: int | None,
                seed: int | None, target: float | None, max_steps: int | None) -> dict:  # fmt: skip
    """The run config evaluate_model reads, from the folder's acting and provenance."""
    run = dict(folder_cfg.get("provenance", {}).get("run_config") or {})
    a = folder_cfg["acting"]
    cfg = {
        "game": a["game"],
        "model_type": "reward_conditioned" if a["conditioned"] else "naive",
        "eval_target": float(target if target is not None else (a["target_return"] or 0.0)),
        "eval_max_steps": max_steps if max_steps is not None else a.get("max_steps"),
        "dtype": a.get("dtype", "fp32") if a.get("dtype") in ("fp32", "bf16") else "fp32",
        "eval_episodes": episodes or run.get("eval_episodes") or 10,
        "eval_envs": eval_envs or run.get("eval_envs") or 1,
        "seed": seed if seed is not None else run.get("seed", 0),
    }
    for flag in ("eval_episodes", "eval_envs"):
        if cfg[flag] < 1:
            raise PretrainedError(f"--{flag} must be positive, got {cfg[flag]}")
    return cfg


def export_atari_run(
    run_dir: str | Path,
    out: str | Path,
    episodes: int | None = None,
    eval_envs: int | None = None,
    reuse_run_evaluation: bool = False,
) -> Path:
    """A run_dt_atari.py run folder's checkpoint.pt as a model folder at ``out``: written into a
    temporary sibling, reloaded and evaluated from there (training's evaluation, the run's seeds)
    for the card, then renamed into place. Nothing is written over, except with
    ``reuse_run_evaluation`` (the end of training): then the card takes the run's own last
    evaluation of these weights (metrics.jsonl) instead of playing again, and an earlier folder
    at ``out`` (the run's previous export) is replaced whole."""
    run_dir, out = Path(run_dir), Path(out)
    if not reuse_run_evaluation and out.exists() and not (out.is_dir() and not any(out.iterdir())):
        raise PretrainedError(f"--out {out} already exists and is not an empty folder")
    if not out.resolve().parent.is_dir():
        raise PretrainedError(f"--out {out}: its parent folder does not exist")
    model, run_cfg, step = read_run_model(run_dir)
    folder = folder_dict(run_cfg, model.cfg, step, run_versions_or_now(run_dir))
    measured = run_evaluation(run_dir, run_cfg, step) if reuse_run_evaluation else None
    n = episodes if episodes is not None else run_cfg.get("eval_episodes") or 0
    tmp = Path(tempfile.mkdtemp(dir=out.resolve().parent, prefix=f".{out.name}.", suffix=".tmp"))
    try:
        from safetensors.torch import save_file

        tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        save_file(tensors, str(tmp / WEIGHTS_NAME), metadata={"format": FORMAT_NAME})
        (tmp / CONFIG_NAME).write_text(json.dumps(folder, indent=2) + "\n")
        loaded = from_pretrained_atari(tmp)
        if measured is not None or (n and not reuse_run_evaluation):
            ecfg = eval_config(folder, measured["episodes"] if measured else n, eval_envs, None,
                               None, None)  # fmt: skip
            folder["evaluation"] = measured or evaluate_folder(loaded, ecfg)
            folder["evaluation"]["command"] = (
                f"python evaluate_atari.py --checkpoint {out.name} --eval_episodes "
                f"{ecfg['eval_episodes']} --eval_envs {ecfg['eval_envs']}"
            )
            (tmp / CONFIG_NAME).write_text(json.dumps(folder, indent=2) + "\n")
        (tmp / CARD_NAME).write_text(model_card(folder, out.name))
        swap_into_place(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_run_model(run_dir: Path) -> tuple[AtariDecisionTransformer, dict, int | None]:
    """The model in a run folder's checkpoint.pt (weights checked against its config), the
    run's config and the checkpoint's global step."""
    from decision_transformer.run.checkpoint import read_checkpoint
    from run_dt_atari import build_model

    if not run_dir.is_dir():
        raise PretrainedError(f"no run folder at {run_dir}: give a run_dt_atari.py --out_dir")
    state = read_checkpoint(run_dir / "checkpoint.pt", ("model", "config"),
                            "pass a run folder written by run_dt_atari.py")  # fmt: skip
    run_cfg = dict(state["config"])
    if run_cfg.get("games"):
        raise PretrainedError(
            f"{run_dir} is a multi-game run (--games {' '.join(run_cfg['games'])}): a model "
            "folder holds one game's model for now; evaluate the run with evaluate_atari.py "
            f"--checkpoint {run_dir}"
        )
    lacking = [k for k in ACTING_KEYS if k not in run_cfg]
    if lacking:
        raise PretrainedError(
            f"{run_dir}: the checkpoint's config lacks {', '.join(lacking)}: not an Atari run's"
        )
    weights = state["model"]
    if "head.weight" not in weights or "global_pos_emb" not in weights:
        raise PretrainedError(f"{run_dir}: the checkpoint holds no Atari DT weights")
    try:
        model = build_model(run_cfg, weights["head.weight"].shape[0],
                            weights["global_pos_emb"].shape[1] - 1)  # fmt: skip
        model.load_state_dict(weights)
    except (UserError, RuntimeError, KeyError) as e:
        raise PretrainedError(
            f"{run_dir}: the weights do not fit the model its config describes ({one_line(e, 140)})"
        ) from None
    return model, run_cfg, state.get("trainer", {}).get("global_step")


def run_evaluation(run_dir: Path, run_cfg: dict, step: int | None) -> dict | None:
    """The run's own evaluation of the checkpoint's weights (its last metrics.jsonl row, when
    that row is the checkpoint's step), in the form :func:`evaluate_folder` gives: the same
    seeds and evaluator, so evaluating the folder again gives these numbers. None when the
    run did not evaluate them."""
    from decision_transformer.run.metrics import read_metrics
    from results import summarize

    try:
        rows = [r for r in read_metrics(run_dir) if "eval/returns" in r]
    except (OSError, ValueError):
        return None
    if not rows or rows[-1].get("step") != step:
        return None
    row, naive = rows[-1], run_cfg["model_type"] == "naive"
    res = summarize(run_cfg["game"], None if naive else run_cfg["eval_target"], row["eval/returns"])
    seed = run_cfg.get("seed", 0)
    res.update(lengths=row["eval/lengths"], seconds=row.get("time/eval_s"), seed=seed,
               eval_envs=run_cfg.get("eval_envs"), max_steps=run_cfg.get("eval_max_steps"),
               episode_seeds=[seed + i for i in range(len(row["eval/returns"]))])  # fmt: skip
    res["measured_by"] = f"the run, after epoch {row.get('iteration')} (metrics.jsonl)"
    return res


def swap_into_place(tmp: Path, out: Path) -> None:
    """Rename the finished ``tmp`` to ``out``; an earlier ``out`` is moved aside first and
    removed only once the new folder is in place."""
    old = None
    if out.exists() and any(out.iterdir()):
        old = Path(tempfile.mkdtemp(dir=out.resolve().parent, prefix=f".{out.name}.old."))
        os.replace(out, old / out.name)
    elif out.exists():
        out.rmdir()
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def evaluate_folder(model: AtariDecisionTransformer, cfg: dict, trace: list | None = None) -> dict:
    from run_dt_atari import evaluate_model

    device = next(model.parameters()).device
    res = evaluate_model(model, cfg, device, trace=trace)
    res.update(seed=cfg["seed"], eval_envs=cfg["eval_envs"], max_steps=cfg["eval_max_steps"])
    res["episode_seeds"] = [cfg["seed"] + i for i in range(res["episodes"])]
    return res


def model_card(folder: dict, name: str) -> str:
    a, m, ev = folder["acting"], folder["model"], folder.get("evaluation")
    backbone = {"gpt": "GPT", "qwen3": "Qwen3-style"}.get(m["backbone"], m["backbone"])
    kind = "Decision Transformer" if a["conditioned"] else "behaviour cloning (naive) model"
    lines = ["---", "library_name: pytorch", "tags:", "- reinforcement-learning",
             "- offline-reinforcement-learning", "- decision-transformer", "- atari",
             f"- {a['game']}", f"- {ARCHITECTURE}"]  # fmt: skip
    if ev:
        lines += ["model-index:", f"- name: {name}", "  results:", "  - task:",
                  "      type: reinforcement-learning", "      name: reinforcement-learning",
                  "    dataset:", f"      type: {a['game']}", f"      name: {a['game']}",
                  "    metrics:", "    - type: mean_reward",
                  f"      value: {ev['return_mean']:.2f} +/- {ev['return_std']:.2f}",
                  "      name: mean return"]  # fmt: skip
    lines += ["---", "", f"# {name}", "",
              f"An Atari {kind} ({backbone} backbone, {m['n_layer']} layers, width "
              f"{m['n_embd']}, context {m['context_length']}) for {a['game']}, trained offline "
              "on DQN-Replay data (run_dt_atari.py).", "", "## Evaluation", ""]  # fmt: skip
    if ev:
        target = "" if ev.get("target") is None else f" at target {ev['target']:g}"
        keys = [k for k in ("human_normalized", "gamer_normalized") if k in ev]
        scores = ", ".join(f"{k.replace('_', '-')} {ev[k]:.1f}" for k in keys)
        lines += [
            f"Return{target}: {ev['return_mean']:.1f} ± {ev['return_std']:.1f} over "
            f"{ev['episodes']} episodes (env seeds {ev['episode_seeds'][0]}.."
            f"{ev['episode_seeds'][-1]}, step cap {ev['max_steps']})"
            + (f", measured by {ev['measured_by']}" if ev.get("measured_by") else "")
            + (f"; normalized scores: {scores}." if scores else "."),
            "",
            "Reproduce (from `atari/`):",
            "",
            "```bash",
            ev["command"],
            "```",
        ]
    else:
        lines.append("Not evaluated at export.")
    lines += ["", "## Use", "", "```python", "from pretrained_atari import from_pretrained_atari",
              "", f'model = from_pretrained_atari("{name}")  # a folder or a Hub repo id',
              "```", "", f"Frames: {a['preprocessing']}. Actions: {a['actions']}."]  # fmt: skip
    versions = folder.get("provenance", {}).get("versions") or {}
    if versions:
        by = versions.get("recorded_by", "run")
        said = "Trained on" if by == "run" else f"Versions as of the export ({by})"
        lines += ["", f"{said}: {describe_versions(versions)}."]
    return "\n".join(lines) + "\n"


def evaluate_saved_folder(source: str | Path, device: str, req: EvalRequest) -> int:
    """evaluate_atari.py on a model folder or Hub repo id (run_dt_atari.evaluate_saved): the
    folder's evaluation by default (the run's seeds, episode count, target and step cap). Writes
    JSON only where --json says: the folder is left as it is."""
    from results import eval_table

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = from_pretrained_atari(source, device)
    folder = model.pretrained_config
    episodes = req.episodes
    if episodes is None and folder.get("evaluation"):
        episodes = folder["evaluation"]["episodes"]
    cfg = eval_config(folder, episodes, req.eval_envs, None, req.target, req.max_steps)
    trace: list | None = [] if req.video is not None else None
    res = evaluate_folder(model, cfg, trace)
    print(eval_table([dict(res, run=Path(str(source)).name)]))
    if req.video is not None:
        from video_atari import render_traced_episode

        res["video"] = render_traced_episode(cfg, trace, res["returns"], req.video)
    if req.json_path is not None:
        req.json_path.write_text(json.dumps(res, indent=2) + "\n")
        print(f"wrote {req.json_path}")
    return 0


def is_model_folder(path: Path) -> bool:
    """A folder holding a model folder's config.json (rather than a run's checkpoint.pt)."""
    config = path / CONFIG_NAME
    if not (path.is_dir() and config.is_file() and not (path / "checkpoint.pt").exists()):
        return False
    try:
        return json.loads(config.read_text()).get("format") == FORMAT_NAME
    except (OSError, ValueError, AttributeError):
        return False
