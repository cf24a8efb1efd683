"""Run experiment.py's main with one rank's batch at one optimizer step made NaN, for the test
that a non-finite loss on one rank stops every rank at the same step.

    python nan_at.py RANK:STEP [experiment flags...]      (cwd: gym/; under torchrun)

STEP counts optimizer steps from 0, as RankBatches does. The hook lives here, in the tests:
the training code has none.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "gym"))

from decision_transformer.run import experiment  # noqa: E402
from decision_transformer.run.batches import RankBatches  # noqa: E402


def poison(rank: int, step: int) -> None:
    real = RankBatches.__call__

    def call(self, *args, **kwargs):
        at = self.calls // self.accum  # the step this call belongs to
        batch = real(self, *args, **kwargs)
        if (self.ctx.rank, at) == (rank, step):
            batch[0].fill_(float("nan"))
        return batch

    RankBatches.__call__ = call


def main() -> int:
    where, *argv = sys.argv[1:]
    rank, step = map(int, where.split(":"))
    poison(rank, step)
    return experiment.main(argv)


if __name__ == "__main__":
    sys.exit(main())
