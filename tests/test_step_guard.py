"""The training-step guard: a step with a NaN/inf loss or gradient norm is never applied, weights
blown up by a step the loss did not reveal stop the run, and the checkpoint left behind is, bit
for bit, the one an unharmed run wrote at the last iteration whose steps all passed."""

from __future__ import annotations

import shutil

import pytest
import torch
from cli import TINY, run_script
from decision_transformer.run import experiment, state
from decision_transformer.run.config import build_parser, resolve
from decision_transformer.run.run import print_logs
from decision_transformer.training import trainer as trainer_module
from decision_transformer.training.trainer import NonFiniteError, Trainer, TrainerOptions
from rollouts import write_dataset

STEPS = 5  # per iteration, as in TINY


class TinyTrainer(Trainer):
    """A linear regression through the real Trainer.optimize_step / train_iteration."""

    def train_step(self) -> float:
        x, y = self.get_batch(8)
        self.optimizer.zero_grad(set_to_none=True)
        loss = torch.mean((self.model(x) - y) ** 2)
        loss.backward()
        return self.optimize_step(loss.detach().float())


def tiny_trainer(**kw) -> TinyTrainer:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    gen = torch.Generator().manual_seed(1)

    def get_batch(n):
        x = torch.randn(n, 4, generator=gen)
        return x, x[:, :2] * 0.5

    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return TinyTrainer(model, opt, get_batch, options=TrainerOptions(**kw))


def weights(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("where", ["loss", "gradient"])
def test_nonfinite_step_is_not_applied(where):
    trainer = tiny_trainer(progress=False)
    trainer.train_iteration(3, iter_num=1)
    before = weights(trainer.model)
    if where == "loss":
        original = trainer.get_batch
        trainer.get_batch = lambda n: tuple(t * float("nan") for t in original(n))
    else:  # a finite loss whose gradient overflows
        trainer.model.weight.register_hook(lambda g: g * float("inf"))
    with pytest.raises(NonFiniteError) as err:
        trainer.train_iteration(3, iter_num=2)
    assert err.value.step == 4 and "step 4 not applied" in str(err.value)
    assert ("loss nan" in str(err.value)) == (where == "loss")
    assert "gradient norm" in str(err.value)
    after = weights(trainer.model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert trainer.global_step == 3


def test_saturating_step_is_caught_although_the_loss_stays_finite():
    # Checking every step: the blow-up is seen at the very next step, before its loss is.
    trainer = tiny_trainer(progress=False, weight_check_interval=1)
    trainer.train_iteration(2, iter_num=1)
    trainer.optimizer.param_groups[0]["lr"] = 1e30
    with pytest.raises(NonFiniteError, match="step 3 blew up the weights: their norm is inf"):
        trainer.train_iteration(2, iter_num=2)
    # A jump short of overflow is caught too: 1e3 on weights of norm ~1 is far past 4x.
    trainer = tiny_trainer(progress=False, weight_check_interval=1)
    trainer.train_iteration(2, iter_num=1)
    trainer.optimizer.param_groups[0]["lr"] = 1e3
    with pytest.raises(NonFiniteError, match="blew up the weights"):
        trainer.train_iteration(2, iter_num=2)


def saturating_trainer(**kw) -> TinyTrainer:
    """A linear layer under tanh: weights of 1e30 saturate it, and the loss stays finite."""
    trainer = tiny_trainer(**kw)
    torch.manual_seed(0)
    trainer.model = torch.nn.Sequential(torch.nn.Linear(4, 2), torch.nn.Tanh())
    trainer.optimizer = torch.optim.AdamW(trainer.model.parameters(), lr=1e-2)
    return trainer


def test_weights_are_read_every_interval_and_after_each_iteration(monkeypatch):
    """The weight norm reads every parameter, so it runs at the first step, then every
    ``weight_check_interval`` steps, and after each iteration's last step: 4 reads in an
    iteration of 25 steps at interval 10, not 26."""
    from decision_transformer.training import trainer as trainer_module

    reads = []
    real = trainer_module.weight_norm
    monkeypatch.setattr(trainer_module, "weight_norm", lambda p: reads.append(1) or real(p))
    trainer = tiny_trainer(progress=False, weight_check_interval=10)
    trainer.train_iteration(25, iter_num=1)
    assert len(reads) == 4  # steps 1, 11, 21 (the weights of steps 0, 10, 20), the end: 25
    assert trainer.last_checked_step == 25
    trainer.train_iteration(25, iter_num=2)
    assert len(reads) == 4 + 3  # steps 36, 46 (weights of 35, 45), the end: 50


@pytest.mark.parametrize("bad_step", [3, 6])
def test_blow_up_between_checks_is_caught_before_the_iteration_ends(bad_step):
    """A step between two checks that saturates the weights (the loss stays finite, so only
    the weight check can see it) is caught at the latest by the check after the iteration's
    last step, which comes before any checkpoint; the message names the steps it could be."""
    trainer = saturating_trainer(progress=False, weight_check_interval=10)
    trainer.train_iteration(2, iter_num=1)
    real = trainer.optimize_step

    def optimize_step(loss):
        lr = 1e30 if trainer.global_step + 1 == bad_step else 1e-2
        trainer.optimizer.param_groups[0]["lr"] = lr
        return real(loss)

    trainer.optimize_step = optimize_step
    with pytest.raises(NonFiniteError, match="one of steps 3-6 blew up the weights") as err:
        trainer.train_iteration(4, iter_num=2)
    assert err.value.step == 6


def test_progress_lines_when_no_bar(capsys):
    # Under pytest stderr is no terminal, so no bar: lines must replace it.
    trainer = tiny_trainer(progress=True, progress_interval=0.0)
    print_logs(7, trainer.train_iteration(3, iter_num=7))
    out = capsys.readouterr().out
    lines = [x for x in out.splitlines() if x.startswith("iteration 7: step")]
    assert len(lines) == 3 and lines[-1].startswith("iteration 7: step 3/3, loss ")
    assert "steps/s, ETA 0m00s" in lines[-1]
    # The per-iteration printout keeps the original's keys, at a readable precision.
    loss_line = next(x for x in out.splitlines() if x.startswith("training/train_loss_mean: "))
    assert len(loss_line.split(": ")[1]) <= 12


# --- the run loop: which checkpoint stays ------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_dataset(d, "humanoid", "medium", episodes=6, max_steps=40)
    return d


def run_in_process(data_dir, out, harm=None, harm_step=None, interval=None) -> int:
    """experiment.run on TINY flags, 3 iterations of 5 steps, keeping a copy of every
    checkpoint written; ``harm`` poisons global step ``harm_step``; ``interval`` replaces the
    trainer's WEIGHT_CHECK_INTERVAL."""
    argv = [
        "--env",
        "humanoid",
        "--data_dir",
        str(data_dir),
        "--out_dir",
        str(out),
        *TINY,
        "--max_iters",
        "3",
        "--num_eval_episodes",
        "0",
    ]
    cfg = resolve(build_parser().parse_args(argv), "gpt2")
    real_save, real_optimize = state.save_checkpoint, Trainer.optimize_step

    def save(path, payload):
        real_save(path, payload)
        shutil.copy(path, out / f"iter{payload['iteration']}.pt")

    def optimize(self, loss):
        if self.global_step + 1 == harm_step:
            if harm == "nan":
                loss = loss * float("nan")
            else:  # saturate: this one step runs at 1e30, the loss of later steps stays finite
                self.optimizer.param_groups[0]["lr"] = 1e30
        return real_optimize(self, loss)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(state, "save_checkpoint", save)
        mp.setattr(Trainer, "optimize_step", optimize)
        if interval is not None:
            mp.setattr(trainer_module, "WEIGHT_CHECK_INTERVAL", interval)
        return experiment.run(cfg)


@pytest.fixture(scope="module")
def unharmed(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("unharmed") / "run"
    assert run_in_process(data_dir, out) == 0
    return out


@pytest.mark.parametrize("interval", [1, None])  # weights checked every step; the default
@pytest.mark.parametrize(
    "harm,step,kept",
    [
        ("nan", 12, 2),  # second step of iteration 3
        ("saturate", 12, 2),  # caught inside iteration 3 (every step: at the next one)
        ("saturate", 10, 1),  # the last step of iteration 2: caught before its checkpoint
        ("nan", 3, 0),  # iteration 1: nothing to keep
    ],
)
def test_kept_checkpoint_equals_the_unharmed_runs(
    data_dir, unharmed, tmp_path, capsys, harm, step, kept, interval
):
    out = tmp_path / "run"
    assert run_in_process(data_dir, out, harm, step, interval) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"training diverged in iteration {kept + 1}" in err[0]
    if harm == "nan":
        assert f"step {step} not applied: loss nan" in err[0]
    elif interval == 1:
        assert f"step {step} blew up the weights" in err[0]
    elif step == 10:  # only the check before iteration 2's checkpoint can see it
        assert "one of steps 6-10 blew up the weights" in err[0]
    else:  # the weights of 1e30 make step 13's loss NaN before any check comes
        assert "step 13 not applied: loss nan" in err[0]
    if kept == 0:
        assert "no checkpoint was written" in err[0]
        assert not (out / "checkpoint.pt").exists()
        return
    assert f"the last good checkpoint {out / 'checkpoint.pt'} (iteration {kept}) is kept" in err[0]
    ours = torch.load(out / "checkpoint.pt", weights_only=True)
    theirs = torch.load(unharmed / f"iter{kept}.pt", weights_only=True)
    assert ours["iteration"] == kept
    assert_bitwise_equal(ours["model"], theirs["model"])
    assert_bitwise_equal(ours["optimizer"], theirs["optimizer"])
    assert ours["scheduler"] == theirs["scheduler"]
    big = max(v.abs().max().item() for v in ours["model"].values())
    assert big < 100, big  # sane weights, not the 1e30 the saturating step made


def assert_bitwise_equal(a, b):
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_bitwise_equal(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b)
        for x, y in zip(a, b):
            assert_bitwise_equal(x, y)
    else:
        assert a == b


def test_learning_rate_1e30_leaves_no_blown_up_checkpoint(data_dir, tmp_path):
    """The saturating case through the real CLI: the tanh head keeps the loss finite while the
    weights reach 1e30; the weight-norm check stops the run before any checkpoint holds them."""
    out = tmp_path / "run"
    proc = run_script(
        "experiment.py",
        "--env",
        "humanoid",
        "--data_dir",
        data_dir,
        "--out_dir",
        out,
        *TINY,
        "--num_steps_per_iter",
        "1",
        "--max_iters",
        "3",
        "--warmup_steps",
        "0",
        "-lr",
        "1e30",
        "--num_eval_episodes",
        "0",
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "step 1 blew up the weights: their norm is inf" in lines[0]
    assert "no checkpoint was written" in lines[0]
    assert not (out / "checkpoint.pt").exists()
