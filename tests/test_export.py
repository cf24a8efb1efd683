"""Model folders (export.py, from_pretrained, transformers interop, push_to_hub.py): real tiny runs,
a real transformers DecisionTransformerModel, real files and the real simulator."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from cli import GYM_DIR, TINY, assert_one_line_error, run_main, run_script, script_env
from decision_transformer.envs import make_env
from decision_transformer.models.pretrained import (
    FORMAT_VERSION,
    PretrainedError,
    from_pretrained,
    unit_to_box,
)
from decision_transformer.run import evaluate_checkpoint, evaluation, experiment
from decision_transformer.run import export as export_mod
from decision_transformer.run.config import RunConfig
from decision_transformer.run.metrics import read_metrics
from rollouts import rollout_paths, write_dataset

transformers = pytest.importorskip("transformers")

BASE_RUN = Path(__file__).parent / "data" / "run_ae7ab6b_hopper"  # written by commit ae7ab6b
TOL = 1e-5


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    for env in ("humanoid", "hopper"):
        write_dataset(d, env, "medium", episodes=6, max_steps=40)
    return d


def train(data_dir, out, env, backbone="gpt2", *args):
    main = experiment.main if backbone == "gpt2" else (lambda a: experiment.main(a, "qwen3"))
    argv = ["--env", env, "--data_dir", data_dir, "--out_dir", out, *TINY, *args]
    proc = run_main(main, *argv)
    assert proc.returncode == 0, proc.stderr
    return out


@pytest.fixture(scope="module")
def runs(data_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    # bf16 on the CPU: evaluation runs under autocast, the folder's must too.
    qwen = ["--n_head", "2", "--n_kv_head", "1", "--dtype", "bf16"]
    # The ODT's stochastic head in window attention, with the reference's ordering (no timestep
    # embedding) acting on 3 of its 5 steps: no transformers counterpart.
    odt = ["--policy", "stochastic", "--attention", "window", "--no_timestep_embedding"]
    odt += ["--eval_context", "3"]
    return {
        # K 5, 2 heads: the window slides within the short episodes and heads are split.
        "humanoid": train(data_dir, root / "humanoid", "humanoid", "gpt2", "--n_head", "2"),
        "hopper": train(data_dir, root / "hopper", "hopper", "gpt2", "--val_episodes", "2"),
        "qwen3": train(data_dir, root / "qwen3", "hopper", "qwen3", *qwen),
        "bc": train(data_dir, root / "bc", "hopper", "gpt2", "--model_type", "bc"),
        "odt": train(data_dir, root / "odt", "hopper", "gpt2", *odt),
    }


def export(run_dir, out, *args) -> subprocess.CompletedProcess:
    return run_main(export_mod.main, run_dir, "--out", out, *args)


def files_of(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


# ---------------------------------------------------------------------------------------------
# Export, card, load
# ---------------------------------------------------------------------------------------------


def test_a_run_of_the_base_code_exports_and_loads(tmp_path):
    out = tmp_path / "model"
    proc = export(BASE_RUN, out, "--which", "best", "--num_eval_episodes", "2")
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "README.md",
        "config.json",
        "model.safetensors",
    ]
    cfg = json.loads((out / "config.json").read_text())
    ckpt = torch.load(BASE_RUN / "best.pt", weights_only=True)
    acting = cfg["acting"]
    assert cfg["format_version"] == FORMAT_VERSION and cfg["architecture"] == "gpt2_dt"
    assert acting["gym_id"] == "Hopper-v5" and acting["return_scale"] == 1000.0
    for key in ("state_mean", "state_std"):  # exact as float32
        assert np.array_equal(np.float32(acting[key]), ckpt[key].numpy()), key
    assert acting["targets"] == ckpt["eval_targets"] and acting["context_length"] == 3
    assert cfg["provenance"]["iteration"] == ckpt["iteration"]
    model = from_pretrained(out)
    for k, v in ckpt["model"].items():  # every weight and the action box, exactly
        assert torch.equal(model.state_dict()[k], v), k
    card = (out / "README.md").read_text()
    ev = cfg["evaluation"]["targets"][0]
    assert card.startswith("---\nlibrary_name: transformers\n")
    assert f"| {ev['target']:g} | {ev['return_mean']:.1f} ± {ev['return_std']:.1f}" in card
    assert "normalized score" in card and "evaluate_pretrained.py" in card


def test_a_folder_carries_no_local_paths_and_the_runs_versions(runs, data_dir, tmp_path):
    """What goes to the Hub names no folder of this machine (the run's --out_dir, --data_dir or
    the export's --out as absolute paths) and records the stack the run trained on."""
    out = tmp_path / "shared" / "hopper-dt"
    out.parent.mkdir()
    assert export(runs["hopper"], out.resolve(), "--num_eval_episodes", "1").returncode == 0
    text = (out / "config.json").read_text() + (out / "README.md").read_text()
    for local in (runs["hopper"], data_dir, tmp_path):
        assert str(Path(local).resolve()) not in text and str(local) not in text, local
    flags = json.loads((out / "config.json").read_text())["provenance"]["run_config"]
    assert flags["out_dir"] == Path(runs["hopper"]).name and flags["data_dir"] == data_dir.name
    recorded = json.loads((Path(runs["hopper"]) / "config.json").read_text())["versions"]
    versions = json.loads((out / "config.json").read_text())["provenance"]["versions"]
    assert versions == {"recorded_by": "run", **recorded}
    line = next(x for x in (out / "README.md").read_text().splitlines() if "Trained on:" in x)
    assert f"torch {recorded['torch']}, mujoco {recorded['mujoco']}" in line


@pytest.mark.parametrize(
    "run, which", [("hopper", "best"), ("humanoid", "last"), ("qwen3", "last")]
)
def test_training_ends_with_a_model_folder_of_its_own_evaluation(runs, tmp_path, run, which):
    """experiment.py writes RUN/model at the end (best.pt's weights when kept) whose card holds
    the run's evaluation of those weights, not played again: evaluating the folder with the
    card's command gives the same numbers, bit for bit on the CPU."""
    folder = Path(runs[run]) / "model"
    cfg = json.loads((folder / "config.json").read_text())
    ckpt = torch.load(Path(runs[run]) / f"{'best' if which == 'best' else 'checkpoint'}.pt",
                      weights_only=True)  # fmt: skip
    assert cfg["provenance"]["checkpoint"] == which
    model = from_pretrained(folder)
    for k, v in ckpt["model"].items():
        assert torch.equal(model.state_dict()[k].to(v.dtype), v), k
    ev = cfg["evaluation"]
    row = next(r for r in read_metrics(runs[run]) if r["iteration"] == ckpt["iteration"])
    assert ev["measured_by"].startswith(f"the run, at iteration {ckpt['iteration']}")
    for t in ev["targets"]:
        assert t["return_mean"] == row[f"evaluation/target_{t['target']:g}_return_mean"]
    again = tmp_path / "again.json"
    proc = run_main(
        export_mod.evaluate_main, folder, "--num_eval_episodes", str(ev["episodes_per_target"]),
        "--seed", str(ev["seed"]), "--eval_envs", str(ev["eval_envs"]), "--json", again,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    replayed = json.loads(again.read_text())["targets"]
    assert [r["return_mean"] for r in replayed] == [t["return_mean"] for t in ev["targets"]]
    assert (
        f"python evaluate_pretrained.py model --num_eval_episodes {ev['episodes_per_target']}"
        in (folder / "README.md").read_text()
    )


def test_export_false_writes_no_model_folder(data_dir, tmp_path):
    out = train(data_dir, tmp_path / "run", "hopper", "gpt2", "--export", "false",
                "--max_iters", "1")  # fmt: skip
    assert (out / "checkpoint.pt").is_file() and not (out / "model").exists()


def test_init_from_a_model_folder_fine_tunes_its_weights_with_its_statistics(
    runs, data_dir, tmp_path
):
    """--init_from FOLDER: the run starts from the folder's weights (a vanishing learning rate
    keeps them) and normalises with the folder's state mean/std, not the dataset's."""
    folder = Path(runs["hopper"]) / "model"
    acting = json.loads((folder / "config.json").read_text())["acting"]
    out = train(data_dir, tmp_path / "ft", "hopper", "gpt2", "--init_from", folder,
                "--max_iters", "1", "--learning_rate", "1e-12", "--export", "false")  # fmt: skip
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["iteration"] == 1 and ckpt["config"]["max_iters"] == 1
    for key in ("state_mean", "state_std"):
        assert np.array_equal(ckpt[key].numpy(), np.float32(acting[key])), key
    base = from_pretrained(folder).state_dict()
    worst = max((ckpt["model"][k].float() - v.float()).abs().max().item() for k, v in base.items())
    assert worst < 1e-6
    # The dataset's own statistics (a run on all of it) differ: the folder's run held episodes out.
    whole = torch.load(Path(runs["qwen3"]) / "checkpoint.pt", weights_only=True)["state_mean"]
    assert not np.array_equal(whole.numpy(), ckpt["state_mean"].numpy())


def test_a_fine_tuning_run_resumes_with_the_folders_statistics_and_re_exports(
    runs, data_dir, tmp_path
):
    folder = Path(runs["hopper"]) / "model"
    acting = json.loads((folder / "config.json").read_text())["acting"]
    out = tmp_path / "ft"
    train(data_dir, out, "hopper", "gpt2", "--init_from", folder, "--max_iters", "1")
    first = (out / "model" / "model.safetensors").read_bytes()
    train(data_dir, out, "hopper", "gpt2", "--init_from", folder, "--max_iters", "2", "--resume")
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["iteration"] == 2
    assert np.array_equal(ckpt["state_mean"].numpy(), np.float32(acting["state_mean"]))
    exported = json.loads((out / "model" / "config.json").read_text())
    assert (
        exported["provenance"]["iteration"] == 2 and exported["provenance"]["checkpoint"] == "last"
    )
    assert (out / "model" / "model.safetensors").read_bytes() != first
    assert not [p for p in out.iterdir() if p.name.startswith(".model")]  # no temporaries left


def test_init_from_a_model_folder_fine_tunes_online(runs, data_dir, tmp_path):
    folder = Path(runs["odt"]) / "model"
    odt = ["--policy", "stochastic", "--attention", "window", "--no_timestep_embedding"]
    out = train(data_dir, tmp_path / "online", "hopper", "gpt2", *odt, "--init_from", folder,
                "--max_iters", "1", "--online_rounds", "1", "--online_episodes", "1",
                "--online_updates", "2", "--export", "false")  # fmt: skip
    rows = read_metrics(out)
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert len(rows) == 2 and ckpt["online"]
    acting = json.loads((folder / "config.json").read_text())["acting"]
    assert np.array_equal(ckpt["state_mean"].numpy(), np.float32(acting["state_mean"]))


@pytest.mark.parametrize(
    "run, flags, needle",
    [
        ("bc", [], "holds a mlp_bc model"),
        ("hopper", ["--embed_dim", "16"], "--hidden_size 32 (not 16)"),
        ("humanoid", [], "plays humanoid"),
        ("odt", ["--policy", "stochastic", "--attention", "window"], "--no_timestep_embedding;"),
    ],
)
def test_init_from_a_folder_that_does_not_fit_is_one_line(runs, data_dir, tmp_path, run, flags,
                                                           needle):  # fmt: skip
    out = tmp_path / "bad"
    argv = ["--env", "hopper", "--data_dir", data_dir, "--out_dir", out, *TINY, *flags,
            "--init_from", Path(runs[run]) / "model"]  # fmt: skip
    proc = run_main(experiment.main, *argv)
    assert_one_line_error(proc, needle)
    assert not (out / "checkpoint.pt").exists()


def test_a_run_without_versions_gets_the_exports_said_as_such(tmp_path):
    out = tmp_path / "model"
    assert export(BASE_RUN, out, "--num_eval_episodes", "0").returncode == 0
    versions = json.loads((out / "config.json").read_text())["provenance"]["versions"]
    assert versions["recorded_by"].startswith("export") and versions["torch"] == torch.__version__
    assert "Versions as of the export" in (out / "README.md").read_text()


@pytest.mark.parametrize("run, arch", [("qwen3", "qwen3_dt"), ("bc", "mlp_bc"), ("odt", "gpt2_dt")])
def test_exported_model_reproduces_evaluate_py_exactly(runs, tmp_path, run, arch):
    """The card's numbers are evaluate.py's on the run's checkpoint, and evaluate_pretrained.py's
    on the folder, bit for bit on the CPU."""
    out = tmp_path / run
    assert export(runs[run], out, "--num_eval_episodes", "3", "--seed", "4").returncode == 0
    card_eval = json.loads((out / "config.json").read_text())["evaluation"]
    args = evaluate_checkpoint.build_parser().parse_args(
        ["--checkpoint", str(runs[run]), "--num_eval_episodes", "3", "--seed", "4"]
    )
    report = evaluate_checkpoint.evaluate(args)
    assert [r["returns"] for r in card_eval["targets"]] == [r["returns"] for r in report["targets"]]
    again = tmp_path / "again.json"
    proc = run_main(
        export_mod.evaluate_main, out, "--num_eval_episodes", "3", "--seed", "4",
        "--eval_envs", str(card_eval["eval_envs"]), "--json", again,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert json.loads(again.read_text())["targets"] == card_eval["targets"]
    assert json.loads((out / "config.json").read_text())["architecture"] == arch
    # none of these three loads in transformers (Qwen3, MLP, the ODT's head): not its library
    assert (out / "README.md").read_text().startswith("---\nlibrary_name: pytorch\n")
    assert from_pretrained(out, architecture=arch).pretrained_config.architecture == arch


def test_a_qwen3_model_of_the_folders_fields_stands_in_for_its_backbone(runs, tmp_path):
    """The Qwen3Config the folder states builds a transformers Qwen3Model whose weights map onto
    the exported backbone key for key (QWEN3_KEY_MAP), shapes equal, and --init_backbone's loader
    takes that model's folder."""
    from decision_transformer.models.decision_transformer_qwen3 import (
        load_backbone_from_pretrained,
    )
    from decision_transformer.models.pretrained import QWEN3_KEY_MAP
    from safetensors.torch import load_file

    out = tmp_path / "qwen"
    assert export(runs["qwen3"], out, "--num_eval_episodes", "0").returncode == 0
    model = from_pretrained(out)
    qwen = transformers.Qwen3Model(
        transformers.Qwen3Config(
            vocab_size=7, **model.pretrained_config.model.qwen3_backbone_config()
        )
    )
    assert qwen.config.num_key_value_heads == 1 and qwen.config.num_attention_heads == 2
    ours = load_file(out / "model.safetensors")
    n = model.pretrained_config.model.num_hidden_layers
    mapped = {
        theirs.format(i=i): mine.format(i=i)
        for theirs, mine in QWEN3_KEY_MAP.items()
        for i in range(n)
    }
    hf_state = {k: v for k, v in qwen.state_dict().items() if not k.startswith("embed_tokens")}
    assert set(hf_state) == set(mapped)
    assert {k for k in ours if k.startswith("transformer.")} == set(mapped.values())
    for theirs, mine in mapped.items():
        assert hf_state[theirs].shape == ours[mine].shape, theirs
    qwen.save_pretrained(tmp_path / "qwen3_backbone")
    load_backbone_from_pretrained(model, tmp_path / "qwen3_backbone")
    for theirs, mine in mapped.items():
        assert torch.equal(model.state_dict()[mine], hf_state[theirs]), theirs


def test_loading_imports_no_training_code(runs, tmp_path):
    out = tmp_path / "m"
    assert export(runs["hopper"], out, "--num_eval_episodes", "0").returncode == 0
    code = (
        "import sys, torch\n"
        "from decision_transformer.models.pretrained import from_pretrained\n"
        f"m = from_pretrained({str(out)!r})\n"
        "a = m.pretrained_config.acting\n"
        "x = torch.zeros(1, 2, len(a.state_mean))\n"
        "m.get_actions(x, torch.zeros(1, 2, 3), None, torch.zeros(1, 2, 1), torch.zeros(1, 2))\n"
        "bad = [k for k in sys.modules if k.split('.')[:2] in (['decision_transformer', 'run'],"
        " ['decision_transformer', 'training'], ['decision_transformer', 'data'])]\n"
        "assert not bad and 'gymnasium' not in sys.modules, bad\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=GYM_DIR, env=script_env(), capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------------------------
# transformers interop
# ---------------------------------------------------------------------------------------------


def real_windows(env, mean, std, K, n=32, seed=3):
    """Windows of real simulator episodes as the evaluator feeds them: normalized states,
    returns-to-go / 1000, timesteps; a quarter shorter than K (left-padded by the model)."""
    rng = np.random.default_rng(seed)
    paths = rollout_paths(env, episodes=4, seed=seed, max_steps=60)
    out = []
    for i in range(n):
        p = paths[i % len(paths)]
        L = len(p["rewards"])
        length = min(K if i % 4 else int(rng.integers(1, K)), L)
        end = int(rng.integers(length, L + 1))
        s = (p["observations"][end - length : end] - mean) / std
        rtg = np.cumsum(p["rewards"][::-1])[::-1][end - length : end, None] / 1000.0
        out.append((s, p["actions"][end - length : end], rtg, np.arange(end - length, end)))
    return out


def hf_action(hf, s, a, rtg, ts, K):
    """transformers' action for the last step of one history, as its docs' example feeds it:
    the last K steps, left-padded with zeros and masked."""
    s, a, rtg, ts = (torch.as_tensor(np.asarray(x)[-K:]) for x in (s, a, rtg, ts))
    pad = K - len(s)

    def left(x):
        return torch.cat([x.new_zeros((pad, *x.shape[1:])), x])[None]

    mask = torch.cat([torch.zeros(pad), torch.ones(len(s))])[None].long()
    with torch.no_grad():
        out = hf(
            states=left(s.float()), actions=left(a.float()), rewards=None,
            returns_to_go=left(rtg.float()), timesteps=left(ts.long()), attention_mask=mask,
            return_dict=True,
        )  # fmt: skip
    return out.action_preds[0, -1]


def run_model(run_dir):
    """The run's model as evaluate.py rebuilds it from checkpoint.pt."""
    ckpt = torch.load(Path(run_dir) / "checkpoint.pt", weights_only=True)
    cfg = evaluate_checkpoint.eval_config(ckpt, argparse.Namespace(
        num_eval_episodes=None, eval_envs=None, seed=None, device="cpu"))  # fmt: skip
    return evaluate_checkpoint.restore_model(ckpt, cfg), cfg, ckpt


def evaluation_episode(cfg, model, mean, std, target, seed):
    """One episode played by training's evaluator; its actions, then its states replayed."""
    actions = []
    evaluation.evaluate_returns(
        cfg, model, (mean, std), target, [seed], on_step=lambda a, r: actions.append(a.copy())
    )
    env = make_env(cfg.env)
    obs, _ = env.reset(seed=seed)
    states, rewards = [obs], []
    for a in actions:
        obs, r, *_ = env.step(a)
        states.append(obs)
        rewards.append(r)
    env.close()
    return np.asarray(states[:-1]), np.asarray(actions), np.asarray(rewards)


def window_parity(model, hf, env, mean, std, K, to_box) -> float:
    """Max |action difference| between the project's model and transformers' on real windows."""
    worst = 0.0
    for s, a, rtg, ts in real_windows(env, mean, std, K):
        ours = model.get_action(*(torch.as_tensor(x).float() for x in (s, a)), None,
                                torch.as_tensor(rtg).float(), torch.as_tensor(ts))  # fmt: skip
        worst = max(worst, (ours - to_box(hf_action(hf, s, a, rtg, ts, K))).abs().max().item())
    return worst


def episode_parity(cfg, model, mean, std, target, hf, K, to_box) -> tuple[int, float]:
    """A whole evaluation episode played by training's evaluator with the project's model, and
    the largest |difference| between its actions and transformers' on the same histories."""
    states, actions, rewards = evaluation_episode(cfg, model, mean, std, target, seed=7)
    # In the evaluator's precision: Humanoid has dimensions of std 1e-6 (constant in the data),
    # where float64 and float32 normalizations differ by whole units.
    norm = ((torch.as_tensor(states).float() - mean) / torch.as_tensor(std)).numpy()
    rtg = np.zeros((len(actions), 1), np.float32)
    rtg[0] = target / 1000.0
    for t in range(1, len(actions)):
        rtg[t] = rtg[t - 1] - np.float32(rewards[t - 1] / 1000.0)
    worst = 0.0
    for t in range(len(actions)):
        prev = np.concatenate([actions[:t], np.zeros((1, actions.shape[1]))])  # a_t unknown: 0
        theirs = to_box(hf_action(hf, norm[: t + 1], prev, rtg[: t + 1], np.arange(t + 1), K))
        worst = max(worst, float(np.abs(theirs.numpy() - actions[t]).max()))
    return len(actions), worst


@pytest.mark.parametrize("env", ["humanoid", "hopper"])
def test_exported_gpt2_dt_acts_the_same_in_transformers(runs, env, tmp_path, one_thread):
    out = tmp_path / "model"
    assert export(runs[env], out, "--num_eval_episodes", "0").returncode == 0
    model, cfg, ckpt = run_model(runs[env])  # the run's own model, as evaluate.py builds it
    hf = transformers.DecisionTransformerModel.from_pretrained(out).eval()
    acting = from_pretrained(out).pretrained_config.acting
    mean, std = ckpt["state_mean"].numpy(), ckpt["state_std"].numpy()
    if env == "humanoid":
        assert (hf.config.state_dim, hf.config.act_dim) == (348, 17)
        assert acting.action_high == [0.4] * 17
    to_box = lambda a: unit_to_box(a, acting)  # noqa: E731
    windows = window_parity(model, hf, env, mean, std, cfg.K, to_box)
    target = float(ckpt["eval_targets"][0])
    steps, episode = episode_parity(cfg, model, mean, std, target, hf, cfg.K, to_box)
    print(f"export {env}: windows {windows:.2e}, {steps}-step episode {episode:.2e}")
    assert windows <= TOL and episode <= TOL and steps > cfg.K


def transformers_folder(tmp_path, state_dim, act_dim, binary=False, seed=0):
    """A folder written by DecisionTransformerModel.save_pretrained (random weights: its position
    embedding's row 0 is not zero, so a conversion that ignores it shows)."""
    torch.manual_seed(seed)
    config = transformers.DecisionTransformerConfig(
        state_dim=state_dim, act_dim=act_dim, hidden_size=32, n_layer=2, n_head=2, max_ep_len=1000
    )
    hf = transformers.DecisionTransformerModel(config).eval()
    assert hf.encoder.wpe.weight[0].abs().max() > 1e-3
    folder = tmp_path / ("hf_bin" if binary else "hf")
    hf.save_pretrained(folder)
    if binary:  # the layout of older Hub uploads
        (folder / "model.safetensors").unlink()
        torch.save(hf.state_dict(), folder / "pytorch_model.bin")
    return hf, folder


@pytest.mark.parametrize(
    "env, binary",
    [("humanoid", False), ("hopper", False), ("hopper", True)],
    ids=["humanoid", "hopper", "hopper-pytorch_model.bin"],
)
def test_a_transformers_folder_imports_and_acts_the_same(data_dir, tmp_path, env, binary,
                                                        one_thread):  # fmt: skip
    state_dim, act_dim = {"humanoid": (348, 17), "hopper": (11, 3)}[env]
    hf, folder = transformers_folder(tmp_path, state_dim, act_dim, binary)
    out = tmp_path / "imported"
    proc = export(folder, out, "--from_transformers", "--env", env, "--dataset", "medium",
                  "--data_dir", data_dir, "--K", "8", "--num_eval_episodes", "2")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    model = from_pretrained(out)
    acting = model.pretrained_config.acting
    assert acting.action_low == [-1.0] * act_dim  # transformers' tanh output is the action
    assert json.loads((out / "config.json").read_text())["evaluation"]["episodes_per_target"] == 2
    mean, std = np.float32(acting.state_mean), np.float32(acting.state_std)
    windows = window_parity(model, hf, env, mean, std, 8, lambda a: a)
    cfg = RunConfig(env=env, eval_envs=2)
    target = acting.targets[0]
    steps, episode = episode_parity(cfg, model, mean, std, target, hf, 8, lambda a: a)
    print(f"import {env}: windows {windows:.2e}, {steps}-step episode {episode:.2e}")
    assert windows <= TOL and episode <= TOL and steps > 8
    # and back: the imported model, exported, is transformers' model again
    back = transformers.DecisionTransformerModel.from_pretrained(out).eval()
    assert window_parity(model, back, env, mean, std, 8, lambda a: a) <= TOL


def test_a_transformers_folder_asks_for_what_it_lacks(tmp_path):
    _, folder = transformers_folder(tmp_path, 11, 3)
    out = tmp_path / "imported"
    proc = export(folder, out, "--from_transformers", "--env", "hopper", "--K", "20")
    assert_one_line_error(proc, "pass --dataset")
    proc = export(folder, out, "--from_transformers", "--env", "hopper", "--dataset", "medium")
    assert_one_line_error(proc, "pass --K")
    proc = export(folder, out, "--from_transformers", "--env", "humanoid", "--dataset", "medium",
                  "--K", "20")  # fmt: skip
    assert_one_line_error(proc, "11 observations and 3 actions, humanoid has 348 and 17")
    with pytest.raises(PretrainedError, match="transformers DecisionTransformerModel folder"):
        from_pretrained(folder)
    assert not out.exists()


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written over
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def good_folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("good") / "model"
    assert export(BASE_RUN, out, "--num_eval_episodes", "0").returncode == 0
    return out


def edited_copy(good_folder, tmp_path, edit) -> Path:
    folder = tmp_path / "edited"
    folder.mkdir()
    for name, data in files_of(good_folder).items():
        (folder / name).write_bytes(data)
    cfg = json.loads((folder / "config.json").read_text())
    edit(cfg, folder)
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def _newer(cfg, folder):
    cfg["format_version"] = FORMAT_VERSION + 1


def _no_state_std(cfg, folder):
    del cfg["acting"]["state_std"]


def _wider(cfg, folder):
    cfg["hidden_size"] = 16  # the weights are 8 wide


def _short_mean(cfg, folder):
    cfg["acting"]["state_mean"] = cfg["acting"]["state_mean"][:-1]


def _other_weights(cfg, folder):
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "model.safetensors")
    state["predict_action.0.weight"] = torch.zeros(2, 8)
    save_file(state, folder / "model.safetensors")


def _auto_without_head(cfg, folder):
    cfg["acting"]["targets"] = ["auto", 3600]  # the base run's model has no return head


def _negative_kappa(cfg, folder):
    cfg["acting"]["return_kappa"] = -1


def _text_target(cfg, folder):
    cfg["acting"]["targets"] = ["max"]


@pytest.mark.parametrize(
    "edit, needle",
    [
        (_newer, f"format version {FORMAT_VERSION + 1}, newer than this code reads"),
        (_auto_without_head, "acting.targets holds auto but the model has no return head"),
        (_negative_kappa, "acting.return_kappa must be a finite number >= 0"),
        (_text_target, "acting.targets must be a list of finite numbers or auto"),
        (_no_state_std, "lacks what acting needs: state_std"),
        (_wider, "do not fit the model"),
        (_short_mean, "acting.state_mean has 10 values"),
        (_other_weights, "shapes predict_action.weight (2, 8) vs (3, 8)"),
    ],
)
def test_a_bad_folder_is_one_line(good_folder, tmp_path, edit, needle):
    folder = edited_copy(good_folder, tmp_path, edit)
    before = files_of(folder)
    with pytest.raises(PretrainedError, match=None) as err:
        from_pretrained(folder)
    assert needle in str(err.value) and "\n" not in str(err.value), str(err.value)
    proc = run_main(export_mod.evaluate_main, folder, "--num_eval_episodes", "1")
    assert_one_line_error(proc, needle)
    assert files_of(folder) == before


def test_another_architecture_is_refused(good_folder):
    with pytest.raises(PretrainedError, match="holds a gpt2_dt model, not a qwen3_dt"):
        from_pretrained(good_folder, architecture="qwen3_dt")


def test_export_refuses_bad_runs_and_writes_nothing_over(good_folder, tmp_path, runs):
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "mine.txt").write_text("keep")
    assert_one_line_error(export(BASE_RUN, existing), "already exists and is not an empty folder")
    assert (existing / "mine.txt").read_text() == "keep" and len(list(existing.iterdir())) == 1
    out = tmp_path / "out"
    assert_one_line_error(export(runs["qwen3"], out, "--which", "best"), "export --which last")
    assert_one_line_error(export(tmp_path / "nothing", out), "no run folder at")
    # A checkpoint whose weights are not its config's model (another run's best.pt).
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    ckpt = torch.load(BASE_RUN / "checkpoint.pt", weights_only=True)
    ckpt["config"]["embed_dim"] = 16
    torch.save(ckpt, mixed / "checkpoint.pt")
    assert_one_line_error(export(mixed, out), "do not fit the model its config describes")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_a_checkpoint_without_its_resolved_targets_asks_for_them(tmp_path):
    """Targets given as max or pNN resolve on the dataset: a checkpoint that does not record the
    numbers makes export.py ask for --target_return, in evaluate.py's words."""
    run = tmp_path / "run"
    run.mkdir()
    ckpt = torch.load(BASE_RUN / "checkpoint.pt", weights_only=True)
    del ckpt["eval_targets"]
    ckpt["config"]["env_targets"] = ["max", 3000.0]
    torch.save(ckpt, run / "checkpoint.pt")
    needle = "depend on its dataset and the checkpoint does not record them: pass --target_return"
    assert_one_line_error(export(run, tmp_path / "out"), needle)
    proc = run_main(evaluate_checkpoint.main, "--checkpoint", run / "checkpoint.pt")
    assert_one_line_error(proc, needle)
    assert not (tmp_path / "out").exists()
    out = tmp_path / "given"
    assert export(run, out, "--target_return", "3000", "--num_eval_episodes", "0").returncode == 0
    assert json.loads((out / "config.json").read_text())["acting"]["targets"] == [3000.0]


def test_an_unreachable_repo_id_fails_fast_in_one_line(tmp_path):
    start = time.monotonic()
    proc = run_script("evaluate_pretrained.py", "nobody-here/no-such-model", cwd=GYM_DIR)
    assert_one_line_error(proc, "cannot fetch nobody-here/no-such-model from the Hugging Face Hub")
    assert time.monotonic() - start < 60
    assert_one_line_error(
        run_main(export_mod.evaluate_main, tmp_path / "nothing"), "no model folder at"
    )


def test_evaluate_py_takes_a_model_folder(good_folder, tmp_path):
    """evaluate.py --checkpoint FOLDER plays the folder as evaluate.py plays the run it came
    from (the same returns), renders its video, and leaves the folder as it was."""
    before = files_of(good_folder)
    flags = ["--num_eval_episodes", "2", "--eval_envs", "2", "--seed", "1"]
    folder_json, run_json, gif = tmp_path / "f.json", tmp_path / "r.json", tmp_path / "ep.gif"
    proc = run_script("evaluate.py", "--checkpoint", good_folder, *flags, "--json", folder_json,
                      "--video", gif)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    proc = run_script("evaluate.py", "--checkpoint", BASE_RUN, *flags, "--json", run_json)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ours = [r["returns"] for r in json.loads(folder_json.read_text())["targets"]]
    theirs = [r["returns"] for r in json.loads(run_json.read_text())["targets"]]
    assert ours == theirs
    assert gif.stat().st_size > 0 and json.loads(folder_json.read_text())["video"]["frames"] > 1
    assert files_of(good_folder) == before


def test_plot_py_refuses_a_model_folder_in_one_line(good_folder, tmp_path):
    """A model folder holds one measured evaluation, not curves: plot.py says so in one line
    and names the run folder that has them (RUN/model's RUN); a Hub id, the same."""
    import shutil

    run = tmp_path / "run"
    shutil.copytree(BASE_RUN, run)
    shutil.copytree(good_folder, run / "model")
    proc = run_script("plot.py", run / "model", "--table")
    assert_one_line_error(proc, "is a model folder: it holds one measured evaluation")
    assert f"plot its run folder {run}" in proc.stderr
    from decision_transformer.run import plots

    proc = run_main(plots.main, "someone/dt-hopper", "--table")
    assert_one_line_error(proc, "a Hub model repo holds no training curves")
    assert run_main(plots.main, run, "--table").returncode == 0  # the run itself plots


def test_the_docs_example_card_is_what_export_writes(tmp_path):
    """docs/reference.md shows a card and the command that made it: run now, the command
    writes that card (its versions line, this machine's stack, aside)."""
    import re
    import shlex

    docs = (GYM_DIR.parent / "docs" / "reference.md").read_text()
    section = docs[docs.index("An example card, made by the command above") :]
    command = re.search(r"```bash\ncd gym && python export.py (.*)\n```", section).group(1)
    shown = section.split("````markdown\n", 1)[1].split("\n````", 1)[0]
    args = shlex.split(command)
    out = args.index("--out") + 1
    name = Path(args[out]).name
    args[0], args[out] = GYM_DIR / args[0], tmp_path / name
    assert run_main(export_mod.main, *args).returncode == 0
    card = (tmp_path / name / "README.md").read_text()

    def lines(text: str) -> list[str]:
        return [x for x in text.strip().splitlines() if not x.startswith("Versions as of")]

    assert lines(card) == lines(shown)


# ---------------------------------------------------------------------------------------------
# Sharing
# ---------------------------------------------------------------------------------------------


def test_push_without_network_is_one_line_and_leaves_the_folder(good_folder, tmp_path):
    before = files_of(good_folder)
    env = {**script_env(), "HF_TOKEN": "hf_not_a_real_token", "HF_HOME": str(tmp_path / "hf")}
    start = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "push_to_hub.py", str(good_folder), "someone/dt-hopper"],
        cwd=GYM_DIR, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert_one_line_error(proc, "upload to someone/dt-hopper failed")
    assert time.monotonic() - start < 60
    assert files_of(good_folder) == before
    assert "hf_not_a_real_token" not in "".join(
        p.read_text(errors="ignore") for p in (tmp_path / "hf").rglob("*") if p.is_file()
    )
    env.pop("HF_TOKEN")
    proc = subprocess.run(
        [sys.executable, "push_to_hub.py", str(good_folder), "someone/dt-hopper"],
        cwd=GYM_DIR, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert_one_line_error(proc, "not logged in to the Hugging Face Hub")
    assert files_of(good_folder) == before
