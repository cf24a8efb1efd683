"""A run's configuration in one typed place: :class:`RunConfig`.

Every field that is a command-line flag of experiment.py / experiment_qwen.py is declared once,
with its default and its help text, by :func:`flag`; :func:`build_parser` makes the flags from
those declarations and :func:`resolve` checks them and fills what they leave open. The fields a
run derives (backbone, world size, parameter counts) follow the flags.

``config.json`` and the checkpoint's ``"config"`` hold :meth:`RunConfig.to_dict`: the flags in
their order on the command line, then any flags a script adds of its own (kept in ``extra``,
e.g. train_humanoid_qwen_dt.py's ``--preset``), then the derived fields. :meth:`RunConfig.from_dict`
reads such a dict back: a key written by an older version that lacks a newer field gets that
field's default (runs made before ``--attention`` existed are full attention); a key this
version does not declare is kept in ``extra``, so nothing a run recorded is lost on the way.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import MISSING, Field, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..envs import ENV_SPECS, get_spec, make_env, parse_env_name
from ..errors import ConfigError
from ..models.factory import ModelConfig, build_model, build_multitask_model, count_params
from ..models.pretrained import is_model_source
from ..models.return_bins import AUTO_TARGET, DEFAULT_KAPPA
from .checkpoint import read_run_checkpoint
from .cli import HelpFormatter, OneLineParser
from .distributed import DistContext

SCALE_OUT_GROUP = "precision, memory and several processes (torchrun)"
QWEN_GROUP = "Qwen3 backbone"
ONLINE_GROUP = "online fine-tuning (Online Decision Transformer, Zheng et al. 2022)"
VALIDATION_GROUP = "validation and model selection"
RETURNS_GROUP = "returns the model picks itself (Multi-Game Decision Transformer, Lee et al. 2022)"


def str2bool(value: str) -> bool:
    if value.lower() in ("1", "true", "yes", "y", "on"):
        return True
    if value.lower() in ("0", "false", "no", "n", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got '{value}'")


def target_spec(value: str) -> float | str:
    """A target return: a number, ``max``, ``pNN`` for a percentile of the dataset's returns, or
    ``auto`` (each step's return sampled from the model's return head, ``--return_bins``)."""
    if value == AUTO_TARGET:
        return value
    if value == "max" or (value[:1] == "p" and value[1:].replace(".", "", 1).isdigit()):
        if value != "max" and not 0 <= float(value[1:]) <= 100:
            raise argparse.ArgumentTypeError(f"percentile out of range: '{value}'")
        return value
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(
            f"expected a number, max, pNN (e.g. p90) or auto, got '{value}'"
        )
    return number


def episode_count(value: str) -> int | float:
    """``--val_episodes``: a whole number of episodes, or a fraction of them in (0, 1)."""
    try:
        number = float(value)
    except ValueError:
        number = float("nan")
    if number == 0 or (0 < number < 1):
        return number if number else 0
    if number >= 1 and number.is_integer():
        return int(number)
    raise argparse.ArgumentTypeError(
        f"expected a whole number of episodes or a fraction in (0, 1), got '{value}'"
    )


def selection_spec(value: str) -> str:
    """``--select_by``: ``val_error`` or ``return@TARGET``, TARGET as ``--env_targets`` takes."""
    if value == "val_error":
        return value
    head, _, target = value.partition("@")
    if head != "return" or not target:
        raise argparse.ArgumentTypeError(
            f"expected val_error or return@TARGET (e.g. return@max, return@p90), got '{value}'"
        )
    target_spec(target)  # raises the same message --env_targets gives
    return value


def selection_target(select_by: str | None) -> float | str | None:
    """The target of ``return@TARGET`` as ``target_spec`` reads it; None otherwise."""
    if not select_by or not select_by.startswith("return@"):
        return None
    return target_spec(select_by.split("@", 1)[1])


def flag(default: Any, help: str, *aliases: str, group: str | None = None, **argparse_kw) -> Any:
    """A config field that is also a command-line flag ``--<field name>`` (plus ``aliases``):
    its default and help are written here only; ``argparse_kw`` go to ``add_argument``."""
    meta = {"help": help, "aliases": aliases, "group": group, "argparse": argparse_kw}
    return field(default=default, metadata=meta)


def _is_flag(f: Field) -> bool:
    return "help" in f.metadata


@dataclass(frozen=True)
class Qwen3Flags:
    """The Qwen3 backbone's flags (experiment_qwen.py, train_humanoid_qwen_dt.py)."""

    n_kv_head: int | None = flag(  # resolved: --n_head when not given
        None,
        "key/value heads for grouped-query attention; must divide --n_head "
        "(default: --n_head, i.e. plain multi-head attention)",
        group=QWEN_GROUP,
        type=int,
    )
    head_dim: int | None = flag(
        None, "per-head size (default: embed_dim // n_head)", group=QWEN_GROUP, type=int
    )
    mlp_ratio: float = flag(
        4.0, "SwiGLU intermediate size / embed_dim", group=QWEN_GROUP, type=float
    )
    intermediate_size: int | None = flag(
        None,
        "SwiGLU intermediate size; overrides --mlp_ratio (default: from --mlp_ratio)",
        group=QWEN_GROUP,
        type=int,
    )
    rope_theta: float = flag(1e6, "RoPE base", group=QWEN_GROUP, type=float)
    no_qk_norm: bool = flag(
        False,
        "drop the per-head RMSNorm on queries and keys",
        group=QWEN_GROUP,
        action="store_true",
    )
    init_backbone: str | None = flag(
        None,
        "start the decoder layers from a local transformers Qwen3 checkpoint directory "
        "(default: random initialisation)",
        group=QWEN_GROUP,
        metavar="DIR",
    )


@dataclass(frozen=True)
class RunConfig:
    """One training run's configuration (see the module docstring for how it is stored). Frozen:
    :func:`resolve` settles every field before the run starts, and nothing changes it after."""

    # --- the flags of experiment.py, in their command-line order ---
    env: str = flag(
        "hopper",
        f"task: {', '.join(ENV_SPECS)}; D4RL-style names such as humanoid-medium-v2 also work "
        "and name the dataset too (several tasks: --tasks)",
    )
    dataset: str | None = flag(  # resolved: never None
        None,
        "dataset name: file {data_dir}/{env}-{dataset}-v2.pkl (medium, medium-replay, expert, "
        "medium-expert, collected, ...), or minari:<id> to train straight from a Minari dataset "
        "(e.g. minari:mujoco/humanoid/medium-v0); default: the one in --env's name, else medium",
    )
    tasks: list[str] | None = flag(
        None,
        "train ONE model over several tasks (bodies): each ENV:DATASET as --env and --dataset "
        "take them, e.g. hopper:ars-100k walker2d:medium ant:minari:mujoco/ant/medium-v0; "
        "replaces --env/--dataset. Each task keeps its own state mean/std, return scale, action "
        "bounds, episode length and evaluation targets (docs/reference.md, multi-task runs)",
        nargs="+",
        metavar="ENV:DATASET",
    )
    task_sampling: str = flag(
        "uniform",
        "with --tasks, how each batch row's task is drawn: uniform (every task equally often, "
        "so each gets the same share of the steps whatever its data size) or size (in "
        "proportion to the timesteps it has)",
        choices=["uniform", "size"],
    )
    mode: str = flag(
        "normal",
        "'delayed' moves each episode's return onto its last reward; 'noise' perturbs the "
        "initial evaluation state",
        choices=["normal", "delayed", "noise"],
    )
    K: int = flag(20, "context length in timesteps", type=int)
    attention: str = flag(
        "full",
        "full: every token sees the whole K-step window (the original); window: each token "
        "sees its own timestep and the K-1 before it, evaluated with a rolling key/value cache",
        choices=["full", "window"],
    )
    eval_context: int | None = flag(
        None,
        "DT: act on only the last N of the K context steps in evaluation and online "
        "collection, as the ODT's eval_context_length (its recipe: 5); training still uses K. "
        "Default: K",
        type=int,
        metavar="N",
    )
    no_timestep_embedding: bool = flag(
        False,
        "DT: no timestep embedding, so time enters only through the tokens' order (as the ODT "
        "reference's ordering=0). Default: the original's learned embedding",
        action="store_true",
    )
    segment_len: int | None = flag(  # resolved: never None
        None,
        "timesteps per training segment with --attention window (>= K; default K)",
        type=int,
    )
    pct_traj: float = flag(
        1.0,
        "train on the best-return episodes making up this fraction of all timesteps",
        type=float,
    )
    batch_size: int = flag(64, "trajectory windows per gradient step", type=int)
    model_type: str = flag(
        "dt", "dt: Decision Transformer; bc: MLP behaviour cloning", choices=["dt", "bc"]
    )
    embed_dim: int = flag(128, "hidden size", type=int)
    n_layer: int = flag(3, "transformer blocks", type=int)
    n_head: int = flag(1, "attention (query) heads", type=int)
    activation_function: str = flag("relu", "GPT-2 MLP activation (relu, gelu_new, ...)")
    dropout: float = flag(0.1, "dropout probability, in [0, 1)", type=float)
    learning_rate: float = flag(1e-4, "peak learning rate", "-lr", type=float)
    weight_decay: float = flag(
        1e-4,
        "weight decay: AdamW's decoupled decay, or LAMB's, added to its update before the "
        "trust ratio (the ODT's recipe: 5e-4 with --optimizer lamb)",
        "-wd",
        type=float,
    )
    optimizer: str = flag(
        "adamw",
        "adamw, or lamb: the ODT reference's NVLAMB (Adam moments with bias correction, each "
        "tensor's step scaled by |w| / |update|; training/optimizers.py). Both use eps 1e-8",
        choices=["adamw", "lamb"],
    )
    warmup_steps: int = flag(10000, "linear learning-rate warmup steps", type=int)
    lr_decay: str = flag(
        "none",
        "after warmup: none keeps the learning rate (the original); cosine anneals it to "
        "a tenth by the last step of --max_iters x --num_steps_per_iter",
        choices=["none", "cosine"],
    )
    num_eval_episodes: int = flag(
        100, "episodes per target return after each iteration; 0 skips evaluation", type=int
    )
    max_iters: int = flag(10, "training iterations", type=int)
    num_steps_per_iter: int = flag(10000, "gradient steps per iteration", type=int)
    device: str = flag(  # resolved: auto becomes cuda or cpu (cuda:LOCAL_RANK under torchrun)
        "auto", "auto (CUDA when present, else CPU), cpu, cuda, cuda:1, ..."
    )
    log_to_wandb: bool = flag(
        False,
        "log to Weights & Biases; works bare (-w) or as -w True / -w False (default: off)",
        "-w",
        type=str2bool,
        nargs="?",
        const=True,
    )
    data_dir: str = flag("data", "folder holding {env}-{dataset}-v2.pkl files")
    seed: int = flag(0, "seeds torch, numpy, sampling and evaluation episodes", type=int)
    out_dir: str | None = flag(  # resolved: never None
        None,
        "run directory for config.json, metrics.jsonl and checkpoint.pt "
        "(default: runs/{env}-{dataset}-{model_type}-{backbone}-seed{seed}, backbone being "
        "gpt2, qwen3 or mlp)",
    )
    resume: bool = flag(
        False,
        "continue the run in --out_dir from its checkpoint.pt, exactly where it stopped",
        action="store_true",
    )
    export: bool = flag(
        True,
        "at the end, write the model (best.pt's if the run kept one, else the last) as a model "
        "folder in {out_dir}/model, its card with the run's own last evaluation of it",
        type=str2bool,
    )
    eval_envs: int = flag(
        16,
        "episodes played at once in a vector env with one batched model call per step; "
        "1 uses the original one-episode evaluator",
        type=int,
    )
    env_targets: list[float | str] | None = flag(
        None,
        "returns to condition evaluation on: numbers, or max / pNN (a percentile) of the "
        "dataset's episode returns, e.g. --env_targets max p90 p50 (default: the env's two); "
        "auto: the return the model picks itself each step (needs --return_bins)",
        nargs="+",
        type=target_spec,
    )
    compile: bool = flag(
        False,
        "torch.compile each transformer block on its own (regional compilation: one "
        "block's compile serves them all, so start-up stays short); BC compiles its whole MLP. "
        "Bare --compile or --compile true; --compile false runs eager",
        type=str2bool,
        nargs="?",
        const=True,
    )
    # --- online fine-tuning (run/online.py); defaults are the ODT paper's / reference code's ---
    policy: str = flag(
        "deterministic",
        "DT action head: deterministic (the original, action MSE) or stochastic (the ODT's "
        "squashed Gaussian, trained by likelihood plus an entropy constraint; acts on its mean "
        "in evaluation, samples in collection)",
        group=ONLINE_GROUP,
        choices=["deterministic", "stochastic"],
    )
    online_rounds: int = flag(
        0,
        "after the --max_iters offline iterations, this many online rounds (collect episodes, "
        "add them to the replay buffer, --online_updates gradient steps); needs --policy "
        "stochastic; 0: offline only",
        group=ONLINE_GROUP,
        type=int,
    )
    init_from: str | None = flag(
        None,
        "start the online phase from an offline run's checkpoint.pt (--policy stochastic, same "
        "model flags and dataset): its weights, optimizer and schedule; --max_iters and "
        "--num_steps_per_iter become that run's (default: this run's own offline phase). "
        "Or fine-tune a model folder (export.py) or Hub repo id, offline and/or online: its "
        "weights and state mean/std, a fresh optimizer, this run's --max_iters",
        group=ONLINE_GROUP,
        metavar="CKPT|FOLDER|REPO_ID",
    )
    online_rtg: float | None = flag(
        None,
        "return-to-go that collection is conditioned on (default: the ODT's own value where it "
        "has one, Hopper 7200 (its reference code) and HalfCheetah 12000 (code built on it); "
        "elsewhere 2x the largest evaluation target, a rule from the reference's 7200 = 2 x 3600)",
        group=ONLINE_GROUP,
        type=float,
    )
    online_episodes: int = flag(
        1, "episodes collected per online round, over all processes", group=ONLINE_GROUP, type=int
    )
    online_updates: int = flag(300, "gradient steps per online round", group=ONLINE_GROUP, type=int)
    online_eval_every: int = flag(
        10, "evaluate every this many online rounds (and after the last)", group=ONLINE_GROUP,
        type=int,
    )  # fmt: skip
    online_warmup_steps: int = flag(
        0,
        "the online phase's learning-rate schedule (never --lr_decay's cosine): linear warmup "
        "over its first N updates, then constant at --learning_rate. 0: the run's --warmup_steps "
        "continued, then constant (the ODT reference's one schedule over both phases)",
        group=ONLINE_GROUP,
        type=int,
        metavar="N",
    )
    buffer_size: int = flag(
        1000,
        "replay buffer capacity in trajectories: the best offline ones first (of those offline "
        "training draws from: --val_episodes held out, --pct_traj applied), then FIFO",
        group=ONLINE_GROUP,
        type=int,
    )
    target_entropy: float | None = flag(
        None,
        "entropy the temperature steers the stochastic policy to, for actions rescaled to "
        "[-1, 1] (default: -act_dim)",
        group=ONLINE_GROUP,
        type=float,
    )
    init_temperature: float = flag(
        0.1, "initial entropy temperature (stochastic policy)", group=ONLINE_GROUP, type=float
    )
    temperature_lr: float = flag(
        1e-4, "Adam learning rate of the log-temperature", group=ONLINE_GROUP, type=float
    )
    # --- returns the model picks itself (models/return_bins.py) ---
    return_bins: int = flag(
        0,
        "DT: also train a head predicting the return-to-go's distribution over N bins (each "
        "task's scaled return range in its data, cut evenly), each step's tokens ordered "
        "(state, return, action) so the head never sees the return it predicts; what "
        "--env_targets auto samples from. 0: off (the original model)",
        group=RETURNS_GROUP,
        type=int,
        metavar="N",
    )
    return_kappa: float = flag(
        DEFAULT_KAPPA,
        "--env_targets auto: each step's return is drawn from the head's distribution times "
        "exp(kappa x (R - R_low) / (R_high - R_low)), a tilt toward high returns (0: none)",
        group=RETURNS_GROUP,
        type=float,
    )
    return_loss_weight: float = flag(
        1.0,
        "weight of the return head's cross-entropy beside the action loss (1: Multi-Game DT's "
        "equal weighting)",
        group=RETURNS_GROUP,
        type=float,
    )
    # --- validation and model selection (see training/validation.py, run/selection.py) ---
    val_episodes: int | float = flag(
        0,
        "hold out this many whole episodes (or this fraction of them, e.g. 0.1), drawn by "
        "--seed, from training and from the state mean/std; their action error is logged each "
        "iteration as validation/action_error. With --tasks each task holds out its own "
        "(logged validation/<task>/action_error; validation/action_error is their mean). 0: "
        "off, every episode trains",
        group=VALIDATION_GROUP,
        type=episode_count,
    )
    val_windows: int = flag(
        512,
        "windows of the held-out episodes drawn once (by --seed) on which the validation error "
        "is computed every iteration (with --tasks, this many per task)",
        group=VALIDATION_GROUP,
        type=int,
    )
    select_by: str | None = flag(  # resolved: val_error with --val_episodes, else None
        None,
        "keep the best iteration's weights as best.pt beside checkpoint.pt: val_error (lowest "
        "validation error) or return@TARGET (highest mean return at TARGET, one of "
        "--env_targets, e.g. return@max). With --online_rounds only return@TARGET, which ranks "
        "the offline iterations and every evaluated online round together. With --tasks only "
        "val_error (the mean over tasks). Default: val_error with --val_episodes (offline "
        "runs), else no best.pt",
        group=VALIDATION_GROUP,
        type=selection_spec,
    )
    # --- precision, memory and several processes (see run/distributed.py) ---
    dtype: str = flag(  # resolved: auto becomes bf16 on CUDA, fp32 on CPU
        "auto",
        "bf16 computes under torch.autocast (FSDP: bf16 params in compute, fp32 reduce); "
        "weights and AdamW stay fp32. auto: bf16 on CUDA, fp32 on CPU",
        group=SCALE_OUT_GROUP,
        choices=["auto", "fp32", "bf16"],
    )
    grad_accum_steps: int = flag(
        1,
        "micro-batches of --batch_size per optimizer step (gradients all-reduced once); "
        "global batch = batch_size x processes x grad_accum_steps",
        group=SCALE_OUT_GROUP,
        type=int,
    )
    activation_checkpointing: bool = flag(
        False,
        "recompute each transformer block's activations in backward (less memory, ~1/3 "
        "more compute)",
        group=SCALE_OUT_GROUP,
        action="store_true",
    )
    fsdp: bool = flag(
        False,
        "under torchrun, shard weights, gradients and AdamW states (FSDP2) instead of DDP",
        group=SCALE_OUT_GROUP,
        action="store_true",
    )
    ddp_bf16_grads: bool = flag(
        False,
        "DDP: all-reduce gradients in bf16 (half the traffic; each gradient rounded to 8 "
        "mantissa bits before averaging)",
        group=SCALE_OUT_GROUP,
        action="store_true",
    )
    consolidate_checkpoint: bool = flag(
        True,
        "FSDP: also gather a single-file checkpoint.pt with full weights for evaluate.py "
        "(false for the largest runs: only the sharded dcp-* folder is written)",
        group=SCALE_OUT_GROUP,
        type=str2bool,
    )
    dist_timeout: float = flag(
        60.0,
        "minutes a rank waits in a collective (rank 0 writing a checkpoint) before failing",
        group=SCALE_OUT_GROUP,
        type=float,
    )
    # --- the Qwen3 backbone's flags; None when the run's script has none (experiment.py) ---
    qwen: Qwen3Flags | None = None
    # --- flags a script adds of its own (train_humanoid_qwen_dt.py: preset, dry_run, nproc) ---
    extra: dict[str, Any] = field(default_factory=dict)
    # --- derived by resolve(); None in runs that predate them ---
    backbone: str | None = None  # gpt2 or qwen3 for the DT, mlp for BC
    world_size: int = 1  # processes that trained the run
    global_batch_size: int | None = None  # batch_size x world_size x grad_accum_steps
    params: int | None = None  # all parameters of the model
    backbone_params: int | None = None  # those of its transformer (0 for BC)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        """A config from ``to_dict``'s form (config.json, a checkpoint's, ``vars(args)``)."""
        own = {f.name for f in fields(cls) if f.name not in ("qwen", "extra")}
        # What config.json records beside the flags (provenance.write_run_config): not config.
        values = {k: v for k, v in values.items() if k not in ("versions", "earlier_versions")}
        qwen_names = {f.name for f in fields(Qwen3Flags)}
        qwen = None
        if qwen_names & values.keys():
            qwen = Qwen3Flags(**{k: v for k, v in values.items() if k in qwen_names})
        extra = {k: v for k, v in values.items() if k not in own and k not in qwen_names}
        return cls(**{k: v for k, v in values.items() if k in own}, qwen=qwen, extra=extra)

    def to_dict(self) -> dict[str, Any]:
        """What config.json holds, keys in command-line order then the derived ones."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if _is_flag(f)}
        if self.qwen is not None:
            out.update(asdict(self.qwen))
        out.update(self.extra)
        derived = ("backbone", "world_size", "global_batch_size", "params", "backbone_params")
        out.update({name: getattr(self, name) for name in derived})
        return out

    def steps_after(self, iteration: int) -> int:
        """Optimizer steps taken by the end of ``iteration`` (1-based): offline iterations of
        --num_steps_per_iter, then online rounds of --online_updates."""
        offline = min(iteration, self.max_iters)
        return offline * self.num_steps_per_iter + (iteration - offline) * self.online_updates

    def model_config(self) -> ModelConfig:
        """What build_model needs to construct this run's policy."""
        qwen = self.qwen or Qwen3Flags()
        return ModelConfig(
            model_type=self.model_type,
            backbone=self.backbone,
            embed_dim=self.embed_dim,
            n_layer=self.n_layer,
            n_head=self.n_head,
            K=self.K,
            dropout=self.dropout,
            attention=self.attention,
            activation_function=self.activation_function,
            n_kv_head=qwen.n_kv_head,
            head_dim=qwen.head_dim,
            intermediate_size=qwen.intermediate_size,
            mlp_ratio=qwen.mlp_ratio,
            rope_theta=qwen.rope_theta,
            qk_norm=not qwen.no_qk_norm,
            policy=self.policy,
            timestep_embedding=not self.no_timestep_embedding,
            eval_context=self.eval_context,
            return_bins=self.return_bins,
        )


# ModelConfig fields set by a flag that turns them off.
_NEGATED = {"qk_norm": "--no_qk_norm", "timestep_embedding": "--no_timestep_embedding"}


def model_flags_fix(names: list[str], model: ModelConfig) -> str:
    """How to ask for ``model``'s values of the ModelConfig fields ``names`` on the command line,
    e.g. ``with --embed_dim 32 and without --no_timestep_embedding``."""
    given, dropped = [], []
    for name in names:
        value = getattr(model, name)
        if name in _NEGATED:
            (dropped if value else given).append(_NEGATED[name])
        elif name != "backbone":
            given.append(f"--{name} {value}")
    parts = [f"with {', '.join(given)}"] if given else []
    parts += [f"without {', '.join(dropped)}"] if dropped else []
    return " and ".join(parts) or "with its backbone"


def _add_flags(parser: argparse.ArgumentParser, cls: type, groups: dict) -> None:
    for f in fields(cls):
        if not _is_flag(f):
            continue
        meta = f.metadata
        group = meta["group"]
        if group is not None and group not in groups:
            groups[group] = parser.add_argument_group(group)
        target = groups[group] if group is not None else parser
        default = f.default if f.default is not MISSING else None
        target.add_argument(
            f"--{f.name}", *meta["aliases"], default=default, help=meta["help"], **meta["argparse"]
        )


def build_parser(qwen: bool = False) -> argparse.ArgumentParser:
    """The original experiment.py flags with their defaults, plus this project's additions; with
    ``qwen=True`` also the Qwen3 backbone flags."""
    p = OneLineParser(
        description=(
            "Train a Decision Transformer with a Qwen3-style backbone (or BC) on offline data."
            if qwen
            else "Train a Decision Transformer (GPT-2 backbone) or BC on an offline dataset."
        ),
        formatter_class=HelpFormatter,
    )
    groups: dict = {}
    _add_flags(p, RunConfig, groups)
    if qwen:
        _add_flags(p, Qwen3Flags, groups)
    return p


def resolve_targets(specs: list, returns, default: tuple[float, ...]) -> list[float | str]:
    """Turn target specs into returns, reading ``max``/``pNN`` off the dataset's episode returns;
    ``auto`` stays itself."""
    out = []
    for t in specs or default:
        if t == AUTO_TARGET:  # played by sampling the model's returns: nothing to resolve
            out.append(t)
            continue
        if t == "max":
            t = float(np.max(returns))
        elif isinstance(t, str):
            t = float(np.percentile(returns, float(t[1:])))
        out.append(round(float(t), 1))
    return out


class _Draft(RunConfig):
    """The config while :func:`resolve` fills it in (the one place a config is written)."""

    def __setattr__(self, name: str, value: Any) -> None:
        object.__setattr__(self, name, value)


def resolve(args: argparse.Namespace, backbone: str) -> RunConfig:
    """Validate flags and fill every derived field; returns the run's final config (what
    config.json holds): the device this process trains on, the world torchrun describes, the
    parameter counts, and with --init_from the offline phase's length."""
    cfg = _Draft.from_dict(vars(args))
    cfg.backbone = backbone if cfg.model_type == "dt" else "mlp"
    _resolve_env_and_dataset(cfg)
    _check_ranges(cfg)
    _check_attention(cfg)
    _check_optimization(cfg)
    _check_heads(cfg, backbone)
    _check_online(cfg)
    check_return_head(cfg)
    _check_validation(cfg)
    cfg.device = resolve_device(cfg.device)
    check_scale_out(cfg)
    if cfg.out_dir is None and cfg.tasks:
        cfg.out_dir = (
            f"runs/multi-{len(cfg.tasks)}tasks-{cfg.model_type}-{cfg.backbone}-seed{cfg.seed}"
        )
    if cfg.out_dir is None:
        name = cfg.dataset.replace("minari:", "minari-").replace("/", "-")
        cfg.out_dir = f"runs/{cfg.env}-{name}-{cfg.model_type}-{cfg.backbone}-seed{cfg.seed}"
    _settle_world(cfg)
    _settle_init_from(cfg)
    cfg.params, cfg.backbone_params = count_model_params(cfg)
    return RunConfig(**{f.name: getattr(cfg, f.name) for f in fields(RunConfig)})


def _settle_world(cfg: RunConfig) -> None:
    """The processes torchrun starts (one without it): this rank's device and the global batch."""
    world = DistContext.described()
    cfg.device = world.device(cfg.device)
    cfg.world_size = world.world_size
    cfg.global_batch_size = cfg.batch_size * world.world_size * cfg.grad_accum_steps


def _settle_init_from(cfg: RunConfig) -> None:
    """--init_from: the run takes over the checkpoint's ``max_iters`` and ``num_steps_per_iter``
    (its offline phase is that run's); on --resume, from the run's own checkpoint, which
    recorded them. (The rest of the checkpoint is checked when the run reads it.)"""
    if not cfg.init_from or is_model_source(cfg.init_from):
        return  # a model folder is weights only: this run's own phases and schedule
    if cfg.resume:
        path, use = Path(cfg.out_dir) / "checkpoint.pt", "resume"
        if not path.is_file():
            return  # the run reports the missing checkpoint
    else:
        path, use = Path(cfg.init_from), "init"
    src = RunConfig.from_dict(read_run_checkpoint(path, use)["config"])
    cfg.max_iters, cfg.num_steps_per_iter = src.max_iters, src.num_steps_per_iter


def count_model_params(cfg: RunConfig) -> tuple[int, int]:
    """All parameters of the run's model and those of its transformer, counted on the meta
    device (shapes only: nothing is allocated)."""
    if cfg.tasks:
        with torch.device("meta"):
            model = build_multitask_model(cfg.model_config(), task_shapes(cfg.tasks))
        return count_params(model)
    env = make_env(cfg.env)
    state_dim, act_dim = env.observation_space.shape[0], env.action_space.shape[0]
    low, high = env.action_space.low, env.action_space.high
    env.close()
    max_ep_len = get_spec(cfg.env).max_ep_len
    with torch.device("meta"):
        model = build_model(cfg.model_config(), state_dim, act_dim, max_ep_len, low, high)
    return count_params(model)


# What a multi-task run records as its --env and --dataset (its tasks are in --tasks).
MULTI_ENV, MULTI_DATASET = "multi", "tasks"


def parse_task(text: str) -> tuple[str, str]:
    """``ENV:DATASET`` (or a D4RL-style ``hopper-medium-v2``) -> ``(env, dataset)``, as
    ``--env ENV --dataset DATASET`` would resolve them; raises ConfigError naming the fix."""
    env, sep, dataset = text.partition(":")
    try:
        env, named = parse_env_name(env)
    except ValueError as e:
        raise ConfigError(f"--tasks {text}: {e}") from None
    if sep and named:
        raise ConfigError(
            f"--tasks {text}: the env names dataset '{named}' and the task '{dataset}': "
            "give ENV:DATASET with a bare env name"
        )
    dataset = dataset if sep else named
    if not dataset:
        raise ConfigError(
            f"--tasks {text}: name the dataset as ENV:DATASET, e.g. {env}:medium or {env}:ars-100k"
        )
    return env, dataset


def task_name(task: str) -> str:
    """A task's name in logs and metric keys: ``hopper:ars-100k`` -> ``hopper-ars-100k``."""
    env, dataset = task.split(":", 1)
    name = dataset.replace("minari:", "minari-").replace("/", "-").replace(":", "-")
    return f"{env}-{name}"


def task_shapes(tasks: list[str]) -> list:
    """Each task's sizes, episode cap and action box, read off its env."""
    from ..models.multitask import TaskShape

    shapes = []
    for task in tasks:
        env_name = task.split(":", 1)[0]
        env = make_env(env_name)
        space = env.action_space
        shapes.append(
            TaskShape(
                env.observation_space.shape[0],
                space.shape[0],
                get_spec(env_name).max_ep_len,
                space.low,
                space.high,
            )
        )
        env.close()
    return shapes


def _resolve_tasks(cfg: RunConfig) -> None:
    """--tasks: each task as ENV:DATASET in canonical form, and what a multi-task run cannot do
    yet refused before any work."""
    if cfg.env not in ("hopper", MULTI_ENV) or cfg.dataset not in (None, MULTI_DATASET):
        raise ConfigError(
            "--tasks names every task's env and dataset: drop --env and --dataset (or drop "
            "--tasks for a single-task run)"
        )
    tasks = []
    for text in cfg.tasks:
        env, dataset = parse_task(text)
        task = f"{env}:{dataset}"
        if task in tasks:
            raise ConfigError(f"--tasks lists {task} twice: list each task once")
        tasks.append(task)
    if len(tasks) < 2:
        raise ConfigError(
            f"--tasks {' '.join(cfg.tasks)}: a multi-task run needs two tasks or more; for one "
            "use --env and --dataset"
        )
    unsupported = [
        ("--model_type bc", cfg.model_type != "dt"),
        ("--policy stochastic", cfg.policy != "deterministic"),
        ("--online_rounds", cfg.online_rounds > 0),
        ("--init_from", cfg.init_from is not None),
    ]
    for name, given in unsupported:
        if given:
            raise ConfigError(
                f"{name} is not supported with --tasks yet: drop it (multi-task runs train an "
                "offline DT, in one process, DDP or FSDP)"
            )
    if selection_target(cfg.select_by) is not None:
        raise ConfigError(
            f"--select_by {cfg.select_by} is not supported with --tasks (each task has its own "
            "targets): select by val_error with --val_episodes, or drop --select_by"
        )
    numbers = [t for t in cfg.env_targets or () if not isinstance(t, str)]
    if numbers:
        raise ConfigError(
            f"--env_targets {numbers[0]:g}: with --tasks each task resolves its own targets, so "
            "give max or pNN (e.g. --env_targets max p90), or leave the default (each env's own)"
        )
    cfg.tasks = tasks
    cfg.env, cfg.dataset = MULTI_ENV, MULTI_DATASET


def _resolve_env_and_dataset(cfg: RunConfig) -> None:
    if cfg.tasks:
        _resolve_tasks(cfg)
        return
    if cfg.env == MULTI_ENV:
        raise ConfigError("--env multi needs --tasks ENV:DATASET ...: name the tasks")
    try:
        env, env_dataset = parse_env_name(cfg.env)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if env_dataset and cfg.dataset and cfg.dataset != env_dataset:
        raise ConfigError(
            f"--env {cfg.env} names dataset '{env_dataset}' but --dataset is "
            f"'{cfg.dataset}': drop one of them or make them agree"
        )
    cfg.env = env
    cfg.dataset = cfg.dataset or env_dataset or "medium"


def _check_ranges(cfg: RunConfig) -> None:
    positive = ("batch_size", "K", "max_iters", "num_steps_per_iter", "embed_dim", "n_layer")
    for name in (*positive, "n_head", "eval_envs"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"--{name} must be positive, got {getattr(cfg, name)}")
    for name in ("num_eval_episodes", "warmup_steps", "seed"):
        if getattr(cfg, name) < 0:
            raise ConfigError(f"--{name} must be >= 0, got {getattr(cfg, name)}")


def _check_optimization(cfg: RunConfig) -> None:
    if not 0 < cfg.pct_traj <= 1:
        raise ConfigError(f"--pct_traj must be in (0, 1], got {cfg.pct_traj}")
    if not 0 < cfg.learning_rate < math.inf:
        raise ConfigError(f"--learning_rate must be positive, got {cfg.learning_rate}")
    if not 0 <= cfg.weight_decay < math.inf:
        raise ConfigError(f"--weight_decay must be >= 0, got {cfg.weight_decay}")
    if not 0 <= cfg.dropout < 1:
        raise ConfigError(f"--dropout must be in [0, 1), got {cfg.dropout}")
    if cfg.optimizer == "lamb" and cfg.fsdp:
        # Its trust ratio needs each tensor's whole norm; sharded LAMB is not tested.
        raise ConfigError("--optimizer lamb runs without --fsdp (single process or DDP)")


def _check_validation(cfg: RunConfig) -> None:
    """What can be checked without the dataset; the episode count is checked by split_episodes
    and the selection target against the resolved targets once the dataset is loaded."""
    if cfg.val_episodes < 0:
        raise ConfigError(f"--val_episodes must be >= 0, got {cfg.val_episodes}")
    if cfg.val_windows <= 0:
        raise ConfigError(f"--val_windows must be positive, got {cfg.val_windows}")
    # No default best.pt when FSDP gathers no full weights, nor in a run with online rounds
    # (val_error cannot rank them, see run/selection.py): validation is logged only.
    if (
        cfg.select_by is None
        and cfg.val_episodes
        and not cfg.online_rounds
        and not (cfg.fsdp and not cfg.consolidate_checkpoint)
    ):
        cfg.select_by = "val_error"
    if cfg.select_by == "val_error" and cfg.online_rounds:
        raise ConfigError(
            "--select_by val_error cannot rank online rounds (they train on their own episodes, "
            "not the held-out split's complement): select by return@TARGET, or drop --select_by"
        )
    if cfg.select_by == "val_error" and not cfg.val_episodes:
        raise ConfigError(
            "--select_by val_error needs held-out episodes: add --val_episodes N (or a "
            "fraction, e.g. 0.1), or select by return@TARGET"
        )
    if selection_target(cfg.select_by) is not None and cfg.num_eval_episodes <= 0:
        raise ConfigError(
            f"--select_by {cfg.select_by} needs evaluation returns but --num_eval_episodes is 0: "
            "evaluate some episodes or select by val_error"
        )
    if cfg.select_by and cfg.fsdp and not cfg.consolidate_checkpoint:
        raise ConfigError(
            "--select_by keeps best.pt with full weights, which --consolidate_checkpoint false "
            "never gathers: drop one of them"
        )


def _check_attention(cfg: RunConfig) -> None:
    if cfg.segment_len is None:
        cfg.segment_len = cfg.K
    if cfg.attention == "window" and cfg.model_type != "dt":
        raise ConfigError("--attention window is for the DT: drop it for --model_type bc")
    if cfg.segment_len < cfg.K:
        raise ConfigError(
            f"--segment_len {cfg.segment_len} is shorter than --K {cfg.K}: use at least K"
        )
    if cfg.eval_context is not None and cfg.model_type != "dt":
        raise ConfigError("--eval_context is the DT's: drop it for --model_type bc")
    if cfg.no_timestep_embedding and cfg.model_type != "dt":
        raise ConfigError("--no_timestep_embedding is the DT's: drop it for --model_type bc")
    if cfg.eval_context is not None and not 1 <= cfg.eval_context <= cfg.K:
        raise ConfigError(
            f"--eval_context must be between 1 and --K {cfg.K}, got {cfg.eval_context}"
        )
    if cfg.attention == "full" and cfg.segment_len != cfg.K:
        raise ConfigError(
            "--segment_len differs from --K but attention is full: add --attention window "
            "(or drop --segment_len)"
        )


def _check_heads(cfg: RunConfig, backbone: str) -> None:
    if backbone == "qwen3":
        cfg.qwen = replace(cfg.qwen, n_kv_head=cfg.qwen.n_kv_head or cfg.n_head)
        q = cfg.qwen
        if cfg.n_head % q.n_kv_head:
            raise ConfigError(
                f"--n_head {cfg.n_head} is not a multiple of --n_kv_head {q.n_kv_head}: "
                "each key/value head serves a whole group of query heads"
            )
        if q.head_dim is None and cfg.embed_dim % cfg.n_head:
            raise ConfigError(
                f"--embed_dim {cfg.embed_dim} is not divisible by --n_head {cfg.n_head}: "
                "change one of them or set --head_dim"
            )
        if not 0 < q.rope_theta < math.inf:
            raise ConfigError(f"--rope_theta must be positive, got {q.rope_theta}")
        from ..models.qwen3_transformer import Qwen3Config

        try:  # the backbone's own shape checks (head_dim even, MLP width positive, ...)
            Qwen3Config(
                cfg.embed_dim, cfg.n_layer, cfg.n_head, q.n_kv_head, q.head_dim,
                q.intermediate_size, q.mlp_ratio,
            )  # fmt: skip
        except ValueError as e:
            raise ConfigError(str(e)) from None
    elif cfg.model_type == "dt" and cfg.embed_dim % cfg.n_head:
        raise ConfigError(f"--embed_dim {cfg.embed_dim} is not divisible by --n_head {cfg.n_head}")
    if backbone == "gpt2" and cfg.model_type == "dt":
        from ..models.trajectory_gpt2 import ACTIVATIONS

        if cfg.activation_function not in ACTIVATIONS:
            raise ConfigError(
                f"--activation_function {cfg.activation_function} is not one of "
                f"{', '.join(ACTIVATIONS)}"
            )


def _check_online(cfg: RunConfig) -> None:
    if cfg.policy == "stochastic" and cfg.model_type != "dt":
        raise ConfigError("--policy stochastic is the DT's head: drop it for --model_type bc")
    if cfg.online_rounds < 0:
        raise ConfigError(f"--online_rounds must be >= 0, got {cfg.online_rounds}")
    if cfg.online_rounds and cfg.policy != "stochastic":
        raise ConfigError(
            "--online_rounds needs the ODT's stochastic head: add --policy stochastic"
        )
    if cfg.online_rounds and cfg.fsdp:
        raise ConfigError(
            "--online_rounds runs under DDP (collection plays the whole model): drop --fsdp"
        )
    if cfg.init_from and not cfg.online_rounds and not is_model_source(cfg.init_from):
        raise ConfigError("--init_from starts an online phase: add --online_rounds N (N >= 1)")
    for name in ("online_episodes", "online_updates", "online_eval_every", "buffer_size"):
        if getattr(cfg, name) <= 0:
            raise ConfigError(f"--{name} must be positive, got {getattr(cfg, name)}")
    if cfg.online_warmup_steps < 0:
        raise ConfigError(f"--online_warmup_steps must be >= 0, got {cfg.online_warmup_steps}")
    for name in ("init_temperature", "temperature_lr"):
        if not getattr(cfg, name) > 0:
            raise ConfigError(f"--{name} must be positive, got {getattr(cfg, name)}")
    if cfg.online_rtg is not None and not np.isfinite(cfg.online_rtg):
        raise ConfigError(f"--online_rtg must be a finite number, got {cfg.online_rtg}")
    if cfg.target_entropy is not None and not np.isfinite(cfg.target_entropy):
        raise ConfigError(f"--target_entropy must be a finite number, got {cfg.target_entropy}")


def check_return_head(cfg: RunConfig) -> None:
    """--return_bins, --return_kappa, --return_loss_weight and --env_targets auto."""
    if cfg.return_bins < 0:
        raise ConfigError(f"--return_bins must be >= 0, got {cfg.return_bins}")
    if not (0 <= cfg.return_kappa < math.inf):
        raise ConfigError(f"--return_kappa must be a finite number >= 0, got {cfg.return_kappa}")
    if not (0 < cfg.return_loss_weight < math.inf):
        raise ConfigError(f"--return_loss_weight must be positive, got {cfg.return_loss_weight}")
    if AUTO_TARGET in (cfg.env_targets or ()) and not cfg.return_bins:
        raise ConfigError(
            "--env_targets auto samples returns from a return head the model lacks: add "
            "--return_bins N (e.g. 60), or drop auto"
        )
    if cfg.return_bins == 1:
        raise ConfigError("--return_bins 1 has nothing to predict: use 2 or more (e.g. 60)")
    if not cfg.return_bins:
        return
    for name, given in (
        ("--model_type bc", cfg.model_type != "dt"),
        ("--policy stochastic", cfg.policy != "deterministic"),
        ("--online_rounds", cfg.online_rounds > 0),
    ):
        if given:
            raise ConfigError(
                f"--return_bins is not supported with {name} yet: drop one of them (the return "
                "head trains with the DT's offline action loss, in one process, under DDP or FSDP)"
            )


def check_scale_out(cfg: RunConfig) -> None:
    if cfg.dtype == "auto":
        cfg.dtype = "bf16" if cfg.device.startswith("cuda") else "fp32"
    if cfg.grad_accum_steps <= 0:
        raise ConfigError(f"--grad_accum_steps must be positive, got {cfg.grad_accum_steps}")
    if not 0 < cfg.dist_timeout < math.inf:
        raise ConfigError(f"--dist_timeout must be positive minutes, got {cfg.dist_timeout}")
    if cfg.ddp_bf16_grads and cfg.fsdp:
        raise ConfigError(
            "--ddp_bf16_grads compresses DDP's all-reduce; FSDP reduce-scatters in fp32: drop "
            "one of --ddp_bf16_grads and --fsdp"
        )
    if cfg.activation_checkpointing and cfg.model_type != "dt":
        raise ConfigError(
            "--activation_checkpointing recomputes transformer blocks; BC (--model_type bc) has "
            "none: drop the flag"
        )


def resolve_device(device: str) -> str:
    """``auto`` made concrete; any other string must name a device this machine has."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(
            f"--device {device} asked for CUDA but none is available: use --device auto"
        )
    try:
        dev = torch.device(device)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(
            f"--device {device!r} names no device: use auto, cpu, cuda, cuda:N or mps"
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(
            f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s), "
            f"numbered from 0"
        )
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"--device {device}: MPS is not available here: use --device auto")
    return device
