"""benchmarks/bench_odt.py (issue 32's measurement) carried to another machine: a smoke run's
folder, reduced to what git commits under benchmarks/results/ (logs, no weights or data), is read
again without training; extended by a round, the pretraining it lost is trained again to the same
numbers, and the online phase and its control run to the new budget."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from cli import ROOT, carry_over

BENCH = ROOT / "benchmarks" / "bench_odt.py"


def bench(out, *extra):
    cmd = [sys.executable, str(BENCH), "--smoke", "--backbones", "gpt2", "--control",
           "--out", str(out), *extra]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode in (0, 1), proc.stderr[-2000:]  # 1: the smoke run misses its target
    return proc


def tables(proc) -> list[str]:
    return [line for line in proc.stdout.splitlines() if line.startswith("|")]


def evaluations(run) -> list[dict]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k.startswith("evaluation/")} for r in rows]


@pytest.fixture(scope="module")
def carried(tmp_path_factory):
    first_out, there = tmp_path_factory.mktemp("here"), tmp_path_factory.mktemp("there")
    first = bench(first_out)
    kept = carry_over(first_out, there, "benchmarks/results/odt")
    return first_out / "smoke", there / "smoke", first, kept


def test_the_carried_over_runs_are_read_not_trained_again(carried):
    here, there, first, kept = carried
    assert {p.parts[1] for p in kept if p.name == "metrics.jsonl"} == {
        "gpt2-s0-offline", "gpt2-s0-online", "gpt2-s0-offline-more"}  # fmt: skip
    assert not any(p.suffix in (".pt", ".pkl") for p in kept)
    again = bench(there.parent)
    assert not list(there.rglob("*.pt"))  # no phase trained again
    assert tables(first) and tables(again) == tables(first)


def test_a_longer_budget_retrains_the_lost_pretraining_to_the_same_numbers(carried):
    here, there, _, _ = carried
    longer = bench(there.parent, "--rounds", "5")
    # The online phase needed the pretraining's weights: trained again, the same evaluations.
    assert evaluations(there / "gpt2-s0-offline") == evaluations(here / "gpt2-s0-offline")
    online = [json.loads(x) for x in (there / "gpt2-s0-online" / "metrics.jsonl").read_text()
              .splitlines()]  # fmt: skip
    assert [r["iteration"] for r in online][-1] == 1 + 5  # smoke: 1 offline iteration
    # The control, continued from the retrained pretraining to 25 updates (3 iterations of 20
    # steps), repeats the carried-over control's first two iterations exactly.
    control = evaluations(there / "gpt2-s0-offline-more")
    assert len(control) == 3 and control[:2] == evaluations(here / "gpt2-s0-offline-more")
    row = next(x for x in tables(longer) if x.startswith("| project | gpt2 | 0 |"))
    assert row.split("|")[8].strip() == "5"  # the rounds column


def test_control_for_the_named_recipe_only(tmp_path):
    # The reference arm's control would cost as much as its online phase again: --control
    # project runs the project arm's and leaves the reference arm without one.
    proc = bench(tmp_path, "--recipe", "project", "reference", "--control", "project")
    runs = {p.name for p in (tmp_path / "smoke").iterdir()}
    assert {"gpt2-s0-offline-more", "reference-gpt2-s0-online"} <= runs
    assert "reference-gpt2-s0-offline-more" not in runs
    last = {row.split("|")[1].strip(): row.split("|")[-2].strip() for row in tables(proc)[2:4]}
    assert last["reference"] == "-" and last["project"] != "-"
