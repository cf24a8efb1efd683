"""benchmarks/bench_selection.py on run folders of known shape: its rank correlations, their sign
convention, what it counts, and what each selection criterion would have kept."""

import json
import subprocess
import sys

from cli import ROOT

SCRIPT = ROOT / "benchmarks" / "bench_selection.py"


def write_run(folder, env, dataset, errors, returns, model_type="dt", backbone="qwen3"):
    folder.mkdir(parents=True)
    config = {"env": env, "dataset": dataset, "model_type": model_type, "backbone": backbone}
    (folder / "config.json").write_text(json.dumps(config))
    rows = []
    for i, (err, ret) in enumerate(zip(errors, returns), start=1):
        row = {"iteration": i, "evaluation/target_500_return_mean": ret}
        row["evaluation/target_100_return_mean"] = -ret  # a lower target: never R@max
        if err is not None:
            row["validation/action_error"] = err
        rows.append(json.dumps(row))
    (folder / "metrics.jsonl").write_text("\n".join(rows) + "\n")


def run_script(*args):
    return subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=120
    )


def line_of(stdout, start):
    (line,) = [x for x in stdout.splitlines() if x.startswith(start)]
    return [c.strip() for c in line.strip("|").split("|")]


def test_rank_correlation_sign_counts_and_selection(tmp_path):
    # Tracks: lower error, higher return. With a tie in the error, worked by hand: the ranks of
    # -error are 1, 2.5, 2.5, 4 and of the return 1, 3, 2, 4, so rho = 4.5 / sqrt(4.5 * 5).
    write_run(tmp_path / "a" / "s0", "hopper", "a", [0.3, 0.2, 0.2, 0.1], [10, 30, 20, 40])
    write_run(tmp_path / "a" / "s1", "hopper", "a", [0.6, 0.5, 0.4, 0.35], [1, 2, 3, 4])
    # Runs against it: the lowest error comes with the lowest return. The third run's first
    # iteration has no validation error (not a point), the rest too few points for its own rho.
    write_run(tmp_path / "b" / "s0", "humanoid", "b", [0.1, 0.2, 0.3], [100, 200, 300])
    write_run(tmp_path / "b" / "s1", "humanoid", "b", [None, 0.1, 0.2], [999, 50, 40])
    # A BC run of the same data is its own group; a folder without config.json is no run.
    write_run(tmp_path / "b" / "bc", "humanoid", "b", [0.1, 0.2, 0.3], [5, 6, 7], "bc")
    (tmp_path / "stray").mkdir()
    (tmp_path / "stray" / "metrics.jsonl").write_text('{"validation/action_error": 1}\n')

    proc = run_script(tmp_path, "--out_json", tmp_path / "sel.json")
    assert proc.returncode == 0, proc.stderr
    a = line_of(proc.stdout, "| hopper:a | qwen3 |")
    # runs, points, pooled rho, its p, within-run rho (runs), runs with rho > 0
    assert a[2:4] == ["2", "8"] and float(a[4]) > 0.95
    assert a[6] == f"{(0.9487 + 1.0) / 2:.2f} (2)" and a[7] == "2/2"
    # R@max at the lowest error, at the best return, at the last iteration (means over runs)
    assert a[8:] == [f"{(40 + 4) / 2:.0f}", f"{(40 + 4) / 2:.0f}", f"{(40 + 4) / 2:.0f}"]
    assert line_of(proc.stdout, "| a/s0 |")[4] == "0.95"

    b = line_of(proc.stdout, "| humanoid:b | qwen3 |")
    # Pooled, by hand: ranks of -error 4.5, 2.5, 1, 4.5, 2.5 against the returns' 3, 4, 5, 2, 1
    # give rho = -5 / sqrt(9 * 10).
    assert b[2:4] == ["2", "5"] and b[4] == f"{-5 / 90**0.5:.2f}"
    assert b[6] == "-1.00 (1)" and b[7] == "0/1"
    assert b[8:] == [f"{(100 + 50) / 2:.0f}", f"{(300 + 50) / 2:.0f}", f"{(300 + 40) / 2:.0f}"]
    assert line_of(proc.stdout, "| b/s1 |")[3:5] == ["2", "–"]
    bc = line_of(proc.stdout, "| humanoid:b | bc |")
    assert bc[2:5] == ["1", "3", "-1.00"]
    assert "stray" not in proc.stdout

    saved = json.loads((tmp_path / "sel.json").read_text())
    assert saved["groups"]["hopper:a qwen3"]["points"] == 8
    assert len(saved["runs"]) == 5


def test_no_runs_or_no_folder_is_one_line_and_exit_2(tmp_path):
    empty = run_script(tmp_path)
    assert empty.returncode == 2 and "no run under" in empty.stderr
    missing = run_script(tmp_path / "nope")
    assert missing.returncode == 2 and "no such folder" in missing.stderr
    for proc in (empty, missing):
        assert len(proc.stderr.strip().splitlines()) == 1
