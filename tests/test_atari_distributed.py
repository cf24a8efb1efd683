"""run_dt_atari.py under torchrun (2 gloo ranks on CPU, real ALE, replays collected from the
emulator): each rank's slice of every global batch; 2 ranks equal one process on the same
global batch, for one game and for --games; the evaluation's episodes split across the ranks
are one process's, episode by episode; a run SIGKILLed under torchrun resumes exactly, also
from torchrun into one process and back."""

from __future__ import annotations

import json

import pytest
import torch
from atari_cli import TINY, run_script
from cli import ROOT
from decision_transformer.run.checkpoint import load_checkpoint
from decision_transformer.run.distributed import DistContext
from test_distributed import max_diff, torchrun_args

KILL_AT = str(ROOT / "tests" / "atari_kill_at.py")
# The runs compared: no dropout (the ranks' dropout draws differ from one process's), a global
# batch of 8 (4 per rank), 4 steps an epoch, a checkpoint every 2 steps.
EXACT = ["--batch_size", "8", "--dropout", "0", "--steps_per_epoch", "4"]
# Evaluation: 3 episodes (1 on rank 0, 2 on rank 1), one environment at a time on every rank and
# in one process, so each model call sees a batch of 1 either way (same rounding).
EVAL = ["--eval_episodes", "3", "--eval_envs", "1", "--eval_max_steps", "300"]
# 2 ranks against one process after 8 (4) steps: the gradients are summed in another order, so
# weights agree to float rounding. Seen: ~5e-7 (AdamW's first steps amplify it where a gradient
# is near its eps); ranks taking overlapping slices differ by ~1e-3, a schedule counting one
# rank's tokens by ~3e-5. (Over ~100 steps the rounding itself grows to ~1e-3: compare early.)
TOL = 1e-5


def launch(*args, nproc: int = 1, script: str = "run_dt_atari.py", check: bool = True):
    prefix = torchrun_args(nproc, script) if nproc > 1 else [script]
    proc = run_script(*prefix, *args, timeout=400)
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def weights(out) -> dict[str, torch.Tensor]:
    return load_checkpoint(out / "checkpoint.pt")["model"]


def rows(out) -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if not k.startswith("time/")} for x in lines]


def trained_model(out):
    """The run's checkpointed model and config, as evaluate_atari.py rebuilds them."""
    import run_dt_atari

    state = load_checkpoint(out / "checkpoint.pt")
    w, cfg = state["model"], dict(state["config"])
    model = run_dt_atari.build_model(
        cfg, w["head.weight"].shape[0], w["global_pos_emb"].shape[1] - 1
    )
    model.load_state_dict(w)
    return model, cfg


@pytest.fixture(scope="module")
def single(atari_replay, tmp_path_factory):
    """One game, 2 epochs of 4 steps, evaluated after each: 2 ranks, and one process."""
    root = tmp_path_factory.mktemp("atari_ddp")
    flags = [*TINY, "--data_dir_prefix", atari_replay, *EXACT, *EVAL, "--epochs", "2",
             "--save_every", "2"]  # fmt: skip
    ddp = launch(*flags, "--out_dir", root / "ddp", nproc=2)
    launch(*flags, "--out_dir", root / "one")
    return flags, root / "ddp", root / "one", ddp.stdout


def test_each_rank_takes_its_own_slice_of_every_batch():
    """The ranks' slices of each global batch are disjoint and, in rank order, the batch one
    process takes; a short last batch is split too, a rank left without a window weighed 0."""
    from mingpt.trainer_atari import EpochBatches

    def batches(n: int, world: int, skip: int = 0) -> list[EpochBatches]:
        return [EpochBatches(n, 3, 1, skip, 8, DistContext(r, world)) for r in range(world)]

    for n, skip in ((21, 0), (21, 1), (17, 0)):
        (one,), ranks = batches(n, 1, skip), batches(n, 2, skip)
        whole = list(one)
        parts = [list(b) for b in ranks]
        assert len(whole) == len(one) == len(ranks[0]) == 3 - skip
        for i, batch in enumerate(whole):
            step = skip + i
            if one.windows(step) >= 2:
                assert parts[0][i] + parts[1][i] == batch
                assert [len(p[i]) for p in parts] == [one.windows(step) // 2,
                                                      (one.windows(step) + 1) // 2]  # fmt: skip
            weights = [b.weight(step) for b in ranks]
            assert one.weight(step) == 1.0 and sum(weights) == pytest.approx(2.0)
    # 17 windows: the last batch holds 1; rank 0 gets a stand-in, weighed 0, rank 1 the window.
    last = [list(b)[-1] for b in batches(17, 2)]
    assert last[0] == last[1] and [b.weight(2) for b in batches(17, 2)] == [0.0, 2.0]
    assert sorted(i for b in batches(21, 1) for batch in b for i in batch) == list(range(21))


def test_two_ranks_equal_one_process_on_the_global_batch(single):
    _, ddp, one, said = single
    assert "4 steps/epoch of 8 windows (4 per process x 2 processes, DDP)" in said
    assert max_diff(weights(ddp), weights(one)) < TOL
    got, want = rows(ddp), rows(one)  # rank 0 alone wrote: one row an epoch
    assert [r["step"] for r in got] == [r["step"] for r in want] == [4, 8]
    for g, w in zip(got, want, strict=True):
        # The schedule counts the global batch's tokens: 8 windows x 4 steps a step.
        assert g["train/tokens"] == w["train/tokens"] and g["train/lr"] == w["train/lr"]
        assert g["train/loss"] == pytest.approx(w["train/loss"], rel=1e-5)
    state = load_checkpoint(ddp / "checkpoint.pt")
    assert state["world_size"] == 2 and len(state["rank_rng"]) == 2
    assert not any(k.startswith("module.") for k in state["model"])  # the plain model's names
    assert (ddp / "model" / "model.safetensors").is_file()


def test_split_evaluation_is_one_process_evaluation_per_episode(single, one_thread):
    """The 2-rank run's last evaluation (episode 0 on rank 0, 1 and 2 on rank 1) is, episode by
    episode, what one process playing all three with the same weights gets."""
    import run_dt_atari

    _, ddp, _, _ = single
    model, cfg = trained_model(ddp)
    res = run_dt_atari.evaluate_model(model, cfg, torch.device("cpu"))
    last = rows(ddp)[-1]
    assert last["eval/returns"] == res["returns"] and last["eval/lengths"] == res["lengths"]
    # The episodes differ from each other, so a rank replaying another's seeds would show.
    assert len({(r, n) for r, n in zip(res["returns"], res["lengths"])}) == 3


def test_killed_under_torchrun_resumes_exactly_also_in_one_process_and_back(single, tmp_path):
    """SIGKILL inside step 3 under torchrun, --resume under torchrun killed inside step 6, then
    one process killed inside step 7, then torchrun to the end (a checkpoint every step): epoch
    1 (both segments on 2 ranks) is bit for bit the uninterrupted 2-rank run's; the end equals
    it and one process within float rounding."""
    flags, ddp, one, _ = single
    flags = [*flags[: flags.index("--save_every")], "--save_every", "1"]
    out = tmp_path / "cut"
    args = [*flags, "--out_dir", out]

    killed = launch("3", *args, script=KILL_AT, nproc=2, check=False)
    assert killed.returncode != 0 and load_checkpoint(out / "checkpoint.pt")["trainer"][
        "global_step"] == 2  # fmt: skip
    launch("4", *args, "--resume", script=KILL_AT, nproc=2, check=False)  # steps 3-5 done, 6 killed
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["trainer"]["global_step"] == 5 and state["world_size"] == 2
    assert rows(out) == rows(ddp)[:1]  # epoch 1: the same loss, lr, tokens and evaluation
    proc = launch(
        "2", *args, "--resume", script=KILL_AT, check=False
    )  # one process: 6 done, 7 killed
    assert proc.returncode != 0 and "resuming with 1 processes instead of 2" in proc.stdout
    state = load_checkpoint(out / "checkpoint.pt")
    assert state["trainer"]["global_step"] == 6 and "rank_rng" not in state
    proc = launch(*args, "--resume", nproc=2)
    assert "resuming with 2 processes instead of 1" in proc.stdout
    assert max_diff(weights(out), weights(ddp)) < TOL
    assert max_diff(weights(out), weights(one)) < TOL
    got, want = rows(out), rows(ddp)
    assert [r["step"] for r in got] == [4, 8] and got[0] == want[0]
    assert got[1]["train/tokens"] == want[1]["train/tokens"]
    assert got[1]["train/loss"] == pytest.approx(want[1]["train/loss"], rel=1e-5)


def test_two_games_two_ranks_equal_one_process(atari_two_games, tmp_path, one_thread):
    """--games under torchrun: weights equal one process's within float rounding, and each
    game's split evaluation is one process's per episode."""
    from multigame import evaluate_games

    flags = [*TINY, "--data_dir_prefix", atari_two_games, *EXACT, *EVAL, "--epochs", "1",
             "--games", "Breakout", "Qbert"]  # fmt: skip
    launch(*flags, "--out_dir", tmp_path / "ddp", nproc=2)
    launch(*flags, "--out_dir", tmp_path / "one")
    assert max_diff(weights(tmp_path / "ddp"), weights(tmp_path / "one")) < TOL
    got, want = rows(tmp_path / "ddp"), rows(tmp_path / "one")
    assert got[0]["train/tokens"] == want[0]["train/tokens"]
    assert got[0]["train/loss"] == pytest.approx(want[0]["train/loss"], rel=1e-5)
    model, cfg = trained_model(tmp_path / "ddp")
    results = evaluate_games(model, cfg, torch.device("cpu"), None)
    for game, res in results.items():
        assert got[0][f"eval/{game}/returns"] == res["returns"], game
        assert got[0][f"eval/{game}/lengths"] == res["lengths"], game
    episodes = {(r, n) for res in results.values() for r, n in zip(res["returns"], res["lengths"])}
    assert len(episodes) == 6


def test_dropout_resume_under_torchrun_is_bit_for_bit(atari_replay, tmp_path):
    """With dropout on, each rank draws its own masks; SIGKILL inside step 3, then --resume on 2
    ranks: every rank's generator comes back from the checkpoint, so the weights and loss are
    those of the 2-rank run never interrupted, bit for bit."""
    flags = [*TINY, "--data_dir_prefix", atari_replay, "--batch_size", "8", "--dropout", "0.1",
             "--steps_per_epoch", "4", "--epochs", "1", "--save_every", "1",
             "--eval_episodes", "0"]  # fmt: skip
    launch(*flags, "--out_dir", tmp_path / "full", nproc=2)
    args = [*flags, "--out_dir", tmp_path / "cut"]
    launch("3", *args, script=KILL_AT, nproc=2, check=False)
    assert load_checkpoint(tmp_path / "cut" / "checkpoint.pt")["trainer"]["global_step"] == 2
    launch(*args, "--resume", nproc=2)
    assert max_diff(weights(tmp_path / "cut"), weights(tmp_path / "full")) == 0.0
    assert rows(tmp_path / "cut") == rows(tmp_path / "full")


def test_a_last_batch_of_one_window(atari_replay, tmp_path):
    """413 windows in batches of 206: the epoch's last batch (step 3) holds 1, so rank 0 gets a
    stand-in weighed 0 and rank 1 the window. One process stopped before it (SIGKILL inside step
    3, checkpoint of step 2), then that step once on 2 ranks and once in one process: the same
    weights and loss. (Compared from the same state: over many steps the two ways of summing
    round apart, seen ~1e-3 in the conv encoder after 100 steps, too much to see one step by.)"""
    import shutil

    flags = [*TINY, "--data_dir_prefix", atari_replay, "--batch_size", "206", "--dropout", "0",
             "--epochs", "1", "--eval_episodes", "0", "--save_every", "2"]  # fmt: skip
    launch("3", *flags, "--out_dir", tmp_path / "one", script=KILL_AT, check=False)
    assert load_checkpoint(tmp_path / "one" / "checkpoint.pt")["trainer"]["step"] == 2
    shutil.copytree(tmp_path / "one", tmp_path / "ddp")
    said = launch(*flags, "--out_dir", tmp_path / "ddp", "--resume", nproc=2).stdout
    assert "413 windows, 3 steps/epoch of 206 windows (103 per process x 2 processes" in said
    launch(*flags, "--out_dir", tmp_path / "one", "--resume")
    assert max_diff(weights(tmp_path / "ddp"), weights(tmp_path / "one")) < TOL
    got, want = rows(tmp_path / "ddp")[0], rows(tmp_path / "one")[0]
    assert got["train/tokens"] == want["train/tokens"] == 413 * 4
    assert got["train/loss"] == pytest.approx(want["train/loss"], rel=1e-6)


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--batch_size", "5"], "--batch_size 5 (the global batch) does not split evenly over 2"),
        (["--evaluate_only"], "--evaluate_only runs in one process"),
    ],
)
def test_under_torchrun_refused_in_one_line(monkeypatch, tmp_path, capsys, extra, needle):
    """What torchrun cannot run is refused before any process group or data (WORLD_SIZE is
    what torchrun sets; no group is joined)."""
    import run_dt_atari

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    code = run_dt_atari.main([*TINY, "--out_dir", str(tmp_path / "run"), *extra])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err
    assert not (tmp_path / "run").exists()


def test_evaluate_atari_under_torchrun_refused_in_one_line(monkeypatch, tmp_path, capsys):
    """Evaluating a saved run is one process's work: under torchrun it is refused before any
    checkpoint is read (the path given does not even exist)."""
    import evaluate_atari

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    code = evaluate_atari.main(["--checkpoint", str(tmp_path / "run"), "--json",
                                str(tmp_path / "e.json")])  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "runs in one process" in err[0] and "not torchrun" in err[0], err
    assert not (tmp_path / "e.json").exists()
