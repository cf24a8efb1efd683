"""After a run: evaluate_atari.py reproduces the run's last evaluation and writes JSON and a
video whose frames change; the seed table aggregates per-seed results; batched evaluation
equals one-env evaluation when episodes end at different steps (rows refilled and padded)."""

from __future__ import annotations

import json
import statistics

import pytest
import torch
from atari_cli import TINY, run_script


def test_evaluating_a_checkpoint_reproduces_the_last_evaluation(atari_replay, tmp_path, capsys):
    run = tmp_path / "run"
    proc = run_script(
        "run_dt_atari.py", *TINY, "--data_dir_prefix", atari_replay, "--epochs", "1",
        "--steps_per_epoch", "3", "--eval_episodes", "3", "--eval_envs", "3",
        "--eval_max_steps", "100", "--out_dir", run,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])

    # Fewer environments at once than in training: the seeds, not the slots, fix the episodes.
    out = tmp_path / "eval.json"
    video = tmp_path / "episode0.gif"
    proc = run_script("evaluate_atari.py", "--checkpoint", run, "--eval_envs", "2",
                      "--json", out, "--video", video)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    res = json.loads(out.read_text())
    assert res["returns"] == last["eval/returns"] and res["lengths"] == last["eval/lengths"]
    assert res["return_mean"] == last["eval/return_mean"]
    assert res["human_normalized"] == last["eval/human_normalized"]
    assert res["gamer_normalized"] == last["eval/gamer_normalized"]
    assert "| run | target |" in proc.stdout and "| 90 | 3 |" in proc.stdout  # the table

    assert res["video"]["return"] == res["returns"][0]  # episode 0 replayed, not another
    assert "warning" not in proc.stderr

    # The video: one frame per step plus the reset state, and the frames change.
    from PIL import Image, ImageChops

    with Image.open(video) as im:
        assert im.n_frames == res["video"]["frames"] == res["lengths"][0] + 1
        frames = []
        for i in (0, im.n_frames // 2, im.n_frames - 1):
            im.seek(i)
            frames.append(im.convert("RGB"))
    # The game area (below the text box) differs between frames, not only the step counter.
    box = (0, 80, frames[0].width, frames[0].height)
    assert ImageChops.difference(frames[0].crop(box), frames[1].crop(box)).getbbox() is not None
    assert ImageChops.difference(frames[1].crop(box), frames[2].crop(box)).getbbox() is not None

    # --evaluate_only on run_dt_atari.py is the same evaluation.
    proc = run_script("run_dt_atari.py", "--evaluate_only", "--out_dir", run, "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((run / "eval.json").read_text())["returns"] == last["eval/returns"]

    # A bad --video suffix is refused in one line before evaluating.
    import evaluate_atari

    capsys.readouterr()
    assert evaluate_atari.main(["--checkpoint", str(run), "--video", str(tmp_path / "x.avi")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ".mp4" in err


def test_seed_table_aggregates_per_seed_results(tmp_path):
    import results

    # Three runs' metrics as training writes them (two evaluations each; the last one counts).
    per_seed_returns = {1: [10.0, 20.0], 2: [30.0, 30.0], 3: [5.0, 15.0, 25.0]}
    runs = []
    for seed, rets in per_seed_returns.items():
        run = tmp_path / f"s{seed}"
        run.mkdir()
        (run / "config.json").write_text(
            json.dumps({"seed": seed, "game": "Breakout", "model_type": "reward_conditioned"})
        )
        rows = [
            {"iteration": 1, "step": 5, "eval/returns": [0.0], "eval/target": 90.0},
            {"iteration": 2, "step": 9, "eval/returns": rets, "eval/target": 90.0},
        ]
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        runs.append(run)
    table, data = results.runs_table(runs)
    # By hand: per-seed means 15, 30, 15; across seeds mean 20, sample std sqrt(75) = 8.660.
    agg = data["aggregate"]
    assert agg["return_mean"] == pytest.approx((20.0, 75**0.5))
    # Human-normalized (Breakout random 1.7, human 30.5): 100 * (m - 1.7) / 28.8 per seed.
    hn = [100 * (m - 1.7) / 28.8 for m in (15.0, 30.0, 15.0)]
    assert agg["human_normalized"] == pytest.approx((statistics.mean(hn), statistics.stdev(hn)))
    # The paper's gamer-normalized (random 2, gamer 30): 100 * (m - 2) / 28.
    gn = [100 * (m - 2) / 28 for m in (15.0, 30.0, 15.0)]
    assert agg["gamer_normalized"] == pytest.approx((statistics.mean(gn), statistics.stdev(gn)))
    assert data["per_seed"][3]["return_std"] == pytest.approx(statistics.pstdev([5, 15, 25]))
    lines = table.splitlines()
    assert lines[2].startswith("| seed 1 |") and "15.0 ± 5.0" in lines[2]
    assert "20.0 ± 8.7" in lines[5] and "3 seeds" in lines[5]
    assert "267.5 ± 97.5" in lines[6]  # the paper's Table 1 beside

    # The curves of the same runs (plot_atari.py reads metrics.jsonl as training writes it).
    import plot_atari

    for r, (seed, rets) in zip(runs, per_seed_returns.items()):
        (r / "config.json").write_text(json.dumps({
            "seed": seed, "game": "Breakout", "model_type": "reward_conditioned",
            "backbone": "gpt"}))  # fmt: skip
        with open(r / "metrics.jsonl", "a") as f:  # a summarized row, as training logs it
            f.write(json.dumps({"step": 9, "train/loss": 1.0, "eval/return_mean": 1.0,
                                "eval/return_std": 0.5, "eval/returns": rets,
                                "eval/target": 90.0}) + "\n")  # fmt: skip
    assert plot_atari.main([*map(str, runs), "--out", str(tmp_path / "c.png")]) == 0
    assert (tmp_path / "c.png").stat().st_size > 10_000

    # The CLI prints the same table; a run without evaluation is refused.
    proc = run_script("results.py", *runs)
    assert proc.returncode == 0 and proc.stdout.strip() == table
    (runs[0] / "metrics.jsonl").write_text(json.dumps({"iteration": 1}) + "\n")
    with pytest.raises(results.ConfigError, match="no evaluation"):
        results.runs_table(runs)


@pytest.mark.parametrize("backbone", ["gpt", "qwen3"])
def test_batched_evaluation_equals_one_env_with_uneven_episodes(backbone):
    """Episodes play to game over (different lengths, ending at different steps); with 2 slots
    for 3 episodes a finished row is refilled by a fresh episode whose short window is
    left-padded beside a long one."""
    import _paths  # noqa: F401
    from mingpt.evaluate_atari import evaluate
    from mingpt.model_atari import AtariDecisionTransformer, AtariDTConfig

    torch.manual_seed(0)
    model = AtariDecisionTransformer(
        AtariDTConfig(
            n_actions=4,
            max_timestep=2000,
            context_length=8,
            backbone=backbone,
            n_layer=1,
            n_head=2,
            n_embd=32,
        )  # fmt: skip
    )
    with torch.no_grad():
        # Zero-initialised embeddings made random, and a sharper head, so that what a row's
        # window holds (padding included) moves its sampled actions.
        model.global_pos_emb.normal_(std=0.5)
        if model.pos_emb is not None:
            model.pos_emb.normal_(std=0.5)
        model.head.weight.normal_(std=0.15)
        for p in model.transformer.parameters():  # attention that moves the outputs
            if p.dim() == 2:
                p.normal_(std=0.3)
    runs = {}
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for n_envs in (1, 2):
            trace: list = []
            rets = evaluate(model, "Breakout", 30, 3, n_envs, seed=2, device=torch.device("cpu"),
                            max_steps=1500, trace=trace)  # fmt: skip
            runs[n_envs] = (rets, sorted(trace))
    finally:
        torch.set_num_threads(n)
    assert runs[1] == runs[2]
    lengths = [1 + max(t for e, t, _ in runs[1][1] if e == ep) for ep in range(3)]
    assert len(set(lengths)) == 3 and max(lengths) < 1500, lengths  # all ended, unevenly
