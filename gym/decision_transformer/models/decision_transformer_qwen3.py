"""The Decision Transformer on a Qwen3-style backbone, and loading that backbone from a checkpoint.

Everything but the backbone (token embeddings, prediction heads, windowing, action squashing) is
:class:`DecisionTransformer`'s, so trainers and evaluators treat both alike.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open

from .decision_transformer import DecisionTransformer
from .qwen3_transformer import Qwen3Config, Qwen3Transformer


class DecisionTransformerQwen3(DecisionTransformer):
    """``DecisionTransformer(state_dim, act_dim, hidden_size, ..., n_layer=, n_head=, n_kv_head=)``
    with a :class:`Qwen3Transformer` backbone; ``hidden_size`` is the backbone's ``embed_dim``."""

    def build_backbone(
        self, hidden_size: int, window: int | None = None, **kwargs
    ) -> Qwen3Transformer:
        """``kwargs``: :class:`Qwen3Config` fields (``n_layer``, ``n_head``, ``n_kv_head`` are
        required). GPT-2-only keywords (n_inner, resid_pdrop, ...) are rejected rather than
        ignored, so a call written for the GPT-2 model can't silently run with settings it
        didn't ask for."""
        kwargs.setdefault("dropout", 0.1)  # the DT's, as GPT-2's pdrops (the config's is 0)
        return Qwen3Transformer(Qwen3Config(embed_dim=hidden_size, window=window, **kwargs))


# (transformers config.json field, our flag, our config attribute): what fixes tensor shapes.
_SHAPE_FIELDS = (
    ("hidden_size", "--embed_dim", "embed_dim"),
    ("num_hidden_layers", "--n_layer", "n_layer"),
    ("num_attention_heads", "--n_head", "n_head"),
    ("num_key_value_heads", "--n_kv_head", "n_kv_head"),
    ("head_dim", "--head_dim", "head_dim"),
    ("intermediate_size", "--intermediate_size/--mlp_ratio", "intermediate_size"),
)


def load_backbone_from_pretrained(model: DecisionTransformerQwen3, directory: str | Path) -> None:
    """Copy the decoder layers and final norm of a local transformers Qwen3 checkpoint into
    ``model.transformer`` (what ``--init_backbone DIR`` does).

    ``directory`` holds ``config.json`` and ``model.safetensors``, sharded ``*.safetensors`` with
    their index json, or ``pytorch_model.bin`` (read with ``weights_only=True``). The ``model.``
    prefix of a causal-LM checkpoint is stripped and ``embed_tokens``/``lm_head`` are dropped: the
    DT embeds its own tokens. A model on the meta device gets the checks but no tensors read.
    Raises ValueError naming every config field that doesn't match the
    model, and FileNotFoundError when no config or weights are found.
    """
    directory = Path(directory)
    backbone = model.transformer
    if not isinstance(backbone, Qwen3Transformer):  # e.g. the GPT-2 DecisionTransformer
        name = type(backbone).__name__
        raise ValueError(f"a Qwen3 checkpoint needs a Qwen3 backbone, not {name}")
    cfg = backbone.config
    _check_config(directory, cfg)
    if any(p.is_meta for p in backbone.parameters()):
        return  # a rank that receives its weights from rank 0 reads none of the file

    state = {
        name.removeprefix("model."): tensor
        for name, tensor in _read_weights(directory, skip=("embed_tokens.", "lm_head."))
    }
    try:
        missing, unexpected = backbone.load_state_dict(state, strict=False)
    except RuntimeError as e:  # shapes that disagree with the checkpoint's own config.json
        raise ValueError(f"the checkpoint in {directory} doesn't fit this backbone: {e}") from None
    if missing or unexpected:
        hint = " (a --no_qk_norm model can't take QK-norm weights)" if not cfg.qk_norm else ""
        raise ValueError(
            f"the checkpoint in {directory} doesn't fit this backbone{hint}: "
            f"missing {missing[:4]}{'...' if len(missing) > 4 else ''}, "
            f"unexpected {unexpected[:4]}{'...' if len(unexpected) > 4 else ''}"
        )


def _check_config(directory: Path, cfg: Qwen3Config) -> None:
    """The checkpoint's config.json against the backbone's: a ValueError naming every shape
    field that differs, a warning for each other value the layers were trained with."""
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"no config.json in {directory}")
    hf = json.loads(config_path.read_text())
    # Both may be absent or null in config.json; transformers then derives them like this.
    if not hf.get("num_key_value_heads"):
        hf["num_key_value_heads"] = hf.get("num_attention_heads")
    if not hf.get("head_dim") and hf.get("hidden_size") and hf.get("num_attention_heads"):
        hf["head_dim"] = hf["hidden_size"] // hf["num_attention_heads"]
    mismatched = [
        f"{field} {hf.get(field)} vs {flag} {getattr(cfg, attr)}"
        for field, flag, attr in _SHAPE_FIELDS
        if hf.get(field) != getattr(cfg, attr)
    ]
    if mismatched:
        raise ValueError(
            f"the checkpoint in {directory} doesn't fit this backbone: " + "; ".join(mismatched)
        )
    # Not shapes, so loading works, but the pretrained layers were trained with these values.
    rope_theta = hf.get("rope_theta", (hf.get("rope_parameters") or {}).get("rope_theta"))
    for name, theirs, ours in (
        ("rope_theta", rope_theta, cfg.rope_theta),
        ("rms_norm_eps", hf.get("rms_norm_eps"), cfg.rms_norm_eps),
    ):
        if theirs is not None and float(theirs) != float(ours):
            warnings.warn(
                f"{directory}: the checkpoint's {name} is {theirs}, this model's {ours}",
                stacklevel=3,
            )


def _read_weights(directory: Path, skip: tuple[str, ...]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for the checkpoint in ``directory``, whichever layout transformers
    saved, without reading tensors whose name (less ``model.``) starts with one of ``skip``:
    Qwen3-0.6B's token embedding alone is 40% of its file."""
    if (directory / "model.safetensors").is_file():
        files = [directory / "model.safetensors"]
    elif (directory / "model.safetensors.index.json").is_file():
        files = _shards(directory / "model.safetensors.index.json")
    elif (directory / "pytorch_model.bin").is_file():
        files = [directory / "pytorch_model.bin"]
    elif (directory / "pytorch_model.bin.index.json").is_file():
        files = _shards(directory / "pytorch_model.bin.index.json")
    else:
        raise FileNotFoundError(
            f"no model.safetensors, sharded *.safetensors index or pytorch_model.bin in {directory}"
        )
    for file in files:
        if file.suffix == ".safetensors":
            with safe_open(file, framework="pt", device="cpu") as f:
                for name in f.keys():
                    if not name.removeprefix("model.").startswith(skip):
                        yield name, f.get_tensor(name)
        else:  # memory-mapped, so skipped tensors are never read either
            state = torch.load(file, map_location="cpu", weights_only=True, mmap=True)
            for name, tensor in state.items():
                if not name.removeprefix("model.").startswith(skip):
                    yield name, tensor


def _shards(index_path: Path) -> list[Path]:
    weight_map = json.loads(index_path.read_text())["weight_map"]
    files = [index_path.parent / name for name in sorted(set(weight_map.values()))]
    for file in files:
        if not file.is_file():
            raise FileNotFoundError(f"{index_path.name} lists {file.name}, which is missing")
    return files
