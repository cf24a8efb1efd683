"""A mutation-testing pass over the modules whose behaviour the README promises.

Each mutant is one plausible one-line mistake (an operator flipped, an off-by-one, a dropped call)
in the rollout core, the key/value cache, the step guard, the sampler or the checkpoint code. The
pass copies gym/ and tests/ to a temporary folder (the checkout is never touched), applies one
mutant at a time there and runs that module's fast tests with ``-x``; a mutant is *killed* when
the tests fail, *survived* when they pass. It prints a table and the counts, and exits non-zero
when a mutant survives.

    python benchmarks/mutation_pass.py            # every mutant (~15-30 min on 2 busy cores)
    python benchmarks/mutation_pass.py --only kv  # the mutants whose id starts with "kv"
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PKG = "gym/decision_transformer"


@dataclass(frozen=True)
class Mutant:
    id: str
    path: str  # relative to the repository root
    old: str  # must occur exactly once in the file
    new: str
    # Why no test can tell it apart, for a mutant that changes nothing observable.
    equivalent: str = ""


ROLLOUT = f"{PKG}/evaluation/rollout.py"
KV = f"{PKG}/models/kv_cache.py"
TRAINER = f"{PKG}/training/trainer.py"
SAMPLER = f"{PKG}/data/sampler.py"
CKPT = f"{PKG}/run/checkpoint.py"

MUTANTS = [
    # --- the rollout core: histories and return-to-go bookkeeping ---
    Mutant("rollout-rtg-sign", ROLLOUT, "self.rtg[:, t] - step", "self.rtg[:, t] + step"),
    Mutant("rollout-delayed-mode", ROLLOUT, 'if self.mode == "delayed":', 'if self.mode == "d":'),
    Mutant("rollout-no-target", ROLLOUT, "self.rtg[:, 0] = self.target", "pass"),
    Mutant(
        "rollout-window-off-by-one",
        ROLLOUT,
        "max(0, t + 1 - self.context)",
        "max(0, t - self.context)",
        equivalent="at the default context (K) get_actions keeps the last K steps it is given",
    ),
    Mutant(
        "rollout-cache-too-long",
        ROLLOUT,
        "(self.window_mode or t < self.context)",
        "(self.window_mode or t <= self.context)",
    ),  # fmt: skip
    Mutant(
        "rollout-prev-action",
        ROLLOUT,
        "self.actions[:, t - 1] if t else",
        "self.actions[:, t] if t else",
    ),  # fmt: skip
    Mutant(
        "rollout-state-slot",
        ROLLOUT,
        "self.states[:, t + 1] = self.normalize(obs)",
        "self.states[:, t] = self.normalize(obs)",
    ),  # fmt: skip
    Mutant("rollout-normalize", ROLLOUT, "(obs - self.mean) / self.std", "(obs - self.mean)"),
    Mutant(
        "rollout-reward-slot",
        ROLLOUT,
        "self.rewards[:, t] = torch.as_tensor(reward,",
        "self.rewards[:, t - 1] = torch.as_tensor(reward,",
        equivalent="no model reads the reward history (the DT is called with rewards=None)",
    ),  # fmt: skip
    # --- the rolling key/value cache and window masks ---
    Mutant("kv-ring-size", KV, "TOKENS_PER_STEP * window + 2", "TOKENS_PER_STEP * window + 1"),
    Mutant("kv-positions", KV, "arange(3 * t - 1, 3 * t + 2", "arange(3 * t, 3 * t + 3"),
    Mutant(
        "kv-window-lo",
        KV,
        "lo = (step - self.window + 1) * TOKENS_PER_STEP",
        "lo = (step - self.window) * TOKENS_PER_STEP",
    ),  # fmt: skip
    Mutant("kv-empty-slots", KV, "mask = ((kp >= 0) & (kp <= qp)", "mask = ((kp <= qp)"),
    Mutant(
        "kv-mask-lo",
        KV,
        "lo = (pos // TOKENS_PER_STEP - window + 1)",
        "lo = (pos // TOKENS_PER_STEP - window)",
    ),  # fmt: skip
    Mutant("kv-scale", KV, "mul_(hd**-0.5)", "mul_(hd**0.5)"),
    Mutant("kv-steps", KV, "self.steps += 1", "self.steps += 0"),
    # --- the training-step guard ---
    Mutant("guard-factor", TRAINER, "_NORM_GROWTH = 4.0", "_NORM_GROWTH = 40.0"),
    Mutant("guard-first-step", TRAINER, "previous is not None and", "previous is None and"),
    Mutant(
        "guard-grad-check",
        TRAINER,
        "bad = ~(torch.isfinite(loss) & torch.isfinite(gnorm))",
        "bad = ~torch.isfinite(loss)",
    ),  # fmt: skip
    Mutant("guard-no-weight-check", TRAINER, "            self.check_weights(wnorm_v[0])\n", ""),
    Mutant("guard-no-memory", TRAINER, "        self.last_weight_norm = norm\n", ""),
    Mutant("guard-step-count", TRAINER, "        self.global_step = step\n", ""),
    Mutant("guard-accum-scale", TRAINER, '"weight", 1.0) / accum', '"weight", 1.0) * accum'),
    # --- the batch sampler ---
    Mutant("sampler-budget", SAMPLER, 'side="right"', 'side="left"'),
    Mutant("sampler-pad-action", SAMPLER, "actions[~m] = -10.0", "actions[~m] = 0.0"),
    Mutant("sampler-pad-done", SAMPLER, "ds.dones[idx], 2.0)", "ds.dones[idx], 0.0)"),
    Mutant("sampler-timestep-clip", SAMPLER, "self.max_ep_len - 1), 0)", "self.max_ep_len), 0)"),
    Mutant("sampler-rtg-scale", SAMPLER, "/ self.scale", "* 1.0"),
    Mutant(
        "sampler-rtg-end",
        SAMPLER,
        "si[:, None] + j < length[:, None]",
        "si[:, None] + j <= length[:, None]",
    ),  # fmt: skip
    Mutant("sampler-padded-flag", SAMPLER, "padded=not bool(m.all())", "padded=False"),
    Mutant("sampler-start", SAMPLER, "self.rng.random(batch_size) *", "0 *"),
    # --- checkpoints ---
    Mutant(
        "ckpt-no-fsync",
        CKPT,
        "            os.fsync(f.fileno())\n",
        "",
        equivalent="only a power cut between write and rename shows it",
    ),
    Mutant(
        "ckpt-rng-numpy",
        CKPT,
        '    np_rng.bit_generator.state = state["numpy"]\n',
        "",
        equivalent="every iteration reseeds numpy from (seed, rank, iteration)",
    ),
    Mutant(
        "ckpt-rng-torch",
        CKPT,
        '    torch.set_rng_state(state["torch"])\n',
        "",
        equivalent="every iteration reseeds torch from (seed, rank, iteration)",
    ),
    Mutant("ckpt-weights-only", CKPT, "weights_only=True, mmap", "weights_only=False, mmap"),
    Mutant("ckpt-no-cleanup", CKPT, "            os.unlink(tmp)\n", "            pass\n"),
]

# Each module's fast tests (the selection every mutant of that module runs).
TESTS = {
    ROLLOUT: [
        "tests/test_promises.py", "tests/test_rollout_cache.py", "tests/test_run_modes.py",
        "-k", "return_to_go or noise_mode or rolling or cached_window or full_attention_rollout"
        " or delayed_mode",
    ],
    KV: [
        "tests/test_rollout_cache.py", "tests/test_promises.py", "-k",
        "window_mask or one_layer_sees or cached_window or full_attention_rollout or rolling",
    ],
    TRAINER: [
        "tests/test_step_guard.py", "tests/test_promises.py", "tests/test_distributed.py", "-k",
        "nonfinite_step or saturating or threshold or just_past or host_sync"
        " or checkpointing_gives or accumulation_in_one",
    ],
    SAMPLER: ["tests/test_sampler.py", "tests/test_host_syncs.py"],
    CKPT: [
        "tests/test_bad_input.py", "tests/test_promises.py", "tests/test_pickle_io.py", "-k",
        "resume_from or evaluate_bad or bc_killed or hostile or failed_checkpoint",
    ],
}  # fmt: skip


def run_tests(copy: Path, args: list[str], timeout: float) -> tuple[str, float]:
    start = time.perf_counter()
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-n", "0", "-p", "no:cacheprovider", *args]
    try:
        proc = subprocess.run(cmd, cwd=copy, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "killed (timeout)", time.perf_counter() - start
    seconds = time.perf_counter() - start
    if proc.returncode == 0:
        return "survived", seconds
    if proc.returncode == 1:
        return "killed", seconds
    return f"error (pytest exit {proc.returncode})", seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--only", default="", help="run the mutants whose id starts with this")
    p.add_argument("--timeout", type=float, default=600, help="seconds per mutant's tests")
    args = p.parse_args(argv)
    mutants = [m for m in MUTANTS if m.id.startswith(args.only)]
    with tempfile.TemporaryDirectory(prefix="mutation-") as tmp:
        copy = Path(tmp)
        for part in ("gym", "tests", "atari", "pyproject.toml"):
            src = ROOT / part
            if src.is_dir():
                ignore = shutil.ignore_patterns("__pycache__", "runs", "*.pkl", "wandb")
                shutil.copytree(src, copy / part, ignore=ignore)
            else:
                shutil.copy2(src, copy / part)
        rows = []
        for m in mutants:
            target = copy / m.path
            original = target.read_text()
            if original.count(m.old) != 1:
                rows.append((m, "error (pattern not found once)", 0.0))
                continue
            target.write_text(original.replace(m.old, m.new))
            try:
                outcome, seconds = run_tests(copy, TESTS[m.path], args.timeout)
            finally:
                target.write_text(original)
            rows.append((m, outcome, seconds))
            print(f"{m.id:28s} {outcome:22s} {seconds:6.1f}s", flush=True)
    killed = sum(r[1].startswith("killed") for r in rows)
    survived = [r[0].id for r in rows if r[1] == "survived" and not r[0].equivalent]
    equivalent = [r[0].id for r in rows if r[1] == "survived" and r[0].equivalent]
    errors = [r[0].id for r in rows if r[1].startswith("error")]
    print()
    print("| mutant | module | outcome | seconds |")
    print("|---|---|---|---:|")
    for m, outcome, seconds in rows:
        note = f" (equivalent: {m.equivalent})" if m.equivalent and outcome == "survived" else ""
        print(f"| {m.id} | {Path(m.path).name} | {outcome}{note} | {seconds:.0f} |")
    print(
        f"\n{killed} of {len(rows)} mutants killed; {len(equivalent)} survived as equivalent "
        f"({', '.join(equivalent) or 'none'}); survived: {', '.join(survived) or 'none'}"
    )
    if errors:
        print(f"not run: {', '.join(errors)}")
    return 1 if survived or errors else 0


if __name__ == "__main__":
    sys.exit(main())
