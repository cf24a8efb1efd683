"""Atari DTs (GPT or Qwen3 backbone, reward-conditioned or naive) as model folders, the gym half's
format (decision_transformer/models/pretrained.py): config.json, model.safetensors, README.md.

    python export_atari.py runs/RUN --out models/breakout-dt [--eval_episodes N]
    python evaluate_atari.py --checkpoint models/breakout-dt        # or a Hub repo id

config.json holds ``architecture: atari_dt``, the model's :class:`AtariDTConfig` under ``model``,
``acting`` (game, the preprocessing, target, step cap, how actions are drawn) and the run's flags
as provenance. :func:`from_pretrained_atari` needs the model code only; evaluating imports the run
script's evaluation, so the numbers are training's.

A multi-game run's model (``run_dt_atari.py --games``, multigame.py) is the same network with a
head over ALE's full action set; its ``acting`` holds ``games`` instead of ``game`` and
``target_return``: per game, in the model's order, its name, ``action_set`` (its minimal set as
full-set ids), ``target_return`` in game points and ``rtg_scale``. The rest of ``acting``
(preprocessing, step cap, dtype, ...) is shared by the games. Same format name and version:
a reader of single-game folders only refuses it in one line (it lacks ``acting.game``).
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
# A multi-game run's (run_dt_atari.evaluate_saved_games): its games' specs replace the game's.
GAMES_ACTING_KEYS = ("games", "game_specs", "model_type", "eval_max_steps", "dtype")
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
# A multi-game model's: the single-game environment, the full-set head restricted to the game.
GAMES_ACTION_RULE = (
    "the logits at the last state token restricted to the game's action_set (full-set ids), "
    "sampled from their softmax with a torch.Generator per episode seeded with the episode's "
    "env seed; index j is played as the game's action j, and the model sees action_set[j]"
)
GAMES_RTG_RULE = (
    "game points divided by the game's rtg_scale: start at target_return / rtg_scale, fall by "
    "each raw reward / rtg_scale"
)
# Per game in acting.games: what evaluating that game needs.
GAME_KEYS = ("game", "action_set", "target_return", "rtg_scale")


def folder_dict(
    run_cfg: dict, model_cfg: AtariDTConfig, step: int | None, versions: dict | None = None
) -> dict:
    """config.json of a run's model (one game or several); ``versions``: the stack it trained
    on (provenance.run_versions_or_now)."""
    naive = run_cfg["model_type"] == "naive"
    acting = {
        "game": run_cfg.get("game"),
        "preprocessing": PREPROCESSING,
        "conditioned": not naive,
        "target_return": None if naive else float(run_cfg.get("eval_target", 0.0)),
        "returns_to_go": "raw game reward: start at the target, fall by each reward",
        "max_steps": run_cfg.get("eval_max_steps"),
        "context_length": model_cfg.context_length,
        "actions": ACTION_RULE,
        "dtype": run_cfg.get("dtype", "fp32"),
    }
    if run_cfg.get("games"):
        games = [
            {"game": game, "action_set": [int(i) for i in spec["action_set"]],
             "target_return": None if naive else float(spec["target"]),
             "rtg_scale": float(spec["rtg_scale"])}
            for game, spec in run_cfg["game_specs"].items()
        ]  # fmt: skip
        shared = {k: v for k, v in acting.items() if k not in ("game", "target_return")}
        acting = {"games": games, **shared, "returns_to_go": GAMES_RTG_RULE,
                  "actions": GAMES_ACTION_RULE}  # fmt: skip
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "architecture": ARCHITECTURE,
        "model": asdict(model_cfg),
        "acting": acting,
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
    one = ("game", "target_return") if not isinstance(acting, dict) or "games" not in acting else ()
    lacking = [k for k in (*one, "conditioned", "context_length")
               if not isinstance(acting, dict) or k not in acting]  # fmt: skip
    if lacking:
        raise PretrainedError(f"{path} lacks what acting needs: {', '.join(lacking)}")
    if not one:
        check_games(acting["games"], path)
    return cfg


def check_games(games, path: Path) -> None:
    """acting.games of a multi-game folder: every game with what playing it needs."""
    if not isinstance(games, list) or not games:
        raise PretrainedError(f"{path}: acting.games lists no game; re-export the model")
    names = []
    for i, g in enumerate(games):
        g = g if isinstance(g, dict) else {}
        name = g.get("game") if isinstance(g.get("game"), str) else f"number {i + 1}"
        lacking = [k for k in GAME_KEYS if k not in g]
        ids = g.get("action_set")
        scale = g.get("rtg_scale")
        if lacking or not isinstance(ids, list) or not ids or not isinstance(scale, (int, float)):
            what = ", ".join(lacking) or "a list action_set and a number rtg_scale"
            raise PretrainedError(f"{path}: game {name} lacks {what}; re-export the model")
        names.append(name)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise PretrainedError(f"{path}: acting.games lists {', '.join(twice)} twice")


def is_multigame(folder_cfg: dict) -> bool:
    return "games" in folder_cfg["acting"]


def game_specs(folder_cfg: dict) -> dict[str, dict]:
    """A multi-game folder's games as the run's ``game_specs`` (multigame.GameSpec's fields),
    in the model's order: what multigame.evaluate_games plays."""
    return {
        g["game"]: {"action_set": list(g["action_set"]), "target": g["target_return"] or 0.0,
                    "rtg_scale": g["rtg_scale"]}
        for g in folder_cfg["acting"]["games"]
    }  # fmt: skip


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
    n = model.cfg.n_actions
    for g in cfg["acting"].get("games", []):
        if not all(isinstance(i, int) and 0 <= i < n for i in g["action_set"]):
            raise PretrainedError(
                f"{directory}/config.json: {g['game']}'s action_set {g['action_set']} is not "
                f"ids of the model's {n} actions; re-export the model"
            )
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
    """The run config evaluate_model (one game) or multigame.evaluate_games (a multi-game
    folder: ``games`` and ``game_specs``) reads, from the folder's acting and provenance."""
    run = dict(folder_cfg.get("provenance", {}).get("run_config") or {})
    a = folder_cfg["acting"]
    if is_multigame(folder_cfg):
        if target is not None:
            raise PretrainedError("--target_return: this folder is a multi-game model with one "
                                  "target per game; evaluate it at its own targets")  # fmt: skip
        specs = game_specs(folder_cfg)
        game = {"games": list(specs), "game_specs": specs}
    else:
        tgt = float(target if target is not None else (a["target_return"] or 0.0))
        game = {"game": a["game"], "eval_target": tgt}
    cfg = {
        **game,
        "model_type": "reward_conditioned" if a["conditioned"] else "naive",
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
    lacking = [k for k in (GAMES_ACTING_KEYS if run_cfg.get("games") else ACTING_KEYS)
               if k not in run_cfg]  # fmt: skip
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
    from multigame import games_from_row
    from results import summarize

    games = run_cfg.get("games")
    key = f"eval/{games[-1]}/returns" if games else "eval/returns"
    try:
        rows = [r for r in read_metrics(run_dir) if key in r]
    except (OSError, ValueError):
        return None
    if not rows or rows[-1].get("step") != step:
        return None
    row, naive = rows[-1], run_cfg["model_type"] == "naive"
    if games:
        results = games_from_row(run_cfg, row)
        if list(results) != games:
            return None
        res = games_evaluation(results)
    else:
        target = None if naive else run_cfg["eval_target"]
        res = summarize(run_cfg["game"], target, row["eval/returns"])
        res["lengths"] = row["eval/lengths"]
    seed = run_cfg.get("seed", 0)
    res.update(seconds=row.get("time/eval_s"), seed=seed, eval_envs=run_cfg.get("eval_envs"),
               max_steps=run_cfg.get("eval_max_steps"),
               episode_seeds=[seed + i for i in range(res["episodes"])])  # fmt: skip
    res["measured_by"] = f"the run, after epoch {row.get('iteration')} (metrics.jsonl)"
    return res


def games_evaluation(results: dict[str, dict]) -> dict:
    """A multi-game folder's evaluation: per game a single-game one (``summarize`` plus
    lengths), the episodes per game and the mean normalized scores over the games."""
    from multigame import mean_scores

    return {"games": results, "episodes": max(r["episodes"] for r in results.values()),
            **{f"mean_{k}": v for k, v in mean_scores(results).items()},
            "seconds": sum(r.get("seconds") or 0.0 for r in results.values())}  # fmt: skip


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
    """The folder's evaluation as its run's: one game (``trace``: its (episode, step, action)
    rows), or every game of ``cfg['game_specs']`` (``trace`` unused)."""
    from run_dt_atari import AUTOCAST, evaluate_model

    device = next(model.parameters()).device
    if cfg.get("game_specs"):
        from multigame import evaluate_games

        res = games_evaluation(evaluate_games(model, cfg, device, AUTOCAST[cfg["dtype"]]))
    else:
        res = evaluate_model(model, cfg, device, trace=trace)
    res.update(seed=cfg["seed"], eval_envs=cfg["eval_envs"], max_steps=cfg["eval_max_steps"])
    res["episode_seeds"] = [cfg["seed"] + i for i in range(res["episodes"])]
    return res


def model_card(folder: dict, name: str) -> str:
    """README.md of a folder: Hub metadata, what the model is, its measured evaluation, use."""
    if is_multigame(folder):
        return games_card(folder, name)
    a, ev = folder["acting"], folder.get("evaluation")
    kind = "Decision Transformer" if a["conditioned"] else "behaviour cloning (naive) model"
    metrics = []
    if ev:
        metrics = ["    - type: mean_reward",
                   f"      value: {ev['return_mean']:.2f} +/- {ev['return_std']:.2f}",
                   "      name: mean return"]  # fmt: skip
    lines = front_matter(name, [a["game"]], {a["game"]: metrics} if ev else {})
    lines += ["", f"# {name}", "",
              f"An Atari {kind} ({about_model(folder['model'])}) for {a['game']}, trained "
              "offline on DQN-Replay data (run_dt_atari.py).", "", "## Evaluation", ""]  # fmt: skip
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
            *reproduce(ev["command"]),
        ]
    else:
        lines.append("Not evaluated at export.")
    lines += card_use(folder, name, [])
    return "\n".join(lines) + "\n"


def games_card(folder: dict, name: str) -> str:
    """The card of a multi-game folder: a row per game of its measured evaluation (raw
    return, normalized scores) and their mean, how to play all games or one."""
    from decision_transformer.run.export_multitask import card_metrics
    from multigame import games_table

    a, ev = folder["acting"], folder.get("evaluation")
    games = [g["game"] for g in a["games"]]
    kind = "Decision Transformer" if a["conditioned"] else "behaviour cloning (naive) model"
    measured = (ev or {}).get("games", {})
    metrics = {g: card_metrics([measured[g]], f"{g} ") for g in games if g in measured}
    lines = front_matter(name, ["multi-game", *games], metrics)
    lines += ["", f"# {name}", "",
              f"One Atari {kind} ({about_model(folder['model'])}) over {len(games)} games, "
              "trained offline on DQN-Replay data (run_dt_atari.py --games): one action head over "
              "ALE's full 18-action set, each game played in its own environment through its "
              "action set, return scale and target.", "", "## Games", "",
              "| game | actions (full-set ids) | return scale | target (game points) |",
              "|---|---|---:|---:|"]  # fmt: skip
    for g in a["games"]:
        target = "–" if g["target_return"] is None else f"{g['target_return']:g}"
        ids = " ".join(map(str, g["action_set"]))
        lines.append(f"| {g['game']} | {ids} | {g['rtg_scale']:g} | {target} |")
    lines += ["", "## Evaluation", ""]
    if ev:
        seeds = ev["episode_seeds"]
        lines += [
            games_table(measured),
            "",
            f"{ev['episodes']} episodes per game (env seeds {seeds[0]}..{seeds[-1]}, step cap "
            f"{ev['max_steps']})"
            + (f", measured by {ev['measured_by']}" if ev.get("measured_by") else "")
            + "; a mean normalized score is over all games, shown where every game has one.",
            *reproduce(ev["command"]),
            "",
            f"One game: add `--game {games[-1]}`.",
        ]
    else:
        lines.append(f"Not evaluated at export: `python evaluate_atari.py --checkpoint {name}` "
                     f"plays every game (`--game {games[-1]}`: one).")  # fmt: skip
    use = ["specs = game_specs(model.pretrained_config)  # per game: action_set, target, "
           "rtg_scale"]  # fmt: skip
    return "\n".join(lines + card_use(folder, name, use)) + "\n"


def about_model(m: dict) -> str:
    backbone = {"gpt": "GPT", "qwen3": "Qwen3-style"}.get(m["backbone"], m["backbone"])
    return f"{backbone} backbone, {m['n_layer']} layers, width {m['n_embd']}, context " + str(
        m["context_length"]
    )


def front_matter(name: str, tags: list[str], metrics: dict[str, list[str]]) -> list[str]:
    """The card's Hub metadata: ``metrics``, per game, its model-index entries."""
    lines = ["---", "library_name: pytorch", "tags:", "- reinforcement-learning",
             "- offline-reinforcement-learning", "- decision-transformer", "- atari",
             *[f"- {t}" for t in tags], f"- {ARCHITECTURE}"]  # fmt: skip
    if metrics:
        lines += ["model-index:", f"- name: {name}", "  results:"]
    for game, entries in metrics.items():
        lines += ["  - task:", "      type: reinforcement-learning",
                  "      name: reinforcement-learning", "    dataset:", f"      type: {game}",
                  f"      name: {game}", "    metrics:", *entries]  # fmt: skip
    return lines + ["---"]


def reproduce(command: str) -> list[str]:
    return ["", "Reproduce (from `atari/`):", "", "```bash", command, "```"]


def card_use(folder: dict, name: str, more: list[str]) -> list[str]:
    """The card's Use section (``more``: lines after loading) and the stack it trained on."""
    a = folder["acting"]
    imports = "from_pretrained_atari, game_specs" if more else "from_pretrained_atari"
    lines = ["", "## Use", "", "```python", f"from pretrained_atari import {imports}", "",
             f'model = from_pretrained_atari("{name}")  # a folder or a Hub repo id', *more,
             "```", "", f"Frames: {a['preprocessing']}. Actions: {a['actions']}."]  # fmt: skip
    if more and a["conditioned"]:  # (a naive model is shown none)
        lines[-1] += f" Returns-to-go: {a['returns_to_go']}."
    versions = folder.get("provenance", {}).get("versions") or {}
    if versions:
        by = versions.get("recorded_by", "run")
        said = "Trained on" if by == "run" else f"Versions as of the export ({by})"
        lines += ["", f"{said}: {describe_versions(versions)}."]
    return lines


def evaluate_saved_folder(source: str | Path, device: str, req: EvalRequest) -> int:
    """evaluate_atari.py on a model folder or Hub repo id (run_dt_atari.evaluate_saved): the
    folder's evaluation by default (the run's seeds, episode count, target(s) and step cap),
    every game of a multi-game folder or ``req.game``. Writes JSON only where --json says: the
    folder is left as it is."""
    from multigame import select_game
    from results import eval_table
    from run_dt_atari import evaluate_saved_games

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    model = from_pretrained_atari(source, device)
    folder = model.pretrained_config
    episodes = req.episodes
    if episodes is None and folder.get("evaluation"):
        episodes = folder["evaluation"]["episodes"]
    cfg = eval_config(folder, episodes, req.eval_envs, None, req.target, req.max_steps)
    cfg = select_game(cfg, req.game, source)
    if is_multigame(folder):
        about = {"folder": str(source)}
        return evaluate_saved_games(model, cfg, torch.device(device), req, about, req.json_path)
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
