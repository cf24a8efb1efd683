"""Several processes (torchrun, gloo on CPU), checked by numbers rather than by folder names:
an FSDP run resumed equals an uninterrupted one in weights and losses, its own evaluation numbers
are what evaluate.py finds on its export, --consolidate_checkpoint false writes only shards (and
says so), a DDP/FSDP mode change is refused, and DDP killed inside an iteration resumes exactly."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli import TINY, run_script
from decision_transformer.run import evaluate_checkpoint, experiment
from rollouts import write_dataset
from test_distributed import EXACT, NO_EVAL, max_diff, torchrun_args, train, weights

KILL_AT = str(Path(__file__).resolve().parent / "kill_at.py")
EVAL = ["--num_eval_episodes", "4", "--eval_envs", "2"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_dataset(d, "humanoid", "medium", episodes=12, seed=0)
    return d


def rows(out) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def in_process(data_dir, out, *args) -> int:
    argv = ["--env", "humanoid", "--data_dir", str(data_dir), "--out_dir", str(out), *TINY]
    return experiment.main([*argv, *map(str, args)])


def one_line_error(capsys, needle: str) -> None:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and needle in err[0], err


@pytest.fixture(scope="module")
def fsdp_resumed(data_dir, tmp_path_factory):
    """FSDP on 2 ranks: one iteration, then --resume for a second; and one process on the union
    of the ranks' batches (batch 16) for two iterations, never interrupted."""
    root = tmp_path_factory.mktemp("fsdp")
    out, one = root / "fsdp", root / "one"
    flags = [*EXACT, *EVAL, "--fsdp", "--batch_size", "8"]
    train(data_dir, out, *flags, "--max_iters", "1", nproc=2)
    train(data_dir, out, *flags, "--max_iters", "2", "--resume", nproc=2)
    assert in_process(data_dir, one, *EXACT, *NO_EVAL, "--batch_size", "16") == 0
    return out, one


def test_fsdp_resume_equals_an_uninterrupted_run(fsdp_resumed):
    out, one = fsdp_resumed
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    # The shards of iteration 2 only: the resumed run dropped iteration 1's.
    assert ckpt["iteration"] == 2 and sorted(p.name for p in out.glob("dcp-*")) == ["dcp-000002"]
    assert max_diff(weights(out), weights(one)) < 1e-5
    got, want = rows(out), rows(one)
    assert [r["iteration"] for r in got] == [1, 2]
    for g, w in zip(got, want):
        assert g["training/train_loss_mean"] == pytest.approx(w["training/train_loss_mean"], 1e-5)
        assert g["training/learning_rate"] == w["training/learning_rate"]


def test_fsdp_evaluation_numbers_are_evaluate_py_numbers_on_its_export(fsdp_resumed, tmp_path):
    """The FSDP run's logged evaluation (gathered weights, episodes split over ranks) is what
    evaluate.py computes from the consolidated checkpoint.pt in one process."""
    out, _ = fsdp_resumed
    report_path = tmp_path / "eval.json"
    code = evaluate_checkpoint.main(["--checkpoint", str(out), "--json", str(report_path)])
    assert code == 0
    report = json.loads(report_path.read_text())
    row = rows(out)[-1]
    assert report["iteration"] == 2 and len(report["targets"]) == 2
    for res in report["targets"]:
        key = f"evaluation/target_{res['target']:g}"
        assert len(res["returns"]) == 4
        assert row[f"{key}_length_mean"] == res["length_mean"]
        assert row[f"{key}_length_std"] == res["length_std"]
        # Seen: returns agree to ~2e-8 relative, not bit for bit (the ranks evaluate a rebuilt
        # copy of the gathered weights with one OpenMP thread each); a step's worth of weight
        # change moves them by far more than 1e-6.
        for stat in ("return_mean", "return_std"):
            assert row[f"{key}_{stat}"] == pytest.approx(res[stat], rel=1e-6)


def test_fsdp_return_head_resumes_exactly_and_plays_auto_as_evaluate_py(data_dir, tmp_path):
    """A single-task FSDP run with the return head and auto among its targets (the head's bins
    buffer and weights sharded with the root): one iteration, --resume for a second, equals one
    process on the union; its auto numbers (returns sampled from the sharded model's head) are
    evaluate.py's in one process."""
    out, one = tmp_path / "fsdp", tmp_path / "one"
    head = ["--return_bins", "8", "--env_targets", "auto", "max"]
    flags = [*EXACT, *EVAL, *head, "--fsdp", "--batch_size", "8"]
    train(data_dir, out, *flags, "--max_iters", "1", nproc=2)
    train(data_dir, out, *flags, "--max_iters", "2", "--resume", nproc=2)
    assert in_process(data_dir, one, *EXACT, *NO_EVAL, *head, "--batch_size", "16") == 0
    got, want = weights(out), weights(one)
    assert "return_range" in got and "predict_return_bins.weight" in got
    assert max_diff(got, want) < 1e-5
    for g, w in zip(rows(out), rows(one), strict=True):
        for key in ("training/train_loss_mean", "training/return_ce"):
            assert g[key] == pytest.approx(w[key], rel=1e-5), key
    report_path = tmp_path / "eval.json"
    assert evaluate_checkpoint.main(["--checkpoint", str(out), "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    assert [r["target"] for r in report["targets"]][0] == "auto"
    row = rows(out)[-1]
    for res in report["targets"]:
        name = res["target"] if isinstance(res["target"], str) else f"{res['target']:g}"
        key = f"evaluation/target_{name}"
        assert row[f"{key}_length_mean"] == res["length_mean"]
        for stat in ("return_mean", "return_std"):
            assert row[f"{key}_{stat}"] == pytest.approx(res[stat], rel=1e-6)


def test_mode_change_on_resume_is_refused(data_dir, fsdp_resumed, capsys):
    """An FSDP run resumed as a plain (or DDP) run, and a plain run resumed under --fsdp: the
    flags differ, exit 2, one line, nothing written."""
    out, one = fsdp_resumed
    before = (out / "checkpoint.pt").read_bytes()
    code = in_process(data_dir, out, *EXACT, *EVAL, "--batch_size", "8", "--resume")
    assert code == 2
    one_line_error(capsys, "--resume: flags differ from the checkpoint's run (")
    assert (out / "checkpoint.pt").read_bytes() == before
    code = in_process(data_dir, one, *EXACT, *NO_EVAL, "--batch_size", "16",
                      "--fsdp", "--resume")  # fmt: skip
    assert code == 2
    one_line_error(capsys, "fsdp")


def test_no_consolidated_checkpoint(data_dir, fsdp_resumed, tmp_path, capsys):
    """--consolidate_checkpoint false: checkpoint.pt without full weights next to the shards;
    evaluate.py and a one-process resume refuse in one line; an FSDP resume continues exactly."""
    out = tmp_path / "shards"
    flags = [*EXACT, *EVAL, "--fsdp", "--batch_size", "8"]
    train(data_dir, out, *flags, "--max_iters", "1", "--consolidate_checkpoint", "false", nproc=2)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert "model" not in ckpt and (out / ckpt["dcp"]).is_dir()

    assert evaluate_checkpoint.main(["--checkpoint", str(out)]) == 2
    one_line_error(capsys, "holds only sharded weights")
    assert not (out / "eval.json").exists()
    code = in_process(data_dir, out, *flags, "--max_iters", "2", "--resume")
    assert code == 2
    one_line_error(capsys, "holds no consolidated weights (written with --consolidate_checkpoint")

    train(data_dir, out, *flags, "--max_iters", "2", "--resume", nproc=2)
    _, one = fsdp_resumed
    assert max_diff(weights(out), weights(one)) < 1e-5


def test_ddp_killed_inside_an_iteration_resumes_exactly(data_dir, tmp_path):
    """Both ranks SIGKILLed inside the 8th optimizer step (iteration 2), then --resume under
    torchrun: bit-identical weights and the same losses as a 2-rank run never interrupted
    (dropout on: the per-iteration reseeding makes it exact)."""
    flags = ["--max_iters", "3", *NO_EVAL, "--seed", "4"]
    full = tmp_path / "full"
    train(data_dir, full, *flags, nproc=2)
    cut = tmp_path / "cut"
    args = ["--env", "humanoid", "--data_dir", str(data_dir), "--out_dir", str(cut), *TINY, *flags]
    launch = torchrun_args(2, KILL_AT)
    killed = run_script(*launch, "step", "8", "gpt2", *args, timeout=300)
    assert killed.returncode != 0  # torchrun reports its ranks' SIGKILL as a failure
    assert torch.load(cut / "checkpoint.pt", weights_only=True)["iteration"] == 1
    assert [r["iteration"] for r in rows(cut)] == [1]
    train(data_dir, cut, *flags, "--resume", nproc=2)
    assert max_diff(weights(full), weights(cut)) == 0.0
    for g, w in zip(rows(cut), rows(full), strict=True):
        assert g["training/train_loss_mean"] == w["training/train_loss_mean"]


def test_fsdp_run_continues_in_one_process(data_dir, fsdp_resumed, tmp_path, capsys):
    """A 2-rank FSDP run resumed by one process (batch 8 now, from the consolidated copy), then
    evaluated by evaluate.py."""
    import shutil

    # In the shared run's own folder, put back afterwards (its copy would do as well).
    out = fsdp_resumed[0]
    shutil.copytree(out, tmp_path / "kept")
    try:
        flags = [*EXACT, *EVAL, "--fsdp", "--batch_size", "8", "--max_iters", "3", "--resume"]
        assert in_process(data_dir, out, *flags) == 0
        said = capsys.readouterr().out
        assert "resuming with 1 processes instead of 2: the global batch is 8 instead of 16" in (
            said
        )
        assert torch.load(out / "checkpoint.pt", weights_only=True)["iteration"] == 3
        report_path = tmp_path / "eval.json"
        assert evaluate_checkpoint.main(["--checkpoint", str(out), "--json", str(report_path)]) == 0
        report = json.loads(report_path.read_text())
        assert report["iteration"] == 3 and len(report["targets"][0]["returns"]) == 4
    finally:
        shutil.rmtree(out)
        shutil.copytree(tmp_path / "kept", out)
