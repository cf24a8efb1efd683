"""Flag parsing: the original's flags and defaults, and this project's additions."""

import math

import numpy as np
import pytest
import torch
from decision_transformer.run.config import ConfigError, build_parser, resolve, resolve_targets
from decision_transformer.run.run import lr_factor

ORIGINAL_DEFAULTS = dict(
    env="hopper",
    mode="normal",
    K=20,
    pct_traj=1.0,
    batch_size=64,
    model_type="dt",
    embed_dim=128,
    n_layer=3,
    n_head=1,
    activation_function="relu",
    dropout=0.1,
    learning_rate=1e-4,
    weight_decay=1e-4,
    warmup_steps=10000,
    num_eval_episodes=100,
    max_iters=10,
    num_steps_per_iter=10000,
    log_to_wandb=False,
)


def test_original_flags_keep_their_defaults():
    args = vars(build_parser().parse_args([]))
    assert {k: args[k] for k in ORIGINAL_DEFAULTS} == ORIGINAL_DEFAULTS
    assert resolve(build_parser().parse_args([]), "gpt2").dataset == "medium"


@pytest.mark.parametrize(
    "argv,expected",
    [
        ([], False),
        (["-w"], True),
        (["-w", "True"], True),
        (["-w", "False"], False),
        (["--log_to_wandb", "false"], False),
        (["--log_to_wandb"], True),
    ],
)
def test_wandb_flag_bare_and_boolean(argv, expected):
    assert build_parser().parse_args(argv).log_to_wandb is expected


def test_short_aliases():
    args = build_parser().parse_args(["-lr", "3e-4", "-wd", "0.1"])
    assert args.learning_rate == 3e-4 and args.weight_decay == 0.1


def test_env_name_carries_the_dataset():
    cfg = resolve(build_parser().parse_args(["--env", "humanoid-expert-v2"]), "gpt2")
    assert (cfg.env, cfg.dataset) == ("humanoid", "expert")
    assert cfg.out_dir == "runs/humanoid-expert-dt-gpt2-seed0"


def test_qwen_head_checks():
    p = build_parser(qwen=True)
    with pytest.raises(ConfigError, match="--n_head 12 is not a multiple of --n_kv_head 5"):
        resolve(p.parse_args(["--n_head", "12", "--n_kv_head", "5", "--embed_dim", "768"]), "qwen3")
    with pytest.raises(ConfigError, match="--head_dim"):
        resolve(p.parse_args(["--n_head", "3", "--embed_dim", "128"]), "qwen3")
    cfg = resolve(
        p.parse_args(["--n_head", "3", "--embed_dim", "128", "--head_dim", "32"]), "qwen3"
    )
    assert cfg.qwen.n_kv_head == 3 and cfg.backbone == "qwen3"


def test_targets_from_dataset_returns():
    returns = np.arange(1.0, 101.0)
    args = build_parser().parse_args(["--env_targets", "max", "p90", "250"])
    assert resolve_targets(args.env_targets, returns, (1.0,)) == [100.0, 90.1, 250.0]
    assert resolve_targets(None, returns, (3600.0, 1800.0)) == [3600.0, 1800.0]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--env_targets", "best"])


def test_device_auto_follows_cuda_availability():
    cfg = resolve(build_parser().parse_args(["--device", "auto"]), "gpt2")
    assert cfg.device == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="--device auto"):
            resolve(build_parser().parse_args(["--device", "cuda"]), "gpt2")


def test_learning_rate_schedules():
    warm = [lr_factor(s, warmup=10, total=110, decay="cosine") for s in range(10)]
    assert warm == pytest.approx([(s + 1) / 10 for s in range(10)])
    # The offline steps 10..109 walk the cosine towards a tenth, reached at step 110 = total.
    cosine = [lr_factor(s, warmup=10, total=110, decay="cosine") for s in range(10, 110)]
    assert cosine[0] == 1.0 and cosine[50] == pytest.approx(0.55)
    assert cosine[-1] == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 99 / 100)))
    assert all(a >= b for a, b in zip(cosine, cosine[1:]))
    # Steps from total on are online updates: their own schedule (warmup done: the peak).
    assert lr_factor(110, warmup=10, total=110, decay="cosine") == 1.0
    assert lr_factor(10_000, warmup=10, total=110, decay="cosine") == 1.0
    assert {lr_factor(s, warmup=10, total=110, decay="none") for s in range(9, 200)} == {1.0}
    assert build_parser().parse_args([]).lr_decay == "none"
