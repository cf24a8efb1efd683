"""Export a run's checkpoint (or a transformers DecisionTransformerModel folder) as a model folder:
config.json, model.safetensors and a README.md model card. See ``python export.py --help``."""

import sys

from decision_transformer.run.cli import run_cli
from decision_transformer.run.export import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
