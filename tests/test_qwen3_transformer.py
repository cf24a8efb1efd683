"""The Qwen3 backbone against transformers' Qwen3Model, the DT on it, and its memory estimate."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from decision_transformer.models.decision_transformer_qwen3 import (
    DecisionTransformerQwen3,
    load_backbone_from_pretrained,
)
from decision_transformer.models.memory import estimate_training_memory
from decision_transformer.models.qwen3_transformer import (
    Qwen3Config,
    Qwen3Transformer,
    RMSNormFunction,
    grouped_attention,
)

transformers = pytest.importorskip("transformers")


pytestmark = pytest.mark.usefixtures("one_thread")


# GQA (6 query heads on 2 key/value heads) with head_dim 20 != embed_dim / n_head = 8.
DIMS = dict(embed_dim=48, n_layer=2, n_head=6, n_kv_head=2, head_dim=20, intermediate_size=72)


def hf_config(dims=DIMS, attn="sdpa", **overrides):
    return transformers.Qwen3Config(
        vocab_size=11,
        hidden_size=dims["embed_dim"],
        num_hidden_layers=dims["n_layer"],
        num_attention_heads=dims["n_head"],
        num_key_value_heads=dims["n_kv_head"],
        head_dim=dims["head_dim"],
        intermediate_size=dims["intermediate_size"],
        rope_theta=1e6,
        rms_norm_eps=1e-6,
        attn_implementation=attn,
        **overrides,
    )


def random_hf_model(attn="sdpa", dims=DIMS, seed=0):
    torch.manual_seed(seed)
    model = transformers.Qwen3Model(hf_config(dims, attn)).eval()
    # Larger weights than the init, and non-unit norm scales, so every term shows in the output.
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(1 + 0.2 * torch.randn_like(p) if "norm" in name else 0.15 * torch.randn_like(p))
    return model


def backbone_state(hf_model):
    return {k: v for k, v in hf_model.state_dict().items() if not k.startswith("embed_tokens.")}


def left_padding_mask(B=4, T=13):
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, :5] = 0
    mask[2, : T - 1] = 0  # all padding but the last token
    return mask


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_hidden_states_equal_transformers_qwen3(attn):
    hf = random_hf_model(attn)
    ours = Qwen3Transformer(Qwen3Config(**DIMS)).eval()
    ours.load_state_dict(backbone_state(hf), strict=True)
    x = torch.randn(4, 13, DIMS["embed_dim"])
    mask = left_padding_mask()
    with torch.no_grad():
        for m in (mask, None):
            want = hf(inputs_embeds=x, attention_mask=m).last_hidden_state
            got = ours(x, m)
            assert torch.isfinite(got).all()  # padded queries too
            real = (m if m is not None else torch.ones_like(mask)).bool()
            torch.testing.assert_close(got[real], want[real], rtol=0, atol=1e-5)


def test_state_dict_names_are_transformers_minus_embeddings():
    hf = random_hf_model()
    ours = Qwen3Transformer(Qwen3Config(**DIMS))
    assert set(ours.state_dict()) == set(backbone_state(hf))
    assert ours.num_params() == sum(v.numel() for v in backbone_state(hf).values())


def test_grouped_attention_equals_sdpa():
    # The explicit path serves bf16 and dropout on CPU; check its math in fp32 against SDPA.
    torch.manual_seed(0)
    B, H, Hkv, T, hd = 3, 6, 2, 9, 8
    q, k, v = torch.randn(B, H, T, hd), torch.randn(B, Hkv, T, hd), torch.randn(B, Hkv, T, hd)
    keys = torch.ones(B, T, dtype=torch.bool)
    keys[0, :4] = False
    mask = (torch.ones(T, T, dtype=torch.bool).tril() & keys[:, None, None, :]) | torch.eye(
        T, dtype=torch.bool
    )
    for m in (mask, None):
        want = F.scaled_dot_product_attention(
            q, k, v, attn_mask=m, is_causal=m is None, enable_gqa=True
        )
        torch.testing.assert_close(grouped_attention(q, k, v, m, 0.0), want)


def test_bf16_autocast_training_step_is_close_and_finite():
    hf = random_hf_model()
    ours = Qwen3Transformer(Qwen3Config(**DIMS))
    ours.load_state_dict(backbone_state(hf))
    x = torch.randn(4, 13, DIMS["embed_dim"])
    mask = left_padding_mask()
    with torch.no_grad():
        ref = ours(x, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = ours(x, mask)
    real = mask.bool()
    assert (out.float() - ref)[real].abs().mean() < 0.05 * ref[real].abs().mean()
    out.float().square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in ours.parameters())


def test_rmsnorm_backward():
    x = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: RMSNormFunction.apply(a, b, 1e-6), (x, w))


def test_config_derives_sizes_and_rejects_bad_heads():
    cfg = Qwen3Config(embed_dim=64, n_layer=1, n_head=4, n_kv_head=2, mlp_ratio=2.5)
    assert (cfg.head_dim, cfg.intermediate_size) == (16, 160)
    assert Qwen3Config(embed_dim=60, n_layer=1, n_head=8, n_kv_head=8, head_dim=16).head_dim == 16
    with pytest.raises(ValueError, match=r"--n_head \(6\).*--n_kv_head \(4\)"):
        Qwen3Config(embed_dim=48, n_layer=1, n_head=6, n_kv_head=4)
    with pytest.raises(ValueError, match=r"--embed_dim \(50\).*--n_head \(4\).*--head_dim"):
        Qwen3Config(embed_dim=50, n_layer=1, n_head=4, n_kv_head=2)


def test_parameter_counts_of_named_sizes():
    qwen3_06b = Qwen3Config(
        embed_dim=1024, n_layer=28, n_head=16, n_kv_head=8, head_dim=128, intermediate_size=3072
    )
    big = Qwen3Config(embed_dim=2048, n_layer=24, n_head=16, n_kv_head=8, mlp_ratio=5.4)
    with torch.device("meta"):
        assert Qwen3Transformer(qwen3_06b).num_params() == 440_467_456
        assert abs(Qwen3Transformer(big).num_params() - 1.93e9) < 0.01e9


def make_dt(**overrides):
    kwargs = dict(
        hidden_size=DIMS["embed_dim"],
        max_length=5,
        max_ep_len=100,
        action_low=-0.4,
        action_high=0.4,
        n_layer=DIMS["n_layer"],
        n_head=DIMS["n_head"],
        n_kv_head=DIMS["n_kv_head"],
        head_dim=DIMS["head_dim"],
        intermediate_size=DIMS["intermediate_size"],
    )
    return DecisionTransformerQwen3(7, 3, **{**kwargs, **overrides})


def test_decision_transformer_qwen3_shapes_and_action_bounds():
    torch.manual_seed(0)
    model = make_dt().eval()
    assert isinstance(model.transformer, Qwen3Transformer)
    with torch.no_grad():  # big head weights so tanh saturates and the bounds show
        model.predict_action.weight.mul_(100)
    B, T = 4, 5
    states, actions = torch.randn(B, T, 7), torch.randn(B, T, 3)
    rtg, timesteps = torch.randn(B, T, 1), torch.arange(T).repeat(B, 1)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, :3] = 0
    s, a, r = model(states, actions, None, rtg, timesteps, attention_mask=mask)
    assert (s.shape, a.shape, r.shape) == ((B, T, 7), (B, T, 3), (B, T, 1))
    assert a.abs().max() <= 0.4 + 1e-6 and a.abs().max() > 0.39
    # Histories shorter than max_length are left-padded inside get_action.
    for t in (2, 5, 8):
        act = model.get_action(
            torch.randn(t, 7), torch.randn(t, 3), None, torch.randn(t, 1), torch.arange(t)
        )
        assert act.shape == (3,) and torch.isfinite(act).all() and act.abs().max() <= 0.4 + 1e-6


def test_without_qk_norm():
    model = Qwen3Transformer(Qwen3Config(**DIMS, qk_norm=False))
    assert not any("q_norm" in k or "k_norm" in k for k in model.state_dict())
    assert model(torch.randn(2, 7, DIMS["embed_dim"])).shape == (2, 7, DIMS["embed_dim"])


def test_decision_transformer_qwen3_rejects_gpt2_only_flags():
    with pytest.raises(TypeError, match="n_inner"):
        make_dt(n_inner=64)


def save_hf_checkpoint(directory, dims=DIMS, causal_lm=True, **save_kwargs):
    torch.manual_seed(1)
    cls = transformers.Qwen3ForCausalLM if causal_lm else transformers.Qwen3Model
    hf = cls(hf_config(dims))
    hf.save_pretrained(directory, **save_kwargs)
    state = hf.state_dict()
    return {k.removeprefix("model."): v for k, v in state.items()}


@pytest.mark.parametrize("layout", ["causal_lm", "base_model", "sharded", "bin"])
def test_init_backbone_loads_checkpoint_directory(tmp_path, layout):
    if layout == "bin":
        want = save_hf_checkpoint(tmp_path, causal_lm=False)
        (tmp_path / "model.safetensors").unlink()
        torch.save(want, tmp_path / "pytorch_model.bin")
    elif layout == "sharded":
        want = save_hf_checkpoint(tmp_path, max_shard_size="20KB")
        assert (tmp_path / "model.safetensors.index.json").is_file()
    else:
        want = save_hf_checkpoint(tmp_path, causal_lm=layout == "causal_lm")
    model = make_dt()
    load_backbone_from_pretrained(model, tmp_path)
    got = model.transformer.state_dict()
    assert set(got) == {k for k in want if not k.startswith(("embed_tokens.", "lm_head."))}
    for name, tensor in got.items():
        torch.testing.assert_close(tensor, want[name], rtol=0, atol=0)


def test_init_backbone_names_mismatched_fields(tmp_path):
    save_hf_checkpoint(tmp_path)
    model = make_dt(hidden_size=36, head_dim=None, n_layer=3)
    with pytest.raises(ValueError) as err:
        load_backbone_from_pretrained(model, tmp_path)
    assert "hidden_size 48 vs --embed_dim 36" in str(err.value)
    assert "num_hidden_layers 2 vs --n_layer 3" in str(err.value)
    assert "head_dim 20 vs --head_dim 6" in str(err.value)
    with pytest.raises(ValueError, match="unexpected.*q_norm"):
        load_backbone_from_pretrained(make_dt(qk_norm=False), tmp_path)
    with pytest.raises(FileNotFoundError):
        load_backbone_from_pretrained(make_dt(), tmp_path / "nowhere")
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_backbone_from_pretrained(make_dt(), tmp_path)


def saved_activation_bytes(model, x, mask, dtype):
    """Bytes autograd keeps for backward, each storage once, parameters excluded."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(t):
        if t.untyped_storage().data_ptr() not in params:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with (
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
        torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32),
    ):
        model(x, mask)
    return sum(storages.values())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("dropout, qk_norm", [(0.0, True), (0.1, True), (0.0, False)])
def test_memory_estimate_matches_what_training_holds(dtype, dropout, qk_norm):
    cfg = Qwen3Config(**DIMS, dropout=dropout, qk_norm=qk_norm)
    model = Qwen3Transformer(cfg).train()
    B, T = 6, 15
    x = torch.randn(B, T, cfg.embed_dim, requires_grad=True)
    mask = torch.ones(B, T)
    mask[0, :4] = 0
    est = estimate_training_memory(cfg, B, T, dtype, n_extra_params=1000)

    # Parameters, gradients and AdamW states: exact.
    n = model.num_params() + 1000
    assert est["weights"] == est["grads"] == 4 * n and est["adamw"] == 8 * n
    opt = torch.optim.AdamW(model.parameters())
    model(x, mask).sum().backward()
    opt.step()
    state_bytes = sum(t.nbytes for s in opt.state.values() for t in s.values() if t.dim())
    assert state_bytes == est["adamw"] - 8 * 1000
    # Activations: what autograd saves, to within the RoPE tables.
    got = saved_activation_bytes(model, x, mask, dtype)
    assert 0.98 < est["activations"] / got <= 1.0
    assert est["total"] == sum(v for k, v in est.items() if k != "total")


def allocation_peak(fn) -> int:
    """Peak bytes allocated (net of frees) while ``fn`` runs, from the profiler's allocator events:
    exact and deterministic, unlike RSS."""
    from torch._C._profiler import _EventType

    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        fn()
    events, stack = [], list(prof.profiler.kineto_results.experimental_event_tree())
    while stack:
        e = stack.pop()
        stack.extend(e.children)
        if e.tag == _EventType.Allocation:
            events.append(e)
    current = peak = 0
    for e in sorted(events, key=lambda e: e.start_time_ns):
        current += e.extra_fields.alloc_size
        peak = max(peak, current)
    return peak


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_memory_estimate_against_measured_peak(dtype):
    """A steady-state training step: weights and AdamW states persist, activations and gradients
    come and go. Its measured peak must land near the estimate's total."""
    torch.manual_seed(0)
    cfg = Qwen3Config(embed_dim=192, n_layer=3, n_head=6, n_kv_head=2, dropout=0.1)
    model = Qwen3Transformer(cfg).train()
    opt = torch.optim.AdamW(model.parameters())
    B, T = 16, 60
    x = torch.randn(B, T, cfg.embed_dim)
    mask = torch.ones(B, T)
    mask[: B // 4, : T // 5] = 0

    def step():
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            out = model(x, mask)
        out.float().square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # creates the AdamW states
    persistent = sum(p.nbytes for p in model.parameters()) + sum(
        t.nbytes for s in opt.state.values() for t in s.values()
    )
    peak = persistent + allocation_peak(step)
    est = estimate_training_memory(cfg, B, T, dtype)
    # The estimate counts every gradient on top of every activation, though backward frees the
    # latter while it allocates the former, and leaves out backward's transients: about even.
    assert 0.8 < peak / est["total"] < 1.2, (peak, est)


def test_padding_rows_get_finite_gradients():
    model = make_dt(dropout=0.1).train()
    B, T = 3, 5
    mask = torch.ones(B, T, dtype=torch.long)
    mask[0, :4] = 0
    _, a, _ = model(
        torch.randn(B, T, 7),
        torch.randn(B, T, 3),
        None,
        torch.randn(B, T, 1),
        torch.arange(T).repeat(B, 1),
        attention_mask=mask,
    )
    (a * mask[..., None]).square().mean().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert np.isfinite(a.detach().numpy()).all()
