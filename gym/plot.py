"""Learning curves and a comparison table of run directories.

    python plot.py runs/RUN_A runs/RUN_B --out curves.png [--table]

One line per run, labelled by backbone and size (e.g. "qwen3 1.2M"); ``--table`` prints a
markdown table (step time, final and best return per target, normalized score).
"""

import sys

from decision_transformer.run.plots import main

if __name__ == "__main__":
    sys.exit(main())
