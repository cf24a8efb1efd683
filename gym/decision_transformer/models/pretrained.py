"""A trained policy as a self-contained folder, and ``from_pretrained`` to load one.

The folder follows transformers' and LeRobot's convention::

    config.json        format version, architecture, every hyperparameter that rebuilds the
                       model, and everything needed to act (env, state statistics, return scale,
                       action box, context, targets); the run's flags and dataset for provenance
    model.safetensors  the weights and nothing else
    README.md          a model card (Hub metadata, measured evaluation, the reproducing command)

Three architectures: ``gpt2_dt`` (the original DT), ``qwen3_dt`` (the DT on a Qwen3-style
backbone) and ``mlp_bc`` (behaviour cloning). A ``gpt2_dt`` folder is also a
``transformers.DecisionTransformerModel`` folder: its config.json carries that class's fields
at the top level and its weights use that class's names (see :mod:`.hf_interop`), so
``DecisionTransformerModel.from_pretrained(folder)`` loads it as is.

This module imports the model classes only: no training, data or run code, so a user who just
wants to act needs nothing else from this project.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import MISSING, asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import UserError, one_line
from .decision_transformer import DecisionTransformer
from .hf_interop import from_transformers_names, gpt2_dt_fields, to_transformers_names
from .model import TrajectoryModel
from .return_bins import AUTO_TARGET, DEFAULT_KAPPA

FORMAT_NAME = "decision_transformer.pretrained"
FORMAT_VERSION = 1
CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
CARD_NAME = "README.md"

GPT2_DT, QWEN3_DT, MLP_BC = "gpt2_dt", "qwen3_dt", "mlp_bc"
ARCHITECTURES = (GPT2_DT, QWEN3_DT, MLP_BC)

# How the model's action head lands in the env's box. transformers' DecisionTransformerModel
# stops at tanh (its actions are in [-1, 1]); this project's model applies the affine map too.
ACTION_MAPPING = (
    "action = action_low + (tanh(head(h)) + 1) * (action_high - action_low) / 2, "
    "i.e. tanh(head(h)) * (action_high - action_low) / 2 + (action_high + action_low) / 2"
)


class PretrainedError(UserError, ValueError):
    """A model folder (or Hub repo) that cannot be loaded; the message names the fix."""


# ---------------------------------------------------------------------------------------------
# Configs: one dataclass per architecture, plus what acting needs and where the model came from
# ---------------------------------------------------------------------------------------------


def _dt_kwargs(cfg: GPT2DTConfig | Qwen3DTConfig, action_low, action_high) -> dict[str, Any]:
    """What both DTs' constructors take alike, whichever backbone's config names them."""
    return dict(
        hidden_size=cfg.hidden_size,
        max_length=cfg.context_length,
        max_ep_len=cfg.max_ep_len,
        action_tanh=cfg.action_tanh,
        action_low=action_low,
        action_high=action_high,
        attention=cfg.attention,
        policy=cfg.policy,
        timestep_embedding=cfg.timestep_embedding,
        eval_context=cfg.eval_context,
        return_bins=cfg.return_bins,
    )


@dataclass
class GPT2DTConfig:
    """The GPT-2 DT. Field names are those of transformers' ``DecisionTransformerConfig``, so
    config.json's top level is one (plus this project's keys, which transformers keeps aside)."""

    state_dim: int
    act_dim: int
    hidden_size: int
    max_ep_len: int
    n_layer: int
    n_head: int
    n_inner: int | None = None  # None -> 4 * hidden_size
    activation_function: str = "relu"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    action_tanh: bool = True
    context_length: int = 20  # K: timesteps the model sees
    attention: str = "full"
    policy: str = "deterministic"
    # --no_timestep_embedding (the ODT's ordering) and --eval_context (how many of the K steps
    # it acts on); folders written before these fields have the embedding and act on all K.
    timestep_embedding: bool = True
    eval_context: int | None = None
    # --return_bins: the return head's bins, tokens ordered (s, R, a); 0 (folders before it): none.
    # The scaled return range they cut is the weights' ``return_range``.
    return_bins: int = 0

    def build(self, action_low, action_high) -> TrajectoryModel:
        return DecisionTransformer(
            self.state_dim,
            self.act_dim,
            n_layer=self.n_layer,
            n_head=self.n_head,
            n_inner=self.n_inner or 4 * self.hidden_size,
            activation_function=self.activation_function,
            resid_pdrop=self.resid_pdrop,
            attn_pdrop=self.attn_pdrop,
            embd_pdrop=self.embd_pdrop,
            layer_norm_epsilon=self.layer_norm_epsilon,
            **_dt_kwargs(self, action_low, action_high),
        )

    def transformers_fields(self) -> dict[str, Any]:
        """What transformers' DecisionTransformerConfig reads beyond the shared fields: one token
        id and one position, the smallest embeddings the encoder insists on owning (the DT feeds
        embeddings and position 0 only; that row is stored as zeros)."""
        return {
            "model_type": "decision_transformer",
            "architectures": ["DecisionTransformerModel"],
            "vocab_size": 1,
            "n_positions": 1,
            # GPT-2's text token ids (50256) lie outside a one-token vocabulary.
            "bos_token_id": 0,
            "eos_token_id": 0,
        }


@dataclass
class Qwen3DTConfig:
    """The DT on the Qwen3-style backbone. The backbone's fields carry transformers'
    ``Qwen3Config`` names: a ``Qwen3Model`` with these values has the backbone's exact shapes
    (its ``layers.N.*`` and ``norm.weight`` are this model's ``transformer.layers.N.*`` and
    ``transformer.norm.weight``; its ``embed_tokens`` has no counterpart)."""

    state_dim: int
    act_dim: int
    hidden_size: int
    max_ep_len: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    intermediate_size: int
    rope_theta: float = 1e6
    rms_norm_eps: float = 1e-6
    qk_norm: bool = True
    dropout: float = 0.1
    context_length: int = 20
    attention: str = "full"
    policy: str = "deterministic"
    action_tanh: bool = True
    timestep_embedding: bool = True  # as GPT2DTConfig's
    eval_context: int | None = None
    return_bins: int = 0  # as GPT2DTConfig's

    def build(self, action_low, action_high) -> TrajectoryModel:
        from .decision_transformer_qwen3 import DecisionTransformerQwen3

        return DecisionTransformerQwen3(
            self.state_dim,
            self.act_dim,
            n_layer=self.num_hidden_layers,
            n_head=self.num_attention_heads,
            n_kv_head=self.num_key_value_heads,
            head_dim=self.head_dim,
            intermediate_size=self.intermediate_size,
            rope_theta=self.rope_theta,
            rms_norm_eps=self.rms_norm_eps,
            qk_norm=self.qk_norm,
            dropout=self.dropout,
            **_dt_kwargs(self, action_low, action_high),
        )

    def transformers_fields(self) -> dict[str, Any]:
        return {"model_type": "decision_transformer_qwen3"}

    def qwen3_backbone_config(self) -> dict[str, Any]:
        """The ``transformers.Qwen3Config`` keyword arguments of a ``Qwen3Model`` that stands in
        for this backbone (``--init_backbone`` loads such a model's layers; see
        :data:`QWEN3_KEY_MAP`). The vocabulary is not the DT's: any size will do."""
        return {
            "hidden_size": self.hidden_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "intermediate_size": self.intermediate_size,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
        }


# transformers Qwen3Model (or Qwen3ForCausalLM, less its "model." prefix) -> this Qwen3 DT: the
# decoder layers and the final norm carry over name for name; the token embedding and LM head
# have no counterpart (the DT embeds returns, states and actions itself), and QK-norm weights
# exist only with qk_norm. Everything else (embed_timestep/return/state/action, embed_ln, the
# prediction heads) is the DT's own.
QWEN3_KEY_MAP = {
    "layers.{i}.input_layernorm.weight": "transformer.layers.{i}.input_layernorm.weight",
    "layers.{i}.self_attn.q_proj.weight": "transformer.layers.{i}.self_attn.q_proj.weight",
    "layers.{i}.self_attn.k_proj.weight": "transformer.layers.{i}.self_attn.k_proj.weight",
    "layers.{i}.self_attn.v_proj.weight": "transformer.layers.{i}.self_attn.v_proj.weight",
    "layers.{i}.self_attn.o_proj.weight": "transformer.layers.{i}.self_attn.o_proj.weight",
    "layers.{i}.self_attn.q_norm.weight": "transformer.layers.{i}.self_attn.q_norm.weight",
    "layers.{i}.self_attn.k_norm.weight": "transformer.layers.{i}.self_attn.k_norm.weight",
    "layers.{i}.post_attention_layernorm.weight": (
        "transformer.layers.{i}.post_attention_layernorm.weight"
    ),
    "layers.{i}.mlp.gate_proj.weight": "transformer.layers.{i}.mlp.gate_proj.weight",
    "layers.{i}.mlp.up_proj.weight": "transformer.layers.{i}.mlp.up_proj.weight",
    "layers.{i}.mlp.down_proj.weight": "transformer.layers.{i}.mlp.down_proj.weight",
    "norm.weight": "transformer.norm.weight",
}


@dataclass
class MLPBCConfig:
    """Behaviour cloning: an MLP from the last ``context_length`` states to the action."""

    state_dim: int
    act_dim: int
    hidden_size: int
    n_layer: int
    dropout: float = 0.1
    context_length: int = 1
    max_ep_len: int = 1000  # not a shape here: kept so every architecture states it

    def build(self, action_low, action_high) -> TrajectoryModel:
        from .mlp_bc import MLPBCModel

        return MLPBCModel(
            self.state_dim,
            self.act_dim,
            hidden_size=self.hidden_size,
            n_layer=self.n_layer,
            dropout=self.dropout,
            max_length=self.context_length,
            action_low=action_low,
            action_high=action_high,
        )

    def transformers_fields(self) -> dict[str, Any]:
        return {"model_type": "mlp_bc"}


ARCH_CONFIGS: dict[str, type] = {
    GPT2_DT: GPT2DTConfig,
    QWEN3_DT: Qwen3DTConfig,
    MLP_BC: MLPBCConfig,
}
ArchConfig = GPT2DTConfig | Qwen3DTConfig | MLPBCConfig


@dataclass
class ActingConfig:
    """Everything between the env and the model: what a user needs to play the policy.

    Observations enter as ``(obs - state_mean) / state_std``; a DT is conditioned on
    ``target / return_scale``, which falls by ``reward / return_scale`` each step ('delayed' mode
    keeps it fixed); timesteps count from 0 and must stay below ``max_ep_len``; the model sees the
    last ``context_length`` steps (``full`` attention: left-padded, masked) or, in ``window``
    attention, the whole history under a banded mask. Actions: see ``action_mapping``."""

    env: str  # this project's env name (hopper, humanoid, ...)
    gym_id: str  # the gymnasium id, version included (Hopper-v5)
    state_mean: list[float]
    state_std: list[float]
    return_scale: float
    action_low: list[float]
    action_high: list[float]
    max_ep_len: int
    context_length: int
    attention: str
    # Returns to condition on; "auto" (a model with a return head, return_bins > 0): each step's
    # return drawn from the head, tilted toward high returns by return_kappa.
    targets: list[float | str]
    conditioned: bool = True  # False for BC: it never sees a return
    mode: str = "normal"  # normal, delayed (returns on the last reward) or noise
    # bf16: the run evaluated under bf16 autocast (its weights are fp32 all the same); evaluating
    # the same way gives the run's numbers
    dtype: str = "fp32"
    action_mapping: str = ACTION_MAPPING
    acts_on: str = "the mean action (the stochastic head's too)"
    # The run's --return_kappa, auto's default tilt; folders written before the field have the
    # flag's default.
    return_kappa: float = DEFAULT_KAPPA


def _check_format_version(d: dict[str, Any], where: str) -> int:
    version = d.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise PretrainedError(
            f"{where} has format version {version}, newer than this code reads "
            f"({FORMAT_VERSION}): update this project to load it"
        )
    return version


def _required(cls: type) -> list[str]:
    return [f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING]


REQUIRED_ACTING = tuple(_required(ActingConfig))


@dataclass
class FolderConfig:
    """config.json as a whole."""

    architecture: str
    model: ArchConfig
    acting: ActingConfig
    provenance: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] | None = None
    format_version: int = FORMAT_VERSION

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "architecture": self.architecture,
        }
        out.update(self.model.transformers_fields())
        out.update(asdict(self.model))
        out["acting"] = asdict(self.acting)
        out["provenance"] = self.provenance
        if self.evaluation is not None:
            out["evaluation"] = self.evaluation
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config.json") -> FolderConfig:
        if not isinstance(d, dict):
            raise PretrainedError(f"{where} is not a JSON object: write it with export.py")
        if d.get("format") != FORMAT_NAME or "format_version" not in d:
            if d.get("model_type") == "decision_transformer":
                raise PretrainedError(
                    f"{where} is a transformers DecisionTransformerModel folder, which lacks the "
                    "state statistics and env to act: convert it with `python export.py "
                    "--from_transformers DIR --env ENV --dataset DATASET --out OUT`"
                )
            raise PretrainedError(
                f"{where} is not a model folder written by export.py (no format/format_version)"
            )
        version = _check_format_version(d, where)
        arch = d.get("architecture")
        if arch == MULTITASK_DT:
            raise PretrainedError(
                f"{where} holds a multi-task DT: load it with from_pretrained, which gives the "
                "model and each task's acting section (config.task_folder(i))"
            )
        if arch == "atari_dt":
            raise PretrainedError(
                f"{where} holds an Atari DT: load it with atari/pretrained_atari.py "
                "(from_pretrained_atari) or evaluate it with atari/evaluate_atari.py"
            )
        if arch not in ARCH_CONFIGS:
            raise PretrainedError(
                f"{where}: unknown architecture {arch!r}; this code loads {', '.join(ARCH_CONFIGS)}"
            )
        arch_cls = ARCH_CONFIGS[arch]
        names = {f.name for f in fields(arch_cls)}
        missing = [n for n in _required(arch_cls) if n not in d]
        if missing:
            raise PretrainedError(f"{where} lacks {arch} fields: {', '.join(missing)}")
        try:
            model = arch_cls(**{k: v for k, v in d.items() if k in names})
        except (TypeError, ValueError) as e:
            raise PretrainedError(f"{where}: bad {arch} fields ({one_line(e, 120)})") from None
        acting = d.get("acting")
        if not isinstance(acting, dict):
            raise PretrainedError(
                f"{where} has no 'acting' section (env, state statistics, action box, ...): "
                "re-export the model with export.py"
            )
        lacking = [k for k in REQUIRED_ACTING if k not in acting]
        if lacking:
            raise PretrainedError(
                f"{where} lacks what acting needs: {', '.join(lacking)}; re-export the model"
            )
        known = {f.name for f in fields(ActingConfig)}
        cfg = cls(
            architecture=arch,
            model=model,
            acting=ActingConfig(**{k: v for k, v in acting.items() if k in known}),
            provenance=d.get("provenance") or {},
            evaluation=d.get("evaluation"),
            format_version=version,
        )
        cfg.check(where)
        return cfg

    def check(self, where: str = "config.json") -> None:
        """Dimensions that must agree between the model and acting; one line naming the first."""
        m, a = self.model, self.acting
        for name, values, n in (
            ("state_mean", a.state_mean, m.state_dim),
            ("state_std", a.state_std, m.state_dim),
            ("action_low", a.action_low, m.act_dim),
            ("action_high", a.action_high, m.act_dim),
        ):
            if not isinstance(values, list) or len(values) != n:
                size = len(values) if isinstance(values, list) else type(values).__name__
                raise PretrainedError(
                    f"{where}: acting.{name} has {size} values, the model's dimension is {n}"
                )
            if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
                raise PretrainedError(f"{where}: acting.{name} holds a non-finite value")
        if any(s <= 0 for s in a.state_std):
            raise PretrainedError(f"{where}: acting.state_std must be positive")
        if not (isinstance(a.return_scale, int | float) and a.return_scale > 0):
            raise PretrainedError(f"{where}: acting.return_scale must be positive")
        if a.context_length != m.context_length or a.attention != getattr(m, "attention", "full"):
            raise PretrainedError(
                f"{where}: acting's context ({a.context_length}, {a.attention}) disagrees with the "
                "model's: re-export the model"
            )
        check_targets(a, getattr(m, "return_bins", 0), where)


def check_targets(acting: ActingConfig, return_bins: int, where: str) -> None:
    """``acting.targets`` are finite numbers or ``auto``, auto only with a return head, and
    ``acting.return_kappa`` is a finite number >= 0."""
    targets = acting.targets
    if not isinstance(targets, list) or not all(
        t == AUTO_TARGET or (isinstance(t, int | float) and math.isfinite(t)) for t in targets
    ):
        raise PretrainedError(
            f"{where}: acting.targets must be a list of finite numbers or auto, got {targets!r}"
        )
    if AUTO_TARGET in targets and not return_bins:
        raise PretrainedError(
            f"{where}: acting.targets holds auto but the model has no return head (return_bins "
            "0): re-export the model"
        )
    kappa = acting.return_kappa
    if not (isinstance(kappa, int | float) and math.isfinite(kappa) and kappa >= 0):
        raise PretrainedError(f"{where}: acting.return_kappa must be a finite number >= 0")


# ---------------------------------------------------------------------------------------------
# Saving and loading
# ---------------------------------------------------------------------------------------------

# Derived from config.json's action box, so not stored as weights (a multi-task model has one
# pair per task: tasks.<i>.action_scale, ...).
_BOX_BUFFERS = ("action_scale", "action_bias")


def _is_box_buffer(key: str) -> bool:
    return key.rsplit(".", 1)[-1] in _BOX_BUFFERS


def folder_state_dict(model: TrajectoryModel, architecture: str) -> dict[str, torch.Tensor]:
    """The weights as model.safetensors stores them: contiguous fp32 CPU tensors, named as
    transformers names them for ``gpt2_dt``."""
    state = {
        k: v.detach().to("cpu", torch.float32).contiguous()
        for k, v in model.state_dict().items()
        if not _is_box_buffer(k)
    }
    if architecture == GPT2_DT:
        state = to_transformers_names(state, model.hidden_size)
    return state


def save_pretrained(model: TrajectoryModel, config: FolderConfig, directory: str | Path) -> Path:
    """Write config.json and model.safetensors into ``directory`` (created; must be empty).
    The model card is the exporter's (it holds measured numbers); see export.py."""
    from safetensors.torch import save_file

    config.check()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if any(directory.iterdir()):
        raise PretrainedError(f"{directory} is not empty: pick a new folder")
    state = folder_state_dict(model, config.architecture)
    meta = {"format": FORMAT_NAME, "format_version": str(config.format_version)}
    save_file(state, str(directory / WEIGHTS_NAME), metadata=meta)
    text = json.dumps(config.to_dict(), indent=2) + "\n"
    (directory / CONFIG_NAME).write_text(text)
    return directory


_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def resolve_folder(path_or_repo_id: str | Path, revision: str | None = None) -> Path:
    """A local folder as is; anything else that reads as ``owner/name`` is fetched from the Hub
    through huggingface_hub's cache (a local folder never touches the network)."""
    path = Path(path_or_repo_id).expanduser()
    if path.is_dir():
        return path
    text = str(path_or_repo_id)
    looks_local = text.startswith((".", "/", "~")) or os.sep in text.replace("/", "", 1)
    if looks_local or not _REPO_ID.match(text):
        raise PretrainedError(
            f"no model folder at {text}: give a folder export.py wrote or a Hub repo id "
            "(owner/name)"
        )
    # The default waits 10 s per metadata request and retries; a user with no network should
    # hear so in a few seconds, not minutes.
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "5")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(
            text, revision=revision, allow_patterns=[CONFIG_NAME, WEIGHTS_NAME, CARD_NAME]
        )
    except Exception as e:  # offline, unknown repo, gated, bad revision: all one line
        raise PretrainedError(
            f"cannot fetch {text} from the Hugging Face Hub ({one_line(e, 140)}): check the repo "
            "id and your network, or pass a local folder"
        ) from None
    return Path(local)


def read_config_json(directory: str | Path) -> tuple[Any, Path]:
    """A model folder's config.json as parsed JSON (any folder of this format, the Atari DT's
    too), and its path; a missing or unreadable file is one line."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise PretrainedError(f"no {CONFIG_NAME} in {directory}: not a model folder")
    try:
        return json.loads(path.read_text()), path
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise PretrainedError(f"{path} is not readable JSON ({one_line(e, 100)})") from None


def read_config(directory: str | Path) -> FolderConfig:
    raw, path = read_config_json(directory)
    return FolderConfig.from_dict(raw, where=str(path))


def read_weights(directory: str | Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise PretrainedError(f"no {WEIGHTS_NAME} in {directory}: re-export the model")
    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # a torn or foreign file
        raise PretrainedError(
            f"{path} is not a readable safetensors file ({one_line(e, 100)})"
        ) from None


def build_from_config(config: FolderConfig) -> TrajectoryModel:
    a = config.acting
    low = np.asarray(a.action_low, dtype=np.float32)
    high = np.asarray(a.action_high, dtype=np.float32)
    try:
        return config.model.build(low, high)
    except (KeyError, TypeError, ValueError) as e:
        raise PretrainedError(
            f"cannot build the {config.architecture} its config.json describes ({one_line(e, 120)})"
        ) from None


def load_state(
    model: TrajectoryModel, state: dict, where: str, transformers_names: bool = False
) -> None:
    """Load weights into ``model`` (under transformers' names for a ``gpt2_dt`` folder); any
    missing, unexpected or misshaped tensor is one line naming the first few."""
    if transformers_names:
        try:
            state = from_transformers_names(state)
        except ValueError as e:
            raise PretrainedError(f"the weights in {where}: {one_line(e)}") from None
    own = {k: v for k, v in model.state_dict().items() if not _is_box_buffer(k)}
    missing = sorted(own.keys() - state.keys())
    unexpected = sorted(state.keys() - own.keys())
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:3])}{'...' if len(missing) > 3 else ''}")
        if unexpected:
            extra = "..." if len(unexpected) > 3 else ""
            parts.append(f"unexpected {', '.join(unexpected[:3])}{extra}")
        if shapes:
            parts.append(f"shapes {'; '.join(shapes[:2])}{'...' if len(shapes) > 2 else ''}")
        raise PretrainedError(
            f"the weights in {where} do not fit the model its config.json describes: "
            + "; ".join(parts)
        )
    model.load_state_dict(state, strict=False)  # strict apart from the box buffers, checked above


def from_pretrained(
    path_or_repo_id: str | Path,
    device: str | torch.device = "cpu",
    architecture: str | None = None,
    revision: str | None = None,
) -> TrajectoryModel:
    """The model in a folder export.py wrote, or in a Hub repo holding one, in eval mode.

    ``architecture`` (gpt2_dt, qwen3_dt, mlp_bc, multitask_dt) refuses a folder of another one.
    The folder's config is ``model.pretrained_config`` (a :class:`FolderConfig`): its ``acting``
    section says how to feed the model and map its actions (the model itself already maps tanh
    onto the box). A multi-task folder gives a ``MultiTaskDecisionTransformer`` whose config is
    a :class:`MultiTaskFolderConfig`: task i acts through ``model.task_model(i)`` with
    ``config.task_folder(i).acting``.
    """
    directory = resolve_folder(path_or_repo_id, revision)
    raw, path = read_config_json(directory)
    if isinstance(raw, dict) and raw.get("architecture") == MULTITASK_DT:
        config = MultiTaskFolderConfig.from_dict(raw, where=str(path))
    else:
        config = FolderConfig.from_dict(raw, where=str(path))
    if architecture is not None and config.architecture != architecture:
        raise PretrainedError(
            f"{path_or_repo_id} holds a {config.architecture} model, not a {architecture}"
        )
    if isinstance(config, MultiTaskFolderConfig):
        model = build_multitask_from_config(config)
        load_state(model, read_weights(directory), str(directory))
    else:
        model = build_from_config(config)
        load_state(model, read_weights(directory), str(directory), config.architecture == GPT2_DT)
    model.pretrained_config = config
    return model.to(device).eval()


def is_model_source(path: str) -> bool:
    """A model folder (its config.json names this format), or something that is no local path
    and reads as a Hub repo id: what evaluate.py and --init_from take instead of a run's
    checkpoint."""
    p = Path(path)
    if p.is_dir():
        config = p / CONFIG_NAME
        try:
            return config.is_file() and json.loads(config.read_text()).get("format") == FORMAT_NAME
        except (OSError, ValueError, AttributeError):
            return False
    # A missing checkpoint file (runs/x.pt) is reported as missing, not looked up on the Hub.
    return (
        not p.exists()
        and path.count("/") == 1
        and not path.startswith((".", "/", "~"))
        and p.suffix not in (".pt", ".pth", ".bin", ".safetensors")
    )


def unit_to_box(unit_actions: np.ndarray | torch.Tensor, acting: ActingConfig):
    """transformers' DecisionTransformerModel actions (tanh, in [-1, 1]) mapped onto the env's
    box as this project's model maps them (``ACTION_MAPPING``)."""
    low = np.asarray(acting.action_low, dtype=np.float32)
    high = np.asarray(acting.action_high, dtype=np.float32)
    scale, bias = (high - low) / 2, (high + low) / 2
    if isinstance(unit_actions, torch.Tensor):
        scale, bias = torch.as_tensor(scale), torch.as_tensor(bias)
        scale, bias = scale.to(unit_actions), bias.to(unit_actions)
    return unit_actions * scale + bias


def read_transformers_folder(
    directory: str | Path, context_length: int, attention: str = "full"
) -> tuple[GPT2DTConfig, dict[str, torch.Tensor]]:
    """A folder ``DecisionTransformerModel.save_pretrained`` wrote (``model.safetensors``, or an
    older ``pytorch_model.bin`` read with ``weights_only=True``): the GPT-2 DT config it
    describes and its weights under this project's names (see hf_interop.py). The context
    length K is not in transformers' config: the caller supplies it."""
    from .decision_transformer_qwen3 import _read_weights

    directory = Path(directory)
    path = directory / CONFIG_NAME
    if not path.is_file():
        raise PretrainedError(f"no config.json in {directory}: not a transformers model folder")
    try:
        hf = json.loads(path.read_text())
        fields_ = gpt2_dt_fields(hf if isinstance(hf, dict) else {})
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, ValueError) as e:
        raise PretrainedError(f"{path}: {one_line(e, 140)}") from None
    cfg = GPT2DTConfig(**fields_, context_length=int(context_length), attention=attention)
    try:
        state = dict(_read_weights(directory, skip=()))
    except FileNotFoundError as e:
        raise PretrainedError(one_line(e)) from None
    except Exception as e:  # a torn file, or a pickle that weights_only refuses
        raise PretrainedError(
            f"cannot read the weights in {directory} ({one_line(e, 120)})"
        ) from None
    try:
        return cfg, from_transformers_names(state)
    except ValueError as e:
        raise PretrainedError(f"the weights in {directory}: {one_line(e)}") from None


# ---------------------------------------------------------------------------------------------
# Multi-task folders: one DT over several bodies (models/multitask.py)
# ---------------------------------------------------------------------------------------------
#
# The same three files. config.json::
#
#     format, format_version   as every model folder's
#     architecture             "multitask_dt"
#     backbone                 "gpt2_dt" or "qwen3_dt": the architecture of ``model``
#     model                    that architecture's config of the template DT the shared parts
#                              (backbone, timestep and return embeddings, token LayerNorm) come
#                              from: the first task's state and action sizes, the longest
#                              episode cap of the tasks (the shared timestep embedding's size)
#     tasks                    per task, in the model's order: name, dataset, state_dim, act_dim
#                              and its ``acting`` section, a single-task folder's (env, gym id,
#                              state mean/std, return scale, action box, episode cap, context,
#                              targets, ...)
#     provenance, evaluation   where it came from; its measured returns, per task
#
# model.safetensors holds the model's state dict under its own names (``tasks.<i>.embed_state``,
# ...; the action bounds are config.json's, not weights). from_pretrained returns a
# MultiTaskDecisionTransformer whose ``pretrained_config`` is a MultiTaskFolderConfig;
# ``model.task_model(i)`` is task i's single-task view, which acts as a single-task folder's
# model does with ``config.task_folder(i).acting``.

MULTITASK_DT = "multitask_dt"
BACKBONES = (GPT2_DT, QWEN3_DT)


@dataclass
class TaskEntry:
    """One task of the folder: its name (``<env>-<dataset>``), dataset and how it acts."""

    name: str
    dataset: str
    acting: ActingConfig

    @property
    def state_dim(self) -> int:
        return len(self.acting.state_mean)

    @property
    def act_dim(self) -> int:
        return len(self.acting.action_low)

    def shape(self):
        """The task's ``TaskShape`` (models/multitask.py)."""
        from .multitask import TaskShape

        a = self.acting
        low = np.asarray(a.action_low, dtype=np.float32)
        high = np.asarray(a.action_high, dtype=np.float32)
        return TaskShape(self.state_dim, self.act_dim, a.max_ep_len, low, high)


@dataclass
class MultiTaskFolderConfig:
    """config.json of a multi-task folder as a whole (see the module docstring)."""

    backbone: str
    model: ArchConfig
    tasks: list[TaskEntry]
    provenance: dict[str, Any] = field(default_factory=dict)
    evaluation: dict[str, Any] | None = None
    format_version: int = FORMAT_VERSION
    architecture: str = MULTITASK_DT

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def task_index(self, name: str) -> int:
        if name not in self.task_names:
            raise PretrainedError(
                f"no task {name!r} in this model: its tasks are {', '.join(self.task_names)}"
            )
        return self.task_names.index(name)

    def task_folder(self, i: int) -> FolderConfig:
        """Task ``i`` as a single-task folder's config: what its view
        (``model.task_model(i)``) is, with the task's own acting section."""
        t = self.tasks[i]
        model = replace(self.model, state_dim=t.state_dim, act_dim=t.act_dim)
        provenance = {**self.provenance, "dataset": t.dataset, "env": t.acting.env, "task": t.name}
        return FolderConfig(self.backbone, model, t.acting, provenance)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "architecture": MULTITASK_DT,
            "backbone": self.backbone,
            "model": asdict(self.model),
            "tasks": [
                {
                    "name": t.name,
                    "dataset": t.dataset,
                    "state_dim": t.state_dim,
                    "act_dim": t.act_dim,
                    "acting": asdict(t.acting),
                }
                for t in self.tasks
            ],
            "provenance": self.provenance,
        }
        if self.evaluation is not None:
            out["evaluation"] = self.evaluation
        return out

    @classmethod
    def from_dict(cls, d: dict[str, Any], where: str = "config.json") -> MultiTaskFolderConfig:
        """``d``: config.json of a ``multitask_dt`` folder."""
        if d.get("format") != FORMAT_NAME:
            raise PretrainedError(f"{where} is not a model folder written by export.py (no format)")
        version = _check_format_version(d, where)
        backbone = d.get("backbone")
        if backbone not in BACKBONES:
            raise PretrainedError(
                f"{where}: a multi-task model's backbone must be one of {', '.join(BACKBONES)}, "
                f"got {backbone!r}: re-export the model"
            )
        arch_cls = ARCH_CONFIGS[backbone]
        raw_model, raw_tasks = d.get("model"), d.get("tasks")
        if not isinstance(raw_model, dict) or not isinstance(raw_tasks, list) or not raw_tasks:
            raise PretrainedError(f"{where} lacks its 'model' or 'tasks' section: re-export it")
        names = {f.name for f in fields(arch_cls)}
        try:
            model = arch_cls(**{k: v for k, v in raw_model.items() if k in names})
        except (TypeError, ValueError) as e:
            raise PretrainedError(f"{where}: bad {backbone} fields ({one_line(e, 120)})") from None
        known = {f.name for f in fields(ActingConfig)}
        tasks = []
        for i, raw in enumerate(raw_tasks):
            raw = raw if isinstance(raw, dict) else {}
            acting = raw.get("acting")
            if not isinstance(acting, dict):
                acting = {}
            lacking = [k for k in REQUIRED_ACTING if k not in acting]
            if lacking or not isinstance(raw.get("name"), str):
                what = ", ".join(lacking) or "name"
                raise PretrainedError(f"{where}: task {i} lacks {what}; re-export the model")
            entry = TaskEntry(
                raw["name"],
                str(raw.get("dataset", "")),
                ActingConfig(**{k: v for k, v in acting.items() if k in known}),
            )
            for size in ("state_dim", "act_dim"):
                if raw.get(size, getattr(entry, size)) != getattr(entry, size):
                    raise PretrainedError(
                        f"{where}: task {entry.name}'s {size} {raw[size]} disagrees with its "
                        f"acting section ({getattr(entry, size)}): re-export the model"
                    )
            tasks.append(entry)
        cfg = cls(
            backbone,
            model,
            tasks,
            d.get("provenance") or {},
            d.get("evaluation"),
            version,
        )
        cfg.check(where)
        return cfg

    def check(self, where: str = "config.json") -> None:
        """Each task's sizes against its acting section (a single-task folder's checks), and the
        template against the tasks; one line naming the first disagreement."""
        names = self.task_names
        if len(set(names)) != len(names):
            raise PretrainedError(f"{where}: task names repeat ({', '.join(names)})")
        for i, t in enumerate(self.tasks):
            self.task_folder(i).check(f"{where} (task {t.name})")
        first, longest = self.tasks[0], max(t.acting.max_ep_len for t in self.tasks)
        m = self.model
        if (m.state_dim, m.act_dim, m.max_ep_len) != (first.state_dim, first.act_dim, longest):
            raise PretrainedError(
                f"{where}: the model's sizes ({m.state_dim}, {m.act_dim}, {m.max_ep_len}) are "
                f"not its first task's with the longest episode cap ({first.state_dim}, "
                f"{first.act_dim}, {longest}): re-export the model"
            )


def build_multitask_from_config(config: MultiTaskFolderConfig) -> torch.nn.Module:
    """The model config.json describes, as the run built it (models/factory.py's
    build_multitask_model: the template from the first task, then each task's parts)."""
    from .multitask import MultiTaskDecisionTransformer

    shapes = [t.shape() for t in config.tasks]
    try:
        template = config.model.build(shapes[0].action_low, shapes[0].action_high)
        return MultiTaskDecisionTransformer(template, shapes)
    except (KeyError, TypeError, ValueError) as e:
        raise PretrainedError(
            f"cannot build the multi-task model its config.json describes ({one_line(e, 120)})"
        ) from None
