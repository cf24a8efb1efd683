"""config.json and the checkpoint's config: RunConfig writes them as the flags were given (every
script's own flags included) and reads them back whole; a run folder written before a field
existed still resumes and evaluates, the missing field taking its default."""

from __future__ import annotations

import json

import pytest
import torch
from cli import TINY, run_script
from decision_transformer.run import evaluate_checkpoint
from decision_transformer.run.config import RunConfig, build_parser, resolve
from rollouts import write_dataset
from train_humanoid_qwen_dt import parse as parse_humanoid

DERIVED = ["backbone", "world_size", "global_batch_size", "params", "backbone_params"]
ARGVS = {
    "experiment": (lambda a: build_parser().parse_args(a), "gpt2", ["--K", "7"]),
    "experiment_qwen": (
        lambda a: build_parser(qwen=True).parse_args(a),
        "qwen3",
        ["--n_head", "2", "--env_targets", "max", "p90", "3000"],
    ),
    "experiment_bc": (lambda a: build_parser().parse_args(a), "gpt2", ["--model_type", "bc"]),
    "train_humanoid_qwen_dt": (parse_humanoid, "qwen3", ["--preset", "2048x24", "--dry_run"]),
}


@pytest.mark.parametrize("script", list(ARGVS))
def test_config_json_keeps_every_flag_in_order_and_reads_back_whole(script):
    parse, backbone, argv = ARGVS[script]
    args = parse(["--device", "cpu", *argv])
    cfg = resolve(args, backbone)
    assert (cfg.world_size, cfg.global_batch_size) == (1, cfg.batch_size)
    assert cfg.params > cfg.backbone_params >= 0  # counted by resolve, on the meta device
    written = json.loads(json.dumps(cfg.to_dict(), indent=2))
    # The layout config.json always had: the parser's flags in order, then the derived fields.
    assert list(written) == [*vars(args), *DERIVED]
    assert written["dataset"] == "medium" and written["out_dir"] == cfg.out_dir
    back = RunConfig.from_dict(written)
    assert json.dumps(back.to_dict()) == json.dumps(written)  # values and key order
    assert back == cfg


def test_missing_keys_take_defaults_and_unknown_keys_are_kept():
    cfg = RunConfig.from_dict({"env": "hopper", "dataset": "medium", "from_a_newer_version": 3})
    assert cfg.attention == "full" and cfg.world_size == 1 and cfg.qwen is None
    assert cfg.extra == {"from_a_newer_version": 3}
    assert cfg.to_dict()["from_a_newer_version"] == 3


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_dataset(d, "humanoid", "medium", episodes=6, max_steps=40)
    return d


# Keys later versions added to config.json; a folder written before them lacks them.
NEWER_KEYS = (
    "attention", "segment_len", "lr_decay", "dist_timeout", "world_size", "compile", "tasks",
    "task_sampling", "return_bins", "return_kappa", "return_loss_weight",
)  # fmt: skip


def test_old_run_folder_resumes_and_evaluates(data_dir, tmp_path):
    """A one-iteration run made old (config.json and checkpoint without NEWER_KEYS), then
    resumed to two iterations, ends exactly as a two-iteration run that never stopped."""
    base = ["--env", "humanoid", "--data_dir", data_dir, *TINY, "--seed", "2"]
    new, old = tmp_path / "new", tmp_path / "old"
    run_script("experiment.py", *base, "--out_dir", new, "--max_iters", "2", check=True)
    run_script("experiment.py", *base, "--out_dir", old, "--max_iters", "1", check=True)
    ckpt = torch.load(old / "checkpoint.pt", weights_only=True)
    for key in NEWER_KEYS:
        del ckpt["config"][key]
    torch.save(ckpt, old / "checkpoint.pt")
    (old / "config.json").write_text(json.dumps(ckpt["config"], indent=2) + "\n")
    run_script("experiment.py", *base, "--out_dir", old, "--max_iters", "2", "--resume", check=True)
    rows = {
        out: [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        for out in (new, old)
    }
    assert [r["iteration"] for r in rows[old]] == [1, 2]
    for got, want in zip(rows[old], rows[new]):
        assert {k: v for k, v in got.items() if not k.startswith("time/")} == {
            k: v for k, v in want.items() if not k.startswith("time/")
        }
    a = torch.load(old / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(new / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[k], b[k]) for k in b)

    # An old checkpoint evaluates too (evaluate.py reads the checkpoint's own config).
    ckpt = torch.load(old / "checkpoint.pt", weights_only=True)
    for key in NEWER_KEYS:
        del ckpt["config"][key]
    torch.save(ckpt, old / "checkpoint.pt")
    assert evaluate_checkpoint.main(["--checkpoint", str(old)]) == 0  # in-process: a subprocess
    # would add only its interpreter start (evaluate.py runs as one in test_results_tools)
    report = json.loads((old / "eval.json").read_text())
    last = rows[new][-1]
    for res in report["targets"]:
        key = f"evaluation/target_{res['target']:g}_return_mean"
        assert res["return_mean"] == pytest.approx(last[key], rel=1e-9, abs=1e-9)
