"""Where a run's numbers go: ``metrics.jsonl`` in the run directory, and wandb when asked."""

from __future__ import annotations

import json
from pathlib import Path


def _plain(v):
    return v.item() if hasattr(v, "item") else v


class MetricsLog:
    def __init__(self, out_dir: Path, cfg: dict, wandb_id: str | None = None):
        self.path = out_dir / "metrics.jsonl"
        self.wandb = None
        if cfg["log_to_wandb"]:
            import wandb  # optional: only runs with -w need it

            self.wandb = wandb.init(
                project="decision-transformer",
                group=f"{cfg['env']}-{cfg['dataset']}",
                name=out_dir.name,
                config=cfg,
                dir=str(out_dir),
                id=wandb_id,
                resume="allow",
            )

    @property
    def wandb_id(self) -> str | None:
        return self.wandb.id if self.wandb is not None else None

    def truncate(self, last_iteration: int) -> None:
        """Drop lines past ``last_iteration``: a run killed after logging an iteration but before
        checkpointing it will log that iteration again when resumed."""
        if not self.path.exists():
            return
        keep = [
            line
            for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line)["iteration"] <= last_iteration
        ]
        self.path.write_text("".join(line + "\n" for line in keep))

    def log(self, iteration: int, step: int, logs: dict) -> None:
        row = {"iteration": iteration, "step": step, **{k: _plain(v) for k, v in logs.items()}}
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        if self.wandb is not None:
            self.wandb.log(row, step=step)

    def close(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
