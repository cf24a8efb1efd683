"""The training-step guard: a step with a NaN/inf loss or gradient norm is never applied, weights
blown up by a step the loss did not reveal stop the run, and the checkpoint left behind is, bit
for bit, the one an unharmed run wrote at the last iteration whose steps all passed."""

from __future__ import annotations

import shutil

import pytest
import torch
from cli import TINY, run_script
from decision_transformer.run import experiment
from decision_transformer.run.config import build_parser, resolve
from decision_transformer.training.trainer import NonFiniteError, Trainer
from rollouts import write_dataset

STEPS = 5  # per iteration, as in TINY


class TinyTrainer(Trainer):
    """A linear regression through the real Trainer.optimize / train_iteration."""

    def train_step(self) -> float:
        x, y = self.get_batch(self.batch_size)
        return self.optimize(torch.mean((self.model(x) - y) ** 2))


def tiny_trainer(**kw) -> TinyTrainer:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    gen = torch.Generator().manual_seed(1)

    def get_batch(n):
        x = torch.randn(n, 4, generator=gen)
        return x, x[:, :2] * 0.5

    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    return TinyTrainer(model, opt, 8, get_batch, loss_fn=None, **kw)


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
    trainer = tiny_trainer(progress=False)
    trainer.train_iteration(2, iter_num=1)
    trainer.optimizer.param_groups[0]["lr"] = 1e30
    with pytest.raises(NonFiniteError, match="step 3 blew up the weights: their norm is inf"):
        trainer.train_iteration(2, iter_num=2)
    # A jump short of overflow is caught too: 1e3 on weights of norm ~1 is far past 4x.
    trainer = tiny_trainer(progress=False)
    trainer.train_iteration(2, iter_num=1)
    trainer.optimizer.param_groups[0]["lr"] = 1e3
    with pytest.raises(NonFiniteError, match="blew up the weights"):
        trainer.train_iteration(2, iter_num=2)


def test_progress_lines_when_no_bar(capsys):
    # Under pytest stderr is no terminal, so no bar: lines must replace it.
    trainer = tiny_trainer(progress=True, progress_interval=0.0)
    trainer.train_iteration(3, iter_num=7, print_logs=True)
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


def run_in_process(data_dir, out, harm=None, harm_step=None) -> int:
    """experiment.run on TINY flags, 3 iterations of 5 steps, keeping a copy of every
    checkpoint written; ``harm`` poisons global step ``harm_step``."""
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
    real_save, real_optimize = experiment.save_checkpoint, Trainer.optimize_step

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
        mp.setattr(experiment, "save_checkpoint", save)
        mp.setattr(Trainer, "optimize_step", optimize)
        return experiment.run(cfg)


@pytest.fixture(scope="module")
def unharmed(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("unharmed") / "run"
    assert run_in_process(data_dir, out) == 0
    return out


@pytest.mark.parametrize(
    "harm,step,kept",
    [
        ("nan", 12, 2),  # second step of iteration 3
        ("saturate", 12, 2),  # caught one step late, still inside iteration 3
        ("saturate", 10, 1),  # the last step of iteration 2: caught before its checkpoint
        ("nan", 3, 0),  # iteration 1: nothing to keep
    ],
)
def test_kept_checkpoint_equals_the_unharmed_runs(
    data_dir, unharmed, tmp_path, capsys, harm, step, kept
):
    out = tmp_path / "run"
    assert run_in_process(data_dir, out, harm, step) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"training diverged in iteration {kept + 1}" in err[0]
    if harm == "nan":
        assert f"step {step} not applied: loss nan" in err[0]
    else:
        assert f"step {step} blew up the weights" in err[0]
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
