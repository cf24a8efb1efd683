"""--val_episodes, --select_by and best.pt: held-out episodes stay out of training, the logged
validation error is the error on the held-out windows, best.pt is the best iteration (and
survives resume), the overfitting warning, and a run without the flags is the run it was."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from cli import TINY, run_script
from decision_transformer.data.holdout import split_episodes, validation_windows
from decision_transformer.data.loading import load_dataset
from decision_transformer.data.sampler import BatchSampler
from decision_transformer.envs import get_spec, make_env
from decision_transformer.models.factory import build_model
from decision_transformer.run import evaluate_checkpoint, experiment
from decision_transformer.run.config import ConfigError, RunConfig, build_parser, resolve
from decision_transformer.run.evaluation import target_key
from decision_transformer.run.plots import load_run, markdown_table
from decision_transformer.run.run import Run
from decision_transformer.run.selection import Selection
from decision_transformer.training.validation import VALIDATION_KEY, overfitting
from host_syncs import HostSyncCounter
from rollouts import write_dataset
from test_distributed import EXACT, torchrun_args

EPISODES = 10
# No rollouts: the validation error alone selects, so these runs cost seconds.
FAST = [*TINY, "--num_eval_episodes", "0", "--env", "humanoid"]
VAL = ["--val_episodes", "3", "--val_windows", "24"]
# A rate at which the tiny model's validation error stops falling within 4 iterations.
BUMPY = ["--learning_rate", "1e-2", "--warmup_steps", "1", "--max_iters", "4"]
SCRIPTS = {"gpt2": "experiment.py", "qwen3": "experiment_qwen.py"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_dataset(d, "humanoid", "medium", episodes=EPISODES, max_steps=40)
    return d


def rows(out) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def load(path) -> dict:
    return torch.load(path, weights_only=True)


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def train(data_dir, out, *args, script="experiment.py", check=True):
    return run_script(script, *FAST, "--data_dir", data_dir, "--out_dir", out, *args, check=check)


def run_config(data_dir, *args) -> RunConfig:
    argv = [*FAST, "--data_dir", str(data_dir), *args]
    return resolve(build_parser().parse_args(argv), "gpt2")


# --- held-out episodes -----------------------------------------------------------------------


def test_held_out_episodes_never_train_nor_normalise(data_dir, monkeypatch):
    cfg = run_config(data_dir, *VAL)
    run = Run(cfg)
    data, _ = run.load_inputs()
    train_eps, val_eps = data.train_episodes, data.val_episodes
    assert len(val_eps) == 3 and len(train_eps) == EPISODES - 3
    assert not set(train_eps) & set(val_eps)
    drawn: list[np.ndarray] = []
    draw = BatchSampler.draw

    def recording(self, batch_size):
        ep, si = draw(self, batch_size)
        drawn.append(ep)
        return ep, si

    monkeypatch.setattr(BatchSampler, "draw", recording)
    batches = run.make_batches(np.random.default_rng(0))
    for _ in range(100):
        batches()
    seen = set(np.concatenate(drawn).tolist())
    assert seen == set(train_eps.tolist())  # every training episode, and nothing else
    # The state statistics are those of the training episodes' steps only.
    full = load_dataset(data_dir, "humanoid", "medium")
    obs = np.concatenate(
        [full.observations[full.starts[e] : full.starts[e] + full.lengths[e]] for e in train_eps]
    ).astype(np.float64)
    np.testing.assert_allclose(data.dataset.state_mean, obs.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(data.dataset.state_std, obs.std(0) + 1e-6, rtol=1e-5, atol=1e-6)
    assert not np.allclose(data.dataset.state_mean, full.state_mean)
    # The draw is the seed's: another seed holds out other episodes.
    _, other = split_episodes(3, EPISODES, seed=1)
    assert split_episodes(3, EPISODES, seed=cfg.seed)[1].tolist() == val_eps.tolist()
    assert other.tolist() != val_eps.tolist()


def test_fraction_counts_and_one_host_sync(data_dir):
    assert len(split_episodes(0.25, EPISODES, 0)[1]) == 2  # round(2.5) to even: 2
    assert len(split_episodes(0.01, EPISODES, 0)[1]) == 1  # a fraction holds out at least one
    cfg = run_config(data_dir, *VAL)
    run = Run(cfg)
    data, _ = run.load_inputs()
    fn = run.make_validation()
    model = data.build_model(cfg).eval()
    with HostSyncCounter() as syncs:
        fn(model)
    assert syncs.events == ["tolist"]


# --- the logged error is the error on the held-out windows ------------------------------------


def independent_error(run_dir, data_dir) -> float:
    """The mean squared action error of the run's final weights on its validation windows,
    each window fed alone and unpadded, from the raw episode arrays."""
    cfg = RunConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    spec = get_spec(cfg.env)
    env = make_env(cfg.env)
    low, high = env.action_space.low, env.action_space.high
    env.close()
    ckpt = load(run_dir / "checkpoint.pt")
    ds = load_dataset(data_dir, cfg.env, cfg.dataset)
    model = build_model(cfg.model_config(), ds.state_dim, ds.act_dim, spec.max_ep_len, low, high)
    model.load_state_dict(ckpt["model"])
    model.eval()
    _, val_eps = split_episodes(cfg.val_episodes, len(ds.lengths), cfg.seed)
    sampler = BatchSampler(ds, cfg.K, spec.max_ep_len, spec.scale, episodes=val_eps)
    episodes, starts = validation_windows(sampler, cfg.val_windows, cfg.seed)
    assert set(episodes.tolist()) <= set(val_eps.tolist())
    mean, std = ckpt["state_mean"].numpy(), ckpt["state_std"].numpy()
    squared, count = 0.0, 0
    for e, si in zip(episodes, starts):
        lo, n = ds.starts[e], ds.lengths[e]
        steps = np.arange(si, min(si + cfg.K, n))
        obs, act = ds.observations[lo + steps], ds.actions[lo + steps]
        rew = ds.rewards[lo : lo + n].astype(np.float64)
        rtg = np.cumsum(rew[::-1])[::-1][steps] / spec.scale

        def t(x):
            return torch.tensor(np.asarray(x), dtype=torch.float32)[None]

        states = t((obs - mean) / std)
        with torch.no_grad():
            if cfg.model_type == "dt":
                _, pred, _ = model(
                    states, t(act), t(rew[steps, None]), t(rtg[:, None]),
                    torch.tensor(steps)[None], attention_mask=None,
                )  # fmt: skip
                err = (pred[0].double().numpy() - act) ** 2
            else:  # BC (K=1): the last action of the window
                _, pred, _ = model(states, None, None)
                err = (pred[0, -1].double().numpy() - act[-1]) ** 2
        squared += float(err.sum())
        count += err.size
    return squared / count


@pytest.mark.parametrize(
    "name,script,args",
    [
        ("gpt2", "experiment.py", []),
        ("qwen3", "experiment_qwen.py", ["--n_head", "2", "--n_kv_head", "1"]),
        ("bc", "experiment.py", ["--model_type", "bc", "--K", "1"]),
    ],
)
def test_validation_error_is_the_error_on_held_out_windows(data_dir, tmp_path, name, script, args):
    out = tmp_path / name
    train(data_dir, out, *VAL, "--max_iters", "1", *args, script=script)
    logged = rows(out)[-1]
    assert logged["training/train_loss_mean"] > 0
    assert logged[VALIDATION_KEY] == pytest.approx(independent_error(out, data_dir), rel=1e-4)


# Exact arithmetic (no dropout) and an odd number of windows, for the 2-rank runs below.
SHARED_WINDOWS = [*EXACT, "--val_episodes", "3", "--val_windows", "25", "--max_iters", "2"]


@pytest.fixture(scope="module")
def one_process_batch_16(data_dir, tmp_path_factory):
    """What the DDP and the FSDP run below are each compared with."""
    one = tmp_path_factory.mktemp("one") / "run"
    train(data_dir, one, *SHARED_WINDOWS, "--batch_size", "16")
    return one


@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_torchrun_ranks_share_the_windows(data_dir, one_process_batch_16, tmp_path, mode):
    """2 ranks x batch 8 (each measuring its share of an odd number of windows, one
    all-reduce) log the validation error of 1 process x batch 16, which trains the same
    weights; under FSDP every rank makes as many sharded forward calls, or the run would hang.
    best.pt holds full weights either way."""
    launch = torchrun_args(2)[:-1]
    common = [*FAST, "--data_dir", data_dir, *SHARED_WINDOWS]
    fsdp = ["--fsdp"] if mode == "fsdp" else []
    two, one = tmp_path / "two", one_process_batch_16
    run_script(*launch, "experiment.py", *common, *fsdp, "--batch_size", "8", "--out_dir", two,
               check=True, timeout=300)  # fmt: skip
    for a, b in zip(rows(two), rows(one), strict=True):
        assert a[VALIDATION_KEY] == pytest.approx(b[VALIDATION_KEY], rel=1e-5)
    assert load(two / "best.pt")["iteration"] == load(one / "best.pt")["iteration"]
    assert load(two / "best.pt")["model"].keys() == load(one / "best.pt")["model"].keys()


# --- best.pt ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bumpy_run(data_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("bumpy") / "run"
    train(data_dir, out, *VAL, *BUMPY)
    return out


def best_iteration(out) -> int:
    errors = [r[VALIDATION_KEY] for r in rows(out)]
    return 1 + errors.index(min(errors))  # ties keep the first


@pytest.fixture(scope="module")
def stopped_at_best(data_dir, bumpy_run, tmp_path_factory):
    """The bumpy run stopped right after its best iteration, and the weights it stopped with
    (read now: test_resume_keeps_the_best resumes this folder)."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    train(data_dir, out, *VAL, *BUMPY, "--max_iters", str(best_iteration(bumpy_run)))
    return out, load(out / "checkpoint.pt")["model"]


def test_best_pt_is_the_lowest_validation_error_and_evaluates(bumpy_run, stopped_at_best, tmp_path):
    best = load(bumpy_run / "best.pt")
    want = best_iteration(bumpy_run)
    assert want < 4, "the run's last iteration is its best: the test would not tell them apart"
    assert best["iteration"] == want
    assert best["selection"]["best_value"] == min(r[VALIDATION_KEY] for r in rows(bumpy_run))
    assert not same_weights(best["model"], load(bumpy_run / "checkpoint.pt")["model"])
    # best.pt holds the weights that iteration ended with: a run stopped there ends with them.
    assert same_weights(best["model"], stopped_at_best[1])

    out_json = tmp_path / "eval.json"
    proc = run_script(
        "evaluate.py", "--checkpoint", bumpy_run, "--which", "best", "--num_eval_episodes", "1",
        "--eval_envs", "1", "--device", "cpu", "--json", out_json, check=True,
    )  # fmt: skip
    report = json.loads(out_json.read_text())
    assert report["checkpoint"].endswith("best.pt") and report["iteration"] == want
    assert f"(iteration {want})" in proc.stdout
    assert np.isfinite(report["targets"][0]["return_mean"])


def test_resume_keeps_the_best(data_dir, bumpy_run, stopped_at_best):
    """Stop right after the best iteration, resume: the best is kept (a resumed run that forgot
    it would take the next iteration as best) and everything ends as in the straight run."""
    stop = best_iteration(bumpy_run)
    out, _ = stopped_at_best
    assert load(out / "checkpoint.pt")["iteration"] == stop
    train(data_dir, out, *VAL, *BUMPY, "--resume")
    a, b = load(out / "best.pt"), load(bumpy_run / "best.pt")
    assert a["iteration"] == b["iteration"] == stop
    assert same_weights(a["model"], b["model"])
    assert (
        load(out / "checkpoint.pt")["selection"] == load(bumpy_run / "checkpoint.pt")["selection"]
    )


def test_select_by_return_at_a_target(data_dir, tmp_path):
    out = tmp_path / "run"
    train(
        data_dir, out, "--num_eval_episodes", "1", "--eval_envs", "1", "--max_iters", "2",
        "--env_targets", "max", "p50", "--select_by", "return@p50",
    )  # fmt: skip
    best = load(out / "best.pt")
    p50 = float(np.percentile(load_dataset(data_dir, "humanoid", "medium").returns, 50))
    key = f"evaluation/{target_key(round(p50, 1))}_return_mean"
    returns = [r[key] for r in rows(out)]
    assert best["iteration"] == 1 + returns.index(max(returns))
    assert not any(VALIDATION_KEY in r for r in rows(out))


# --- the overfitting warning -----------------------------------------------------------------


def test_overfitting_warning_fires_on_a_rising_validation_error(capsys):
    train_err = [1.0, 0.8, 0.6, 0.5, 0.4, 0.3, 0.25]
    val_err = [0.9, 0.7, 0.72, 0.75, 0.8, 0.85, 0.84]
    sel = Selection("val_error", VALIDATION_KEY, True)
    warned = []
    for i, (t, v) in enumerate(zip(train_err, val_err), start=1):
        sel.observe(i, {"training/train_loss_mean": t, VALIDATION_KEY: v})
        err = capsys.readouterr().err
        if err:
            warned.append(i)
            assert err.count("\n") == 1 and err.startswith("warning: validation action error")
            assert "best.pt keeps iteration 2" in err
    assert warned == [5]  # 3 rises (iterations 3, 4, 5), once per streak
    # Not when the training error rises too, nor after only two rises.
    assert not overfitting([(0.5, 0.7), (0.6, 0.72), (0.7, 0.75), (0.8, 0.8)])
    assert not overfitting([(1.0, 0.9), (0.8, 0.7), (0.6, 0.72), (0.5, 0.75)])
    assert not overfitting([(0.9, 0.7), (0.8, 0.72), (0.7, 0.72), (0.6, 0.8)])
    assert overfitting([(0.9, 0.7), (0.8, 0.72), (0.7, 0.73), (0.6, 0.8)])


def test_multi_task_warning_names_the_mean_and_the_task_that_rose_most(capsys):
    # The logged error of a --tasks run is the mean over tasks: the warning says so and names
    # the task behind the rise, also in a run resumed mid-streak (the per-task errors travel in
    # the checkpoint with the rest of the selection state).
    train_err = [1.0, 0.8, 0.6, 0.5, 0.4]
    hopper = [1.5, 1.4, 1.42, 1.43, 1.45]  # the larger error, the smaller rise
    walker = [0.5, 0.3, 0.4, 0.5, 0.7]
    warnings = []
    for resume_at in (None, 4):
        sel = Selection("", VALIDATION_KEY, True)
        for i, (t, h, w) in enumerate(zip(train_err, hopper, walker), start=1):
            if i == resume_at:
                restored = Selection("", VALIDATION_KEY, True)
                restored.load_state_dict(sel.state_dict())
                sel = restored
            sel.observe(i, {
                "training/train_loss_mean": t, VALIDATION_KEY: (h + w) / 2,
                "validation/hopper-ars-100k/action_error": h,
                "validation/walker2d-ars-100k/action_error": w,
            })  # fmt: skip
        warnings.append(capsys.readouterr().err)
    assert warnings[0] == warnings[1]
    err = warnings[0]
    assert err.count("\n") == 1
    assert err.startswith("warning: validation action error (the mean over tasks) rose")
    assert "overfitting, most on walker2d-ars-100k (0.3 -> 0.7);" in err


def test_falling_validation_error_does_not_warn(capsys):
    sel = Selection("", VALIDATION_KEY, True)
    for i in range(1, 8):
        sel.observe(i, {"training/train_loss_mean": 1 / i, VALIDATION_KEY: 1 / i + 0.1})
    assert capsys.readouterr().err == ""
    assert sel.best_iteration is None  # no criterion: nothing kept


# --- without the flags, the run is the run it was ---------------------------------------------


def test_no_validation_is_the_run_as_before(data_dir, tmp_path, capsys):
    plain, zero = tmp_path / "plain", tmp_path / "zero"
    train(data_dir, plain, "--max_iters", "2")
    train(data_dir, zero, "--max_iters", "2", "--val_episodes", "0")
    a, b = rows(plain), rows(zero)
    for ra, rb in zip(a, b, strict=True):
        assert {k: v for k, v in ra.items() if not k.startswith("time/")} == {
            k: v for k, v in rb.items() if not k.startswith("time/")
        }
        assert not any(k.startswith("validation/") for k in ra)
    ca, cb = load(plain / "checkpoint.pt"), load(zero / "checkpoint.pt")
    assert same_weights(ca["model"], cb["model"])
    assert "selection" not in ca and not (plain / "best.pt").exists()
    full = load_dataset(data_dir, "humanoid", "medium")
    assert torch.equal(ca["state_mean"], torch.from_numpy(full.state_mean))
    capsys.readouterr()
    code = evaluate_checkpoint.main(
        ["--checkpoint", str(plain), "--which", "best", "--device", "cpu"]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "no best.pt" in err


# --- plot.py, bad flags ----------------------------------------------------------------------


def test_table_shows_the_validation_error(bumpy_run):
    run = load_run(bumpy_run)
    run.label = "x"
    table = markdown_table([run])
    errors = [r[VALIDATION_KEY] for r in rows(bumpy_run)]
    assert "val error (final / best)" in table.splitlines()[0]
    assert f"{errors[-1]:.4g} / {min(errors):.4g}" in table


@pytest.mark.parametrize(
    "args,message",
    [
        (["--val_episodes", "1.5"], "whole number of episodes"),
        (["--val_episodes", "-2"], "whole number of episodes"),
        (["--select_by", "val_error"], "--select_by val_error needs held-out episodes"),
        (["--select_by", "loss@max"], "expected val_error or return@TARGET"),
        (["--select_by", "return@p50"], "needs evaluation returns"),
        (["--val_windows", "0"], "--val_windows must be positive"),
    ],
)
def test_bad_flags_fail_before_any_work(data_dir, args, message, capsys):
    with pytest.raises((ConfigError, SystemExit)) as e:
        run_config(data_dir, *args)
    said = str(e.value) if isinstance(e.value, ConfigError) else capsys.readouterr().err
    if isinstance(e.value, SystemExit):
        assert e.value.code == 2
    assert message in said


@pytest.mark.parametrize(
    "args,message",
    [
        (["--val_episodes", str(EPISODES)], "leaving none to train on"),
        (["--num_eval_episodes", "1", "--select_by", "return@p37"], "is not evaluated"),
    ],
)
def test_bad_flags_that_need_the_dataset_exit_2(data_dir, tmp_path, args, message, capsys):
    argv = [*FAST, "--data_dir", str(data_dir), "--out_dir", str(tmp_path / "run"), *args]
    code = experiment.main(argv)  # the entry function; test_bad_input_all runs real processes
    err = capsys.readouterr().err
    assert code == 2, err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "run").exists()


def test_fsdp_without_full_weights_validates_but_keeps_no_best(data_dir):
    no_full = ["--fsdp", "--consolidate_checkpoint", "false", *VAL]
    assert run_config(data_dir, *VAL).select_by == "val_error"
    assert run_config(data_dir, *no_full).select_by is None
    with pytest.raises(ConfigError, match="--consolidate_checkpoint false"):
        run_config(data_dir, *no_full, "--select_by", "val_error")
