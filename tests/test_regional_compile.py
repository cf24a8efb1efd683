"""--compile compiles each transformer block on its own (regional compilation): training with it
matches eager, the state dict keeps its names, and one compile serves every layer."""

import copy
import shutil

import pytest
import torch
from decision_transformer.models.decision_transformer import DecisionTransformer
from decision_transformer.models.decision_transformer_qwen3 import DecisionTransformerQwen3
from decision_transformer.run.parallel import compile_regions
from decision_transformer.training.seq_trainer import masked_action_mse

S, A, K = 5, 3, 4


@pytest.fixture(autouse=True)
def fresh_dynamo(one_thread):
    yield
    torch._dynamo.reset()


def make(kind: str, n_layer: int):
    torch.manual_seed(0)
    if kind == "qwen3":  # dropout 0: compiled dropout draws its noise differently from eager
        return DecisionTransformerQwen3(
            S, A, 16, max_length=K, max_ep_len=100, n_layer=n_layer, n_head=2, n_kv_head=1,
            dropout=0.0,
        )  # fmt: skip
    return DecisionTransformer(
        S, A, 16, max_length=K, max_ep_len=100, n_layer=n_layer, n_head=2,
        resid_pdrop=0.0, attn_pdrop=0.0, embd_pdrop=0.0,
    )  # fmt: skip


def train(model, steps: int = 3) -> list[float]:
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(3)
    losses = []
    for i in range(steps):
        states, rtg = torch.randn(2, K, S, generator=g), torch.randn(2, K, 1, generator=g)
        actions = torch.rand(2, K, A, generator=g) * 2 - 1
        mask = torch.ones(2, K)
        mask[0, : i + 1] = 0  # always padded: one graph
        ts = torch.arange(K).repeat(2, 1)
        _, preds, _ = model(states, actions, None, rtg, ts, attention_mask=mask)
        loss = masked_action_mse(preds, actions, mask)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


@pytest.mark.parametrize("kind", ["qwen3", "gpt2"])
def test_regional_compile_traces_one_block_for_all_layers(kind):
    """Graph capture and autograd through the compiled blocks (aot_eager: no C++ build, quick)."""
    eager = make(kind, n_layer=2)
    compiled = copy.deepcopy(eager)
    compile_regions(compiled, backend="aot_eager")
    assert compiled.state_dict().keys() == eager.state_dict().keys()
    torch._dynamo.reset()
    counters = torch._dynamo.utils.counters
    counters.clear()
    want, got = train(eager), train(compiled)
    assert counters["stats"]["unique_graphs"] == 1  # two layers, one compile
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for p, q in zip(compiled.parameters(), eager.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-6)


@pytest.mark.skipif(shutil.which("cc") is None, reason="torch.compile's CPU backend needs cc")
def test_regional_compile_with_inductor_matches_eager():
    """The real backend, a 1-layer tiny model (cold start ~40-90 s on 2 busy cores: C++ builds
    of the forward and backward kernels; inductor's cache makes reruns quicker)."""
    eager = make("qwen3", n_layer=1)
    compiled = copy.deepcopy(eager)
    compile_regions(compiled)
    torch.testing.assert_close(train(compiled), train(eager), rtol=1e-4, atol=1e-5)
