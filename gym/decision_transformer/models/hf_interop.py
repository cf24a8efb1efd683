"""The GPT-2 DT and transformers' ``DecisionTransformerModel``: the same network, other names.

Facts from transformers' ``modeling_decision_transformer.py`` that the mapping rests on:

* its GPT-2 encoder (``encoder.*``) is this project's ``transformer.*`` parameter for parameter
  (both store GPT-2's Conv1D weights ``[in, out]``), plus a token embedding ``encoder.wte`` the
  DT never uses and a position embedding ``encoder.wpe``;
* it calls the encoder with ``position_ids`` all zero, so ``wpe[0]`` is added to every token
  right after ``embed_ln``. Adding a constant after a LayerNorm is adding it to the LayerNorm's
  bias: importing folds ``wpe[0]`` into ``embed_ln.bias``; exporting stores a zero row;
* its action head is ``Sequential(Linear, Tanh)`` (``predict_action.0.*``) and stops at tanh,
  so its actions are in [-1, 1]; this project's head is the Linear itself and maps tanh onto the
  env's box (``pretrained.ACTION_MAPPING``);
* its config has no state statistics, env, return scale or context length.

Errors here are ValueErrors naming the problem; ``pretrained.py`` adds where and the fix.
"""

from __future__ import annotations

from typing import Any

import torch

from .trajectory_gpt2 import ACTIVATIONS

_OURS, _THEIRS = "transformer.", "encoder."
_HEAD_OURS, _HEAD_THEIRS = "predict_action.", "predict_action.0."


def to_transformers_names(state: dict[str, torch.Tensor], hidden_size: int) -> dict:
    """This project's GPT-2 DT state dict under transformers' names, with the zero token and
    position rows its encoder owns. The stochastic head (``predict_action.mu/log_std``) keeps
    its names: transformers has no counterpart (such a folder is not transformers-compatible)."""
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name.startswith(_OURS):
            name = _THEIRS + name[len(_OURS) :]
        elif name in ("predict_action.weight", "predict_action.bias"):
            name = _HEAD_THEIRS + name[len(_HEAD_OURS) :]
        out[name] = tensor
    out["encoder.wte.weight"] = torch.zeros(1, hidden_size)
    out["encoder.wpe.weight"] = torch.zeros(1, hidden_size)
    return out


def from_transformers_names(state: dict[str, torch.Tensor]) -> dict:
    """transformers' names back to this project's, ``wpe[0]`` folded into ``embed_ln.bias``.
    Buffers older transformers versions saved (``attn.bias``/``attn.masked_bias``) are dropped."""
    state = dict(state)
    state.pop("encoder.wte.weight", None)
    wpe = state.pop("encoder.wpe.weight", None)
    if wpe is None:
        raise ValueError("no encoder.wpe.weight: not a DecisionTransformerModel's weights")
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name.startswith(_THEIRS):
            if name.endswith((".attn.bias", ".attn.masked_bias")):
                continue  # causal-mask buffers, not weights
            name = _OURS + name[len(_THEIRS) :]
        elif name.startswith(_HEAD_THEIRS):
            name = _HEAD_OURS + name[len(_HEAD_THEIRS) :]
        out[name] = tensor
    if wpe is not None and "embed_ln.bias" in out:
        if wpe.ndim != 2 or wpe.shape[1] != out["embed_ln.bias"].shape[0]:
            raise ValueError(
                f"encoder.wpe.weight {tuple(wpe.shape)} does not fit hidden size "
                f"{out['embed_ln.bias'].shape[0]}"
            )
        out["embed_ln.bias"] = out["embed_ln.bias"] + wpe[0].to(out["embed_ln.bias"].dtype)
    return out


# transformers' GPT-2 options this model has no code for, with the value that it matches.
_UNSUPPORTED = (
    ("add_cross_attention", False),
    ("scale_attn_weights", True),
    ("scale_attn_by_inverse_layer_idx", False),
)


def gpt2_dt_fields(hf: dict[str, Any]) -> dict[str, Any]:
    """The GPT2DTConfig fields a transformers ``decision_transformer`` config.json describes
    (all but the context length, which it does not record)."""
    if hf.get("model_type") != "decision_transformer":
        raise ValueError(
            f"a {hf.get('model_type')!r} model, not transformers' decision_transformer"
        )
    for key, fine in _UNSUPPORTED:
        if key in hf and hf[key] != fine:
            raise ValueError(f"{key}={hf[key]} is not supported by this GPT-2 DT")
    if hf.get("return_bins"):  # this project's folder of a return-head model (--return_bins)
        raise ValueError(
            f"a return-head model (return_bins {hf['return_bins']}, tokens (s, R, a)), not a "
            "DecisionTransformerModel: use this folder as is"
        )
    act = hf.get("activation_function", "relu")
    if act not in ACTIVATIONS:
        raise ValueError(f"activation_function {act!r} is not one of {list(ACTIVATIONS)}")
    try:
        return dict(
            state_dim=int(hf["state_dim"]),
            act_dim=int(hf["act_dim"]),
            hidden_size=int(hf["hidden_size"]),
            max_ep_len=int(hf["max_ep_len"]),
            n_layer=int(hf.get("n_layer", hf.get("num_hidden_layers"))),
            n_head=int(hf.get("n_head", hf.get("num_attention_heads"))),
            n_inner=hf.get("n_inner"),
            activation_function=act,
            resid_pdrop=float(hf.get("resid_pdrop", 0.1)),
            embd_pdrop=float(hf.get("embd_pdrop", 0.1)),
            attn_pdrop=float(hf.get("attn_pdrop", 0.1)),
            layer_norm_epsilon=float(hf.get("layer_norm_epsilon", 1e-5)),
            action_tanh=bool(hf.get("action_tanh", True)),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"lacks a field the DT needs ({e})") from None
