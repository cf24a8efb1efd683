"""Returns the model picks itself (--return_bins, --env_targets auto; Multi-Game DT's expert return
inference): the return head never sees the return it predicts while the action does; its bins
cut each task's own data; the tilted sampling; auto rollouts on the real simulator (cached equals
recomputed, an episode's draws are its own) for both backbones, one task and two; resume after
kill -9, export and from_pretrained; a model folder (or Hub repo id) plays auto as its run does,
from the command line and by hand in Python; bad flags are one line, exit 2; a model without the
head is the one before it existed."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from cli import TINY, assert_one_line_error, run_main, run_script
from decision_transformer.data.loading import load_dataset
from decision_transformer.envs import get_spec
from decision_transformer.evaluation.evaluate_episodes import (
    EvalEpisodes,
    evaluate_batched,
    play_one_by_one,
)
from decision_transformer.models.decision_transformer import DecisionTransformer
from decision_transformer.models.decision_transformer_qwen3 import DecisionTransformerQwen3
from decision_transformer.models.pretrained import from_pretrained
from decision_transformer.models.return_bins import bin_index, sample_returns
from decision_transformer.run import evaluate_checkpoint, experiment
from decision_transformer.run.config import RunConfig
from decision_transformer.run.evaluation import target_key
from decision_transformer.run.state import load_full_weights
from hub_fakes import hub_cache
from rollouts import write_two_tasks

KILL_AT = str(Path(__file__).resolve().parent / "kill_at.py")
BASE_RUN = Path(__file__).parent / "data" / "run_ae7ab6b_hopper"  # written by commit ae7ab6b
TASKS = ["hopper:medium", "walker2d:medium"]
NAMES = ["hopper-medium", "walker2d-medium"]
QWEN = ["--n_head", "2", "--n_kv_head", "1"]
BINS = ["--return_bins", "12"]
RUN_KAPPA = "5"  # not --return_kappa's default (10): a folder must carry its run's


def make_dt(backbone: str, bins: int, attention: str = "full", K: int = 4, seed: int = 0):
    torch.manual_seed(seed)
    common = dict(max_length=K, max_ep_len=1000, attention=attention, n_layer=2)
    if bins:
        common["return_bins"] = bins
    if backbone == "qwen3":
        model = DecisionTransformerQwen3(11, 3, 32, n_head=2, n_kv_head=1, **common)
    else:
        model = DecisionTransformer(11, 3, 32, n_head=2, **common)
    if bins:
        model.set_return_range(-0.2, 1.6)
    return model.eval()


def histories(T: int, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(2, T, 11, generator=g),
        torch.randn(2, T, 3, generator=g),
        torch.rand(2, T, 1, generator=g),
        torch.arange(T).expand(2, T),
    )


# --- the model -----------------------------------------------------------------------------


@pytest.mark.parametrize("backbone", ["gpt2", "qwen3"])
@pytest.mark.parametrize("attention", ["full", "window"])
def test_the_return_head_never_sees_the_return_it_predicts_and_the_action_does(backbone, attention):
    """Changing R_t's input leaves the return logits of steps <= t exactly as they were; the
    action at t moves, and so do the logits of t+1 (which see R_t as history)."""
    model = make_dt(backbone, 8, attention)
    s, a, rtg, ts = histories(7)
    _, actions, logits = model(s, a, None, rtg, ts)
    t = 4
    moved = rtg.clone()
    moved[:, t] += 0.7
    _, actions2, logits2 = model(s, a, None, moved, ts)
    assert logits.shape == (2, 7, 8)
    assert torch.equal(logits[:, : t + 1], logits2[:, : t + 1])
    assert (logits[:, t + 1] - logits2[:, t + 1]).abs().max() > 1e-4
    assert (actions[:, t] - actions2[:, t]).abs().max() > 1e-4
    assert torch.equal(actions[:, :t], actions2[:, :t])


@pytest.mark.parametrize("backbone", ["gpt2", "qwen3"])
def test_without_the_head_the_model_is_the_one_before_it(backbone):
    """--return_bins 0 builds the model an older run loads strictly (the ae7ab6b fixture's
    keys, no more), and turning the head on changes no other weight a seed draws: it is built
    last. (The token order without it, (R, s, a), is pinned by test_export's comparison with
    transformers' DecisionTransformerModel.)"""
    off, on = make_dt(backbone, 0), make_dt(backbone, 8)
    extra = set(on.state_dict()) - set(off.state_dict())
    assert extra == {"predict_return_bins.weight", "predict_return_bins.bias", "return_range"}
    for k, v in off.state_dict().items():
        assert torch.equal(v, on.state_dict()[k]), k
    if backbone == "gpt2":
        ckpt = torch.load(BASE_RUN / "checkpoint.pt", weights_only=True)
        from decision_transformer.models.factory import build_model

        env = get_spec("hopper")
        cfg = RunConfig.from_dict(ckpt["config"])
        model = build_model(cfg.model_config(), 11, 3, env.max_ep_len, -1.0, 1.0)
        load_full_weights(model, ckpt)  # strict: any key more or less fails
        assert not hasattr(model, "predict_return_bins")


def test_the_tilt_is_multi_game_dts_and_each_row_draws_from_its_uniform():
    """The sampled bins follow P(R) exp(kappa (R - R_low) / (R_high - R_low)) (R over the bin
    centres), by inverse transform: the same uniform gives the same return whatever else is in
    the batch."""
    bins, kappa = 5, 3.0
    rng = torch.Generator().manual_seed(0)
    logits = torch.randn(bins, generator=rng)
    range_ = torch.tensor([-1.0, 4.0])
    centres = np.array([-0.5, 0.5, 1.5, 2.5, 3.5])
    p = np.exp(logits.double().numpy())
    p /= p.sum()
    want = p * np.exp(kappa * (centres - centres[0]) / (centres[-1] - centres[0]))
    want /= want.sum()
    u = torch.rand(200_000, generator=rng)
    drawn = sample_returns(logits.expand(len(u), bins), range_, kappa, u).numpy()
    got = np.array([(np.isclose(drawn, c)).mean() for c in centres])
    np.testing.assert_allclose(got, want, atol=4e-3)
    alone = sample_returns(logits[None], range_, kappa, u[7:8])
    assert alone.item() == drawn[7]
    # bins: floor((R - low) / width), outside the range in the end bins
    returns = torch.tensor([-3.0, -1.0, -0.01, 0.0, 3.99, 4.0, 9.0])
    assert bin_index(returns, range_, bins).tolist() == [0, 0, 0, 1, 4, 4, 4]


# --- acting on the real simulator -------------------------------------------------------------


def episodes_of(model, use_cache=True, kappa=10.0, target="auto") -> EvalEpisodes:
    return EvalEpisodes(
        "hopper", np.zeros(11), np.ones(11), target=target, max_ep_len=12,
        use_cache=use_cache, return_kappa=kappa,
    )  # fmt: skip


@pytest.mark.parametrize("backbone", ["gpt2", "qwen3"])
def test_auto_cached_equals_recomputed_and_an_episode_draws_on_its_own(backbone):
    """Window attention: the cached rollout (a step fed in two parts) plays the episodes the
    recomputed one plays; one by one (the original evaluators) gives the same returns as three
    at a time, each episode's returns drawn from its own seeded generator."""
    model = make_dt(backbone, 8, "window", K=3)
    seeds = [11, 12, 13]
    cached = evaluate_batched(episodes_of(model), model, seeds, 3)
    recomputed = evaluate_batched(episodes_of(model, use_cache=False), model, seeds, 3)
    alone = play_one_by_one(episodes_of(model), model, seeds)
    np.testing.assert_allclose(cached[0], recomputed[0], rtol=1e-5)
    np.testing.assert_allclose(cached[0], alone[0], rtol=1e-5)
    assert np.array_equal(cached[1], alone[1])
    # the returns it sampled are what it played on: a flat tilt plays other episodes
    flat = evaluate_batched(episodes_of(model, kappa=0.0), model, seeds, 3)
    assert not np.allclose(flat[0], cached[0])
    # a fixed target on the same model: (a_{t-1}, s_t, R_t) fed at once, cached or not
    fixed = [evaluate_batched(episodes_of(model, c, target=500.0), model, seeds, 3) for c in (1, 0)]
    np.testing.assert_allclose(fixed[0][0], fixed[1][0], rtol=1e-5)


# --- runs ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    write_two_tasks(d)
    return d


def rows(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def scaled_rtg_range(data_dir, env: str) -> tuple[float, float]:
    """The data's returns-to-go over every step, from the episodes' rewards, divided by the env's
    scale (computed here apart from the code under test)."""
    ds = load_dataset(data_dir, env, "medium")
    rtgs = [
        np.cumsum(ds.rewards[s : s + n][::-1].astype(np.float64))
        for s, n in zip(ds.starts, ds.lengths)
    ]
    flat = np.concatenate(rtgs) / get_spec(env).scale
    return flat.min(), flat.max()


def train(main, *argv) -> None:
    proc = run_main(main, *argv)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.fixture(scope="module")
def single(data_dir, tmp_path_factory):
    """A GPT-2 DT run with the head (window attention: cached auto rollouts) evaluating auto
    beside max at a kappa of its own, exported."""
    out = tmp_path_factory.mktemp("single") / "run"
    args = ["--env", "hopper", "--data_dir", data_dir, *TINY, *BINS, "--env_targets", "auto",
            "max", "--attention", "window", "--return_kappa", RUN_KAPPA, "--seed", "4",
            "--out_dir", out]  # fmt: skip
    train(experiment.main, *args)
    return out, args


def test_single_task_run_trains_the_head_on_its_datas_bins_and_reports_auto(data_dir, single):
    out, _ = single
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    low, high = scaled_rtg_range(data_dir, "hopper")
    np.testing.assert_allclose(ckpt["model"]["return_range"].numpy(), [low, high], rtol=1e-6)
    assert ckpt["model"]["predict_return_bins.weight"].shape == (12, 32)
    last = rows(out)[-1]
    assert last["training/return_ce"] > 0 and last["training/action_error"] > 0
    assert "evaluation/target_auto_return_mean" in last and ckpt["eval_targets"][0] == "auto"
    # evaluate.py replays the run's auto row exactly, and another kappa plays other episodes
    tmp = out / "e.json"
    proc = run_main(evaluate_checkpoint.main, "--checkpoint", out, "--json", tmp)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(tmp.read_text())
    auto = report["targets"][0]
    assert auto["target"] == "auto"
    assert auto["return_mean"] == last["evaluation/target_auto_return_mean"]


def test_a_return_head_run_exports_and_loads(single, data_dir, tmp_path):
    """The folder's config.json carries return_bins, the run's targets (auto included) and
    kappa, its weights the head and the range; from_pretrained builds the head's model and acts
    with its (s, R, a) order; the card has auto's row."""
    from decision_transformer.run import export

    out, _ = single
    folder = tmp_path / "model"
    proc = run_main(export.main, out, "--out", folder, "--num_eval_episodes", "1")
    assert proc.returncode == 0, proc.stderr
    cfg = json.loads((folder / "config.json").read_text())
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert cfg["return_bins"] == 12 and cfg["acting"]["targets"] == ckpt["eval_targets"]
    assert cfg["acting"]["targets"][0] == "auto"
    assert cfg["acting"]["return_kappa"] == float(RUN_KAPPA)
    assert [r["target"] for r in cfg["evaluation"]["targets"]] == ckpt["eval_targets"]
    card = (folder / "README.md").read_text()
    assert "| auto | " in card and f"kappa {RUN_KAPPA} " in card
    assert "`python evaluate.py --checkpoint model --target_return auto` lets it" in card
    assert f"`acting.return_kappa` ({RUN_KAPPA}, its run's" in card
    # export.py --target_return takes auto among numbers, as evaluate.py does
    chosen = tmp_path / "chosen"
    proc = run_main(export.main, out, "--out", chosen, "--num_eval_episodes", "0",
                    "--target_return", "300", "auto")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads((chosen / "config.json").read_text())["acting"]["targets"] == [300, "auto"]
    model = from_pretrained(folder)
    for k in ("predict_return_bins.weight", "return_range"):
        assert torch.equal(model.state_dict()[k], ckpt["model"][k]), k
    assert "DecisionTransformerModel.from_pretrained" not in (folder / "README.md").read_text()
    assert "library_name: pytorch" in card
    # transformers' DecisionTransformerModel has neither the head nor the order: not one
    hf_flags = ["--env", "hopper", "--dataset", "medium", "--data_dir", data_dir, "--K", "5"]
    proc = run_main(export.main, folder, "--from_transformers", *hf_flags, "--out", tmp_path / "hf")
    assert_one_line_error(proc, "a return-head model (return_bins 12, tokens (s, R, a)), not a")
    assert not (tmp_path / "hf").exists()


def played(report: Path) -> dict:
    """An evaluation JSON's returns per target."""
    return {str(r["target"]): r["returns"] for r in json.loads(report.read_text())["targets"]}


def test_a_folder_plays_auto_as_its_run_does(single, tmp_path, monkeypatch):
    """evaluate.py --checkpoint FOLDER --target_return auto 300 plays the episodes evaluate.py
    plays on the run: at the run's kappa (recorded in the folder) by default, at --return_kappa
    K when given (a Hub repo id of the folder too); a folder from before the field plays kappa
    10, the flag's default. The folder the run wrote at its end shows the run's own auto row."""
    from decision_transformer.run import export

    out, _ = single
    folder = out / "model"
    measured = json.loads((folder / "config.json").read_text())["evaluation"]
    auto = measured["targets"][0]
    assert auto["target"] == "auto" and measured["return_kappa"] == float(RUN_KAPPA)
    assert auto["return_mean"] == rows(out)[-1]["evaluation/target_auto_return_mean"]
    flags = ["--target_return", "auto", "300", "--num_eval_episodes", "2", "--eval_envs", "2",
             "--seed", "1"]  # fmt: skip

    def on_run(*extra) -> dict:
        proc = run_main(evaluate_checkpoint.main, "--checkpoint", out, *flags, *extra,
                        "--json", tmp_path / "r.json")  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        return played(tmp_path / "r.json")

    def on_folder(source, *extra) -> dict:
        proc = run_main(export.evaluate_main, source, *flags, *extra, "--json", tmp_path / "f.json")
        assert proc.returncode == 0, proc.stderr
        return played(tmp_path / "f.json")

    # the user's command, a real process: evaluate.py hands the folder to its evaluation
    gif = tmp_path / "ep.gif"  # auto first: a clip with no return-to-go to count down
    proc = run_script("evaluate.py", "--checkpoint", folder, *flags, "--json", tmp_path / "f.json",
                      "--video", gif)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "target auto: return" in proc.stdout and gif.stat().st_size > 0
    at_run_kappa = on_run()
    assert played(tmp_path / "f.json") == at_run_kappa and list(at_run_kappa) == ["auto", "300.0"]
    assert json.loads((tmp_path / "f.json").read_text())["return_kappa"] == float(RUN_KAPPA)
    flat = on_run("--return_kappa", "0")
    assert flat["auto"] != at_run_kappa["auto"]  # kappa changes what auto plays here
    assert on_folder(folder, "--return_kappa", "0") == flat
    # the same folder as a Hub repo id (huggingface_hub's cache of it, offline)
    from huggingface_hub import constants

    hub_cache(tmp_path / "hub", "someone/dt-auto", folder)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert on_folder("someone/dt-auto", "--return_kappa", "0") == flat
    # a folder written before acting.return_kappa existed: the flag's default, 10
    older = tmp_path / "older"
    older.mkdir()
    for f in folder.iterdir():
        older.joinpath(f.name).write_bytes(f.read_bytes())
    cfg = json.loads((older / "config.json").read_text())
    del cfg["acting"]["return_kappa"]
    (older / "config.json").write_text(json.dumps(cfg))
    assert on_folder(older) == on_run("--return_kappa", "10")


def test_from_pretrained_acts_with_auto_as_docs_reference_says(single):
    """The Python recipe of docs/reference.md ("Feeding the model"), written out by hand on a
    real Hopper episode: each step the head's logits, a return drawn at the folder's kappa from
    a generator seeded with the episode's seed, then the action. It plays the episode the
    folder's evaluation plays (which feeds the model through its key/value cache)."""
    import gymnasium
    from decision_transformer.run.export import evaluate_folder

    model = from_pretrained(single[0] / "model")
    a = model.pretrained_config.acting
    seed = 3  # evaluation seed 0's episode 3
    env = gymnasium.make(a.gym_id)
    obs, _ = env.reset(seed=seed)
    mean, std = torch.tensor(a.state_mean), torch.tensor(a.state_std)
    draws = torch.Generator().manual_seed(seed)
    states = ((torch.as_tensor(obs, dtype=torch.float32) - mean) / std)[None, None]
    actions, rtg = torch.zeros(1, 1, model.act_dim), torch.zeros(1, 1, 1)
    timesteps = torch.zeros(1, 1, dtype=torch.long)
    total, length = 0.0, 0
    while True:
        logits = model.get_return_logits(states, actions, None, rtg, timesteps)
        rtg[0, -1, 0] = model.expert_returns(logits, a.return_kappa, torch.rand(1, generator=draws))
        action = model.get_actions(states, actions, None, rtg, timesteps)[0]
        actions[0, -1] = action
        obs, reward, terminated, truncated, _ = env.step(action.numpy())
        total, length = total + float(reward), length + 1
        if terminated or truncated or length == a.max_ep_len:
            break
        new = ((torch.as_tensor(obs, dtype=torch.float32) - mean) / std)[None, None]
        states = torch.cat([states, new], 1)
        actions = torch.cat([actions, torch.zeros(1, 1, model.act_dim)], 1)
        rtg = torch.cat([rtg, torch.zeros(1, 1, 1)], 1)
        timesteps = torch.cat([timesteps, torch.full((1, 1), length)], 1)
    env.close()
    report = evaluate_folder(model, model.pretrained_config, seed + 1, 0, 1, ["auto"])
    assert report["episode_seeds"][seed] == seed
    assert length == report["targets"][0]["lengths"][seed] > 1
    np.testing.assert_allclose(total, report["targets"][0]["returns"][seed], rtol=1e-5)


@pytest.mark.parametrize("moment,n", [("checkpoint", 2)])
def test_kill_9_then_resume_equals_uninterrupted(single, tmp_path, moment, n):
    out, args = single
    args = [*args[:-1], tmp_path / "run"]
    killed = run_script(KILL_AT, moment, n, "gpt2", *args)
    assert killed.returncode == -9, killed.stderr[-2000:]
    run_script("experiment.py", *args, "--resume", check=True)
    got, want = rows(tmp_path / "run"), rows(out)
    assert [r["iteration"] for r in got] == [1, 2]
    for g, w in zip(got, want):
        for key in w:
            if not key.startswith("time/"):
                assert g[key] == w[key], (key, g[key], w[key])
    a = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in b)


def test_two_task_qwen3_run_bins_each_task_on_its_own_data_and_plays_auto(data_dir, tmp_path):
    out = tmp_path / "multi"
    train(
        lambda a: experiment.main(a, "qwen3"),
        "--tasks", *TASKS, "--data_dir", data_dir, *TINY, *QWEN, *BINS,
        "--env_targets", "auto", "p90", "--out_dir", out,
    )  # fmt: skip
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    for i, env in enumerate(("hopper", "walker2d")):
        low, high = scaled_rtg_range(data_dir, env)
        got = ckpt["model"][f"tasks.{i}.return_range"].numpy()
        np.testing.assert_allclose(got, [low, high], rtol=1e-6)
    last = rows(out)[-1]
    for task in ("hopper-medium", "walker2d-medium"):
        assert f"evaluation/{task}/target_auto_return_mean" in last
    assert "evaluation/mean/auto_normalized_score" in last
    proc = run_main(
        evaluate_checkpoint.main, "--checkpoint", out, "--json", tmp_path / "e.json",
        "--video", tmp_path / "ep.gif",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    # a clip per task at its first target, auto: no return-to-go to count down on it
    assert all((tmp_path / f"ep-{t}.gif").stat().st_size for t in NAMES)
    metrics = json.loads((tmp_path / "e.json").read_text())["metrics"]
    key = "hopper-medium/target_auto_return_mean"
    assert metrics[key] == last[f"evaluation/{key}"]
    # The model folder written at the end: the head and every task's bins travel, and its
    # targets are the run's, auto included, with the run's kappa (the default here).
    from decision_transformer.run import export

    folder = json.loads((out / "model" / "config.json").read_text())
    for task in folder["tasks"]:
        assert task["acting"]["targets"] == ckpt["eval_targets"][task["name"]]
        assert task["acting"]["targets"][0] == "auto" and task["acting"]["return_kappa"] == 10
    card = (out / "model" / "README.md").read_text()
    assert "| hopper-medium | auto | " in card and "kappa 10 " in card
    assert "--checkpoint model --target_return auto` lets it" in card
    assert (
        folder["evaluation"]["mean_normalized_score"]["auto"]
        == (last["evaluation/mean/auto_normalized_score"])
    )
    loaded = from_pretrained(out / "model").state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in ckpt["model"].items())
    # evaluate.py on the folder plays every task's auto as on the run, at --return_kappa K too
    hopper_auto = {}
    for kappa in ("10", "0"):
        on_run = run_main(evaluate_checkpoint.main, "--checkpoint", out, "--return_kappa", kappa,
                          "--json", tmp_path / "r.json")  # fmt: skip
        on_folder = run_main(export.evaluate_main, out / "model", "--return_kappa", kappa,
                             "--num_eval_episodes", "2", "--eval_envs", "2",
                             "--json", tmp_path / "f.json")  # fmt: skip
        assert on_run.returncode == 0 and on_folder.returncode == 0, on_folder.stderr
        ran = json.loads((tmp_path / "r.json").read_text())["metrics"]
        got = json.loads((tmp_path / "f.json").read_text())
        assert got["return_kappa"] == float(kappa)
        for task in got["tasks"]:
            for r in task["targets"]:
                key = f"{task['name']}/{target_key(r['target'])}_return_mean"
                assert r["return_mean"] == ran[key], key
        hopper_auto[kappa] = got["tasks"][0]["targets"][0]["returns"]
    assert hopper_auto["0"] != hopper_auto["10"]  # the kappa changes hopper's auto episodes here
    # a folder written before folders kept auto: its targets without it, no kappa; its mean
    # over tasks is still labelled by the run's p90
    older = tmp_path / "older"
    older.mkdir()
    for f in (out / "model").iterdir():
        older.joinpath(f.name).write_bytes(f.read_bytes())
    cfg = json.loads((older / "config.json").read_text())
    for task in cfg["tasks"]:
        task["acting"]["targets"] = task["acting"]["targets"][1:]
        del task["acting"]["return_kappa"]
    (older / "config.json").write_text(json.dumps(cfg))
    proc = run_main(export.evaluate_main, older, "--num_eval_episodes", "2", "--eval_envs", "2",
                    "--json", tmp_path / "o.json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    means = json.loads((tmp_path / "o.json").read_text())["mean_normalized_score"]
    assert means == {"p90": last["evaluation/mean/p90_normalized_score"]}


# --- refusals -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--env_targets", "auto", "max"], "--env_targets auto samples returns from a return head"),
        (["--return_bins", "-1"], "--return_bins must be >= 0"),
        (["--return_bins", "1"], "--return_bins 1 has nothing to predict"),
        ([*BINS, "--return_kappa", "-1"], "--return_kappa must be a finite number >= 0"),
        ([*BINS, "--return_loss_weight", "0"], "--return_loss_weight must be positive"),
        ([*BINS, "--model_type", "bc"], "--return_bins is not supported with --model_type bc"),
        ([*BINS, "--policy", "stochastic"], "not supported with --policy stochastic"),
        (["--env_targets", "autox"], "expected a number, max, pNN (e.g. p90) or auto"),
    ],
)
def test_bad_return_head_flags_are_one_line_exit_2(data_dir, tmp_path, extra, needle):
    # TINY: a refusal that broke would train a tiny model and fail here, not train for hours
    argv = ["--env", "hopper", "--data_dir", data_dir, "--out_dir", tmp_path / "r", *TINY, *extra]
    proc = run_main(experiment.main, *argv)
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "r").exists()


def test_evaluate_py_refuses_auto_on_a_model_without_the_head(tmp_path):
    proc = run_main(
        evaluate_checkpoint.main, "--checkpoint", BASE_RUN, "--target_return", "auto",
        "--json", tmp_path / "e.json",
    )  # fmt: skip
    assert_one_line_error(proc, "target auto samples returns from a return head this model lacks")
    bad = run_main(evaluate_checkpoint.main, "--checkpoint", BASE_RUN, "--target_return", "x")
    assert_one_line_error(bad, "expected a number or auto")


def test_a_folder_refuses_auto_without_the_head_and_a_bad_kappa(single, tmp_path):
    """The folder's evaluation (evaluate.py --checkpoint FOLDER) and export.py say what
    evaluate.py says on a run, in one line, exit 2, before playing or writing anything."""
    from decision_transformer.run import export

    headless = tmp_path / "headless"
    proc = run_main(export.main, BASE_RUN, "--out", headless, "--num_eval_episodes", "0")
    assert proc.returncode == 0, proc.stderr
    lacks = "target auto samples returns from a return head this model lacks"
    proc = run_main(export.evaluate_main, headless, "--target_return", "auto", "3600")
    assert_one_line_error(proc, lacks)
    proc = run_main(export.main, BASE_RUN, "--out", tmp_path / "m", "--target_return", "auto")
    assert_one_line_error(proc, lacks)
    assert not (tmp_path / "m").exists()
    folder = single[0] / "model"
    proc = run_main(export.evaluate_main, folder, "--return_kappa", "-1")
    assert_one_line_error(proc, "--return_kappa must be >= 0, got -1.0")
    proc = run_main(export.evaluate_main, folder, "--return_kappa", "nan")
    assert_one_line_error(proc, "invalid finite_float value: 'nan'")
    proc = run_main(export.evaluate_main, folder, "--target_return", "autox")
    assert_one_line_error(proc, "expected a number or auto")
