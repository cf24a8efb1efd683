"""One Atari DT over several games at once (``run_dt_atari.py --games Breakout Qbert ...``), after
Multi-Game Decision Transformers (Lee et al. 2022): one model, one 84x84x4 input, one action head
over ALE's full 18-action set, no game id (the screens tell the games apart).

- Actions. Each game's replay holds actions of its minimal action set (what the DQN agents and
  the single-game run act in); a game's action ``j`` is full-set id ``action_set[j]``
  (``ale.getMinimalActionSet()``). Training targets are mapped into the full set. At acting time
  the environment stays the single-game one (minimal set, same preprocessing and seeds): the
  logits are restricted to the game's ids, the sampled one is played as the game's own action,
  and its full id is what the model sees next. So the model never plays an action the data
  cannot hold, and the evaluation, its trace and the video replay are the single-game ones.
- Returns. Games score on different scales (Pong's clipped returns lie in -21..21, Breakout's
  in 0..~400), so each game's returns-to-go are divided by its own scale, the largest |return-to-
  go| in its sample (at least 1); each game has its own target in game points (the paper's for
  Breakout, Qbert, Pong, Seaquest, else ``--game_targets GAME=RETURN``), divided by the same
  scale when the model sees it.
- Batches. Every game's windows go into one set, and each epoch is one permutation of it: the
  batches mix games in proportion to their windows, which ``--num_steps`` (per game) makes about
  equal. Resume stays exact (the permutation is drawn from (seed, epoch), as for one game).
- Evaluation. Per game, each with its own target, seeds ``seed + i`` as a single-game run's;
  metrics are keyed ``eval/<Game>/...`` and the mean normalized scores ``eval/mean_...``.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import _paths  # noqa: F401
import numpy as np
import torch
from atari_env import PAPER_TARGETS, check_game, make_env
from create_dataset import AtariDataset, create_dataset, find_buffers
from decision_transformer.errors import ConfigError, DatasetError
from decision_transformer.run.distributed import DistContext
from mingpt.evaluate_atari import evaluate_episodes
from mingpt.trainer_atari import WindowDataset
from results import eval_table, summarize
from torch.utils.data import ConcatDataset, Dataset

FULL_ACTIONS = 18  # ALE's full action set: ids 0 (NOOP) .. 17 (DOWNLEFTFIRE)
# Flags a multi-game run cannot take (the reason and the fix in one line each).
REFUSED = (
    ("game", "--games names every game: drop --game"),
    ("target_return", "--games has one target per game: give --game_targets GAME=RETURN ..."),
    ("seeds", "--seeds with --games is not supported yet: start one run per --seed"),
    ("preset", "--preset sets one game's run.sh settings: with --games give the flags"),
)


def minimal_action_set(game: str) -> list[int]:
    """The game's actions as full-set ids, in the order of its environment's actions."""
    env = make_env(game)
    ids = [int(a.value) for a in env.unwrapped.ale.getMinimalActionSet()]
    env.close()
    return ids


def parse_game_targets(texts: list[str] | None, games: list[str]) -> dict[str, float]:
    """``--game_targets Breakout=90 MsPacman=3000`` -> ``{game: target}``."""
    out: dict[str, float] = {}
    for text in texts or []:
        game, sep, value = text.partition("=")
        try:
            target = float(value) if sep else math.nan
        except ValueError:
            target = math.nan
        if not math.isfinite(target):
            raise ConfigError(f"--game_targets {text}: give GAME=RETURN, e.g. Breakout=90")
        if game not in games:
            raise ConfigError(f"--game_targets {text}: {game} is not one of --games {games}")
        out[game] = target
    return out


def resolve_games(cfg: dict) -> None:
    """--games and --game_targets checked and settled in ``cfg`` before any work."""
    for flag, fix in REFUSED:
        if cfg[flag] is not None:
            raise ConfigError(fix)
    games = list(cfg["games"])
    twice = sorted({g for g in games if games.count(g) > 1})
    if twice:
        raise ConfigError(f"--games lists {', '.join(twice)} twice: list each game once")
    if len(games) < 2:
        raise ConfigError(f"--games {' '.join(games)}: one model over several games needs two "
                          "or more; for one game use --game")  # fmt: skip
    for game in games:  # a game without a ROM: named before its target is asked for
        check_game(game)
    targets = parse_game_targets(cfg["game_targets"], games)
    if cfg["model_type"] == "reward_conditioned" and not cfg["evaluate_only"]:
        lacking = [g for g in games if g not in targets and g not in PAPER_TARGETS]
        if lacking:
            # As for one game: the data's returns are clipped, evaluation's are game points.
            raise ConfigError(
                f"{', '.join(lacking)} ha{'ve' if len(lacking) > 1 else 's'} no paper target; "
                f"pass --game_targets {lacking[0]}=RETURN (in game points)"
            )
    cfg["games"] = games
    cfg["game_targets"] = {g: float(targets.get(g, PAPER_TARGETS.get(g, 0.0))) for g in games}


def rtg_scale(data: AtariDataset) -> float:
    """The game's return scale: its sample's largest |return-to-go|, at least 1."""
    return max(1.0, float(np.abs(data.rtgs).max()))


@dataclass(frozen=True)
class GameSpec:
    """What the model needs to train on and play one game (recorded as ``game_specs``)."""

    action_set: list[int]
    target: float
    rtg_scale: float


class GameWindows(Dataset):
    """One game's windows in the shared model's terms: actions as full-set ids, returns-to-go
    divided by the game's scale."""

    def __init__(self, windows: WindowDataset, spec: GameSpec):
        self.windows, self.spec = windows, spec
        self.full_ids = torch.tensor(spec.action_set, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, w: int):
        states, actions, rtgs, timesteps = self.windows[w]
        return states, self.full_ids[actions], rtgs / self.spec.rtg_scale, timesteps


def load_games(cfg: dict, action_sets: dict[str, list[int]]) -> tuple[ConcatDataset, int, dict]:
    """Every game's sample (create_dataset's sampler and flags, per game) as one training set;
    returns it, the largest timestep and ``{game: GameSpec}``."""
    for game in cfg["games"]:  # every game's files found before any is read
        find_buffers(cfg["data_dir_prefix"], game, cfg["num_buffers"])
    parts, specs, max_t = [], {}, 0
    for game in cfg["games"]:
        data = create_dataset(
            cfg["num_buffers"], cfg["num_steps"], game, cfg["data_dir_prefix"],
            cfg["trajectories_per_buffer"], cfg["seed"], cache=not cfg["no_cache"],
            keep_blank_rows=cfg["keep_blank_rows"], cache_dir=cfg["cache_dir"],
        )  # fmt: skip
        n = len(action_sets[game])
        if data.actions.max() >= n or data.actions.min() < 0:
            raise DatasetError(
                f"the {game} replay holds action {data.actions.max()}, but {game} has {n}: "
                f"are {cfg['data_dir_prefix']}/{game}'s files that game's?"
            )
        windows = WindowDataset(data, cfg["context_length"])
        if len(windows) == 0:
            raise DatasetError(f"no sampled {game} trajectory is {cfg['context_length']} steps "
                               "long; lower --context_length")  # fmt: skip
        specs[game] = GameSpec(action_sets[game], cfg["game_targets"][game], rtg_scale(data))
        parts.append(GameWindows(windows, specs[game]))
        max_t = max(max_t, int(data.timesteps.max()))
        scale = specs[game].rtg_scale
        print(f"{game}: {len(data)} transitions, {len(windows)} windows, actions "
              f"{action_sets[game]} of the full set, return scale {scale:g}")  # fmt: skip
    return ConcatDataset(parts), max_t, specs


def evaluate_games(
    model,
    cfg: dict,
    device: torch.device,
    autocast_dtype,
    traces: dict | None = None,
    world: DistContext | None = None,
) -> dict[str, dict]:
    """Each game's evaluation as a single-game run's (``summarize`` plus lengths and time),
    at its own target, through the full-set model restricted to the game's actions; under
    torchrun (``world``) each game's episodes split across the ranks as one game's are."""
    naive = cfg["model_type"] == "naive"
    out = {}
    for game, spec in cfg["game_specs"].items():
        t0 = time.time()
        trace = None if traces is None else traces.setdefault(game, [])
        rets, lengths = evaluate_episodes(
            model, game, 0.0 if naive else spec["target"], cfg["eval_episodes"],
            cfg["eval_envs"], seed=cfg["seed"], device=device, world=world, trace=trace,
            max_steps=cfg["eval_max_steps"], autocast_dtype=autocast_dtype,
            action_set=spec["action_set"], rtg_scale=None if naive else spec["rtg_scale"],
        )  # fmt: skip
        res = summarize(game, None if naive else spec["target"], rets)
        res.update(lengths=lengths, seconds=time.time() - t0)
        out[game] = res
    return out


SCORES = ("human_normalized", "gamer_normalized")


def mean_scores(results: dict[str, dict]) -> dict[str, float]:
    """The mean normalized scores over the games, where every game has one."""
    return {
        key: float(np.mean([r[key] for r in results.values()]))
        for key in SCORES
        if all(key in r for r in results.values())
    }


def games_logs(results: dict[str, dict]) -> dict:
    """Per-game evaluations as metrics.jsonl keys: ``eval/<Game>/...``, then the means."""
    logs: dict = {}
    for game, res in results.items():
        pre = f"eval/{game}/"
        logs.update({pre + "return_mean": res["return_mean"], pre + "return_std": res["return_std"],
                     pre + "returns": res["returns"], pre + "lengths": res["lengths"],
                     pre + "target": res["target"]})  # fmt: skip
        logs.update({pre + k: res[k] for k in SCORES if k in res})
    logs.update({f"eval/mean_{k}": v for k, v in mean_scores(results).items()})
    logs["time/eval_s"] = sum(r["seconds"] for r in results.values())
    return logs


def games_table(results: dict[str, dict]) -> str:
    """The single-game table, one row per game, then the mean normalized scores."""
    lines = [eval_table([dict(res, run=game) for game, res in results.items()])]
    means = mean_scores(results) if len(results) > 1 else {}  # (--game: one row, no mean)
    if means:
        human, gamer = (f"{means[k]:.1f}" if k in means else "–" for k in SCORES)
        lines.append(f"| **mean over {len(results)} games** | | | | {human} | {gamer} |")
    return "\n".join(lines)


def games_from_row(cfg: dict, row: dict) -> dict[str, dict]:
    """A metrics.jsonl row's per-game evaluations as ``summarize`` dicts (plus lengths)."""
    out = {}
    for game in cfg["games"]:
        pre = f"eval/{game}/"
        if pre + "returns" in row:
            out[game] = summarize(game, row.get(pre + "target"), row[pre + "returns"])
            out[game]["lengths"] = row.get(pre + "lengths")
    return out


def select_game(cfg: dict, game: str | None, source) -> dict:
    """evaluate_atari.py --game: ``cfg`` (a run's or a folder's evaluation settings) narrowed to
    that game of a multi-game model; for a single-game model, only its own game is taken."""
    if game is None:
        return cfg
    specs = cfg.get("game_specs")
    if specs is None:
        if game != cfg["game"]:
            raise ConfigError(f"--game {game}: {source} plays {cfg['game']} only; drop --game")
        return cfg
    if game not in specs:
        raise ConfigError(f"--game {game}: {source} plays {', '.join(specs)}; pass one of them "
                          "or drop --game to play every game")  # fmt: skip
    return dict(cfg, games=[game], game_specs={game: specs[game]})
