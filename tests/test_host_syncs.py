"""At most one host-device synchronisation per training step, for the Qwen3 DT, the GPT-2 DT and
BC, counted on the CPU by recognising what would wait on CUDA (see tests/host_syncs.py).

The sampler runs its CUDA path (pinned memory, non-blocking copies) with the copies kept on the
CPU; the one sync allowed is the trainer's single fetch of the step's numbers."""

import functools

import numpy as np
import pytest
import torch
from decision_transformer.data.sampler import BatchSampler
from decision_transformer.data.trajectories import TrajectoryDataset
from decision_transformer.models.decision_transformer import DecisionTransformer
from decision_transformer.models.decision_transformer_qwen3 import DecisionTransformerQwen3
from decision_transformer.models.mlp_bc import MLPBCModel
from decision_transformer.training.act_trainer import ActTrainer
from decision_transformer.training.seq_trainer import SequenceTrainer, masked_action_mse
from decision_transformer.training.trainer import TrainerOptions
from host_syncs import HostSyncCounter
from rollouts import rollout_paths

K = 10


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def dataset():
    # Real hopper episodes, some shorter than the window so that padded batches come up.
    return TrajectoryDataset.from_paths(rollout_paths("hopper", episodes=4, max_steps=40))


def make_trainer(kind: str, dataset, sampler_device: str, autocast=None):
    torch.manual_seed(0)
    S, A = dataset.observations.shape[1], dataset.actions.shape[1]
    if kind in ("qwen3", "qwen3_return_bins"):
        bins = {"return_bins": 8} if kind == "qwen3_return_bins" else {}
        model = DecisionTransformerQwen3(
            S, A, 32, max_length=K, max_ep_len=1000, n_layer=2, n_head=4, n_kv_head=2, dropout=0.1,
            **bins,
        )  # fmt: skip
        if bins:  # the return head's loss and its two logged terms: in the same one sync
            model.set_return_range(*dataset.return_range(100.0))
    elif kind == "gpt2":
        model = DecisionTransformer(S, A, 32, max_length=K, max_ep_len=1000, n_layer=2, n_head=2)
    else:
        model = MLPBCModel(S, A, 32, n_layer=2, max_length=K)
    sampler = BatchSampler(
        dataset, K, 1000, 100.0, device=sampler_device, rng=np.random.default_rng(0)
    )
    trainer_cls = ActTrainer if kind == "bc" else SequenceTrainer
    return trainer_cls(
        model,
        torch.optim.AdamW(model.parameters(), lr=1e-4),
        get_batch=functools.partial(sampler, 4),
        loss_fn=lambda s_hat, a_hat, r_hat, s, a, r: torch.mean((a_hat - a) ** 2),
        options=TrainerOptions(autocast_dtype=autocast, progress=False),
    )


@pytest.mark.parametrize(
    "kind, autocast",
    [
        ("qwen3", None), ("qwen3", torch.bfloat16), ("qwen3_return_bins", None), ("gpt2", None),
        ("bc", None),
    ],
)  # fmt: skip
def test_one_host_sync_per_training_step(kind, autocast, dataset):
    trainer = make_trainer(kind, dataset, "cuda", autocast)
    padded = []
    sampler, (b,) = trainer.get_batch.func, trainer.get_batch.args  # BatchSampler, batch size
    whole = np.flatnonzero(dataset.lengths >= K)[:1]  # an episode that fills a window

    def get_batch():
        # Every other batch starts at step 0 of a long episode: no padding anywhere.
        if len(padded) % 2:
            batch = sampler(b)
        else:
            batch = sampler.build(whole.repeat(b), np.zeros(b, dtype=np.int64), K)
        padded.append(batch.padded)
        return batch

    trainer.get_batch = get_batch
    step = trainer.optimizer.step
    with HostSyncCounter(fake_cuda=True) as counter:
        # AdamW's own bookkeeping is not the step's business: on CUDA its step counts live on
        # the host (for-each) or on the device (fused); neither waits for the device.
        trainer.optimizer.step = _paused(counter, step)
        per_step = []
        for _ in range(6):
            before = len(counter.events)
            trainer.train_step()
            per_step.append(counter.events[before:])
    # Exactly one: the fetch of the step's numbers (loss, guard) in one .tolist().
    assert all(events == ["tolist"] for events in per_step), per_step
    if kind != "bc":
        assert True in padded and False in padded  # both kinds of batch were exercised


def _paused(counter, fn):
    def call(*args, **kwargs):
        with counter.paused():
            return fn(*args, **kwargs)

    return call


def test_counter_sees_each_kind_of_sync():
    """The counter is able to fail: each pattern the issue names is counted once."""
    x = torch.randn(4, 3)
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0])
    with HostSyncCounter(fake_cuda=True) as c:
        x.sum().item()
        bool(mask.all())
        _ = x[mask > 0]
        x[mask == 0] = 0.0
        x.tolist()
        x.nonzero()
        x.to("cuda")  # blocking
        x.to("cuda", non_blocking=True)  # pageable memory: blocking all the same
        x.pin_memory().to("cuda", non_blocking=True)  # the one right way: not counted
    assert c.events == [
        "_local_scalar_dense",
        "_local_scalar_dense",
        "index",
        "index_put_",
        "tolist",
        "nonzero",
        "blocking copy",
        "blocking copy",
    ]


def test_sampler_flags_padding_and_pins_for_cuda(dataset):
    sampler = BatchSampler(dataset, K, 1000, 100.0, rng=np.random.default_rng(1))
    assert not sampler.pin_memory
    assert BatchSampler(dataset, K, 1000, 100.0, device="cuda").pin_memory
    seen = set()
    for _ in range(20):
        batch = sampler(3)
        mask = batch[-1]
        assert batch.padded == (not bool(mask.all()))
        seen.add(batch.padded)
    assert seen == {True, False}


def test_masked_mean_equals_the_boolean_indexed_loss():
    torch.manual_seed(0)
    preds, target = torch.randn(5, K, 3), torch.randn(5, K, 3)
    mask = torch.ones(5, K)
    mask[0, :7] = 0
    mask[3, :2] = 0
    real = mask.reshape(-1) > 0
    old = torch.mean((preds.reshape(-1, 3)[real] - target.reshape(-1, 3)[real]) ** 2)
    torch.testing.assert_close(masked_action_mse(preds, target, mask), old)


def test_unpadded_batches_train_like_an_all_ones_mask(dataset):
    """Passing None for a batch without padding changes nothing but the path taken."""
    for kind in ("qwen3", "gpt2"):
        model = make_trainer(kind, dataset, "cpu").model.eval()
        S, A = dataset.observations.shape[1], dataset.actions.shape[1]
        args = (torch.randn(2, K, S), torch.randn(2, K, A), None, torch.randn(2, K, 1))
        ts = torch.arange(K).repeat(2, 1)
        with torch.no_grad():
            _, a_none, _ = model(*args, ts, attention_mask=None)
            _, a_ones, _ = model(*args, ts, attention_mask=torch.ones(2, K))
        torch.testing.assert_close(a_none, a_ones, rtol=0, atol=1e-6)
