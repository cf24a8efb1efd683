"""The Atari trainer's steps make the host wait for the device only every PROGRESS_EVERY steps
(the progress bar's loss), never once per step: counted on the CPU by recognising what would wait
on CUDA (tests/host_syncs.py), on windows of a Breakout replay collected from the emulator."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from host_syncs import HostSyncCounter

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "atari"))

import create_dataset as cd  # noqa: E402
from mingpt import trainer_atari  # noqa: E402
from mingpt.model_atari import AtariDecisionTransformer, AtariDTConfig  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def windows(atari_replay):
    data = cd.create_dataset(1, 400, "Breakout", str(atari_replay), 1, seed=1, cache=False,
                             log=lambda *_: None)  # fmt: skip
    return trainer_atari.WindowDataset(data, 4)


def epoch_syncs(windows, steps: int, checkpoint_at: int | None = None) -> list[str]:
    """The syncs seen while training one epoch of ``steps`` steps (a checkpoint's state taken
    after step ``checkpoint_at``)."""
    torch.manual_seed(0)
    cfg = AtariDTConfig(n_actions=4, max_timestep=2000, context_length=4, n_layer=1, n_head=2,
                        n_embd=16, dropout=0.0)  # fmt: skip
    tcfg = trainer_atari.TrainerConfig(batch_size=2, num_workers=0, steps_per_epoch=steps)
    trainer = trainer_atari.Trainer(
        AtariDecisionTransformer(cfg), windows, tcfg, torch.device("cpu")
    )
    states = []

    def on_step(tr: trainer_atari.Trainer) -> None:
        if tr.step == checkpoint_at:
            states.append(tr.state_dict())

    with HostSyncCounter() as syncs:
        # AdamW's bookkeeping is left out: on CUDA its step counts live on the host (for-each)
        # or the device (fused), and neither waits for the device.
        step = trainer.optimizer.step

        def paused_step(*args, **kwargs):
            with syncs.paused():
                return step(*args, **kwargs)

        trainer.optimizer.step = paused_step
        logs = trainer.run_epoch(on_step)
    assert logs["train/loss"] > 0 and trainer.loss_count == 0  # logged, then reset
    return syncs.events


def test_no_host_sync_per_step(windows, monkeypatch):
    monkeypatch.setattr(trainer_atari, "PROGRESS_EVERY", 1000)
    short, long = epoch_syncs(windows, 3), epoch_syncs(windows, 9)
    # The epoch's own reads (the loader's seed and permutation, its logged loss), none per step.
    assert long == short, (short, long)
    # A checkpoint reads the loss once; the progress bar every PROGRESS_EVERY steps.
    reads = long.count("_local_scalar_dense")
    assert epoch_syncs(windows, 9, checkpoint_at=4).count("_local_scalar_dense") == reads + 1
    monkeypatch.setattr(trainer_atari, "PROGRESS_EVERY", 3)
    assert epoch_syncs(windows, 9).count("_local_scalar_dense") == reads + 9 // 3


def test_resumed_epoch_logs_the_same_loss(windows):
    """The loss sum kept on the device goes through the checkpoint and back unchanged."""
    cfg = AtariDTConfig(n_actions=4, max_timestep=2000, context_length=4, n_layer=1, n_head=2,
                        n_embd=16, dropout=0.0)  # fmt: skip
    tcfg = trainer_atari.TrainerConfig(batch_size=2, num_workers=0, steps_per_epoch=6)

    def fresh() -> trainer_atari.Trainer:
        torch.manual_seed(0)
        return trainer_atari.Trainer(
            AtariDecisionTransformer(cfg), windows, tcfg, torch.device("cpu")
        )

    straight = fresh().run_epoch()
    first, saved = fresh(), {}

    def stop_at_3(tr: trainer_atari.Trainer) -> None:
        if tr.step == 3:
            saved["trainer"] = tr.state_dict()
            saved["model"] = {k: v.clone() for k, v in tr.model.state_dict().items()}
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        first.run_epoch(stop_at_3)
    resumed = fresh()
    resumed.model.load_state_dict(saved["model"])
    resumed.load_state_dict(saved["trainer"])
    assert resumed.run_epoch()["train/loss"] == straight["train/loss"]
