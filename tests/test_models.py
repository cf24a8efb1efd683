"""The GPT-2 backbone against transformers' GPT2Model, and the DT/BC interfaces."""

import pytest
import torch
import transformers
from decision_transformer.models.decision_transformer import DecisionTransformer
from decision_transformer.models.mlp_bc import MLPBCModel
from decision_transformer.models.trajectory_gpt2 import GPT2Config, TrajectoryGPT2


@pytest.mark.parametrize("act", ["relu", "gelu_new"])
def test_backbone_equals_transformers_gpt2_without_positions(act):
    torch.manual_seed(0)
    cfg = GPT2Config(n_embd=64, n_layer=3, n_head=4, activation_function=act)
    ours = TrajectoryGPT2(cfg).eval()
    ref = transformers.GPT2Model(
        transformers.GPT2Config(
            vocab_size=1,
            n_embd=64,
            n_layer=3,
            n_head=4,
            n_positions=64,
            activation_function=act,
        )
    ).eval()
    missing, unexpected = ref.load_state_dict(ours.state_dict(), strict=False)
    assert set(missing) <= {"wte.weight", "wpe.weight"} and not unexpected
    with torch.no_grad():
        ref.wpe.weight.zero_()  # the original DT's only change to GPT-2

    B, T = 3, 12
    x = torch.randn(B, T, 64)
    mask = torch.ones(B, T, dtype=torch.long)
    mask[1, :4] = 0  # left padding
    mask[2, :-1] = 0  # all padding but one token
    with torch.no_grad():
        got = ours(x, mask)
        want = ref(inputs_embeds=x, attention_mask=mask).last_hidden_state
    real = mask.bool()
    torch.testing.assert_close(got[real], want[real], atol=1e-5, rtol=1e-5)
    assert torch.isfinite(got).all()


def test_dt_interface_and_action_bounds():
    torch.manual_seed(0)
    model = DecisionTransformer(
        state_dim=5,
        act_dim=3,
        hidden_size=32,
        max_length=4,
        max_ep_len=50,
        n_layer=1,
        n_head=2,
        action_low=-0.4,
        action_high=0.4,
    )
    B, T = 2, 4
    states, preds, rets = model(
        torch.randn(B, T, 5),
        torch.randn(B, T, 3),
        None,
        torch.randn(B, T, 1) * 100,
        torch.randint(0, 50, (B, T)),
    )
    assert states.shape == (B, T, 5) and preds.shape == (B, T, 3) and rets.shape == (B, T, 1)
    # Huge inputs saturate tanh: the actions must reach, not exceed, Humanoid-style bounds.
    with torch.no_grad():
        model.predict_action.bias.fill_(50.0)
        a = model.get_action(
            torch.randn(7, 5), torch.zeros(7, 3), None, torch.ones(7), torch.arange(7)
        )
    assert a.shape == (3,)
    torch.testing.assert_close(a, torch.full((3,), 0.4))


def test_get_action_pads_like_a_batch_of_one():
    """get_action on a short history equals forward on the left-padded window."""
    torch.manual_seed(1)
    model = DecisionTransformer(4, 2, 16, max_length=6, max_ep_len=20, n_layer=2, n_head=1).eval()
    s, a, r, t = torch.randn(3, 4), torch.randn(3, 2), torch.randn(3), torch.arange(3)
    got = model.get_action(s, a, None, r, t)
    pad = lambda x: torch.cat([torch.zeros(3, *x.shape[1:], dtype=x.dtype), x])[None]
    mask = torch.tensor([[0, 0, 0, 1, 1, 1]])
    _, want, _ = model(pad(s), pad(a), None, pad(r[:, None]), pad(t), attention_mask=mask)
    torch.testing.assert_close(got, want[0, -1])


def test_bc_uses_last_states_only():
    torch.manual_seed(0)
    bc = MLPBCModel(4, 2, hidden_size=16, n_layer=2, max_length=3, action_low=-2, action_high=2)
    s = torch.randn(1, 3, 4)
    _, a, _ = bc(s, None, None)
    assert a.shape == (1, 1, 2) and a.abs().max() <= 2
    # get_action on a 1-step history pads with zero states, as the original.
    single = bc.eval().get_action(s[0, -1:], torch.zeros(1, 2), None)
    _, want, _ = bc(torch.cat([torch.zeros(1, 2, 4), s[:, -1:]], 1), None, None)
    torch.testing.assert_close(single, want[0, -1])
