"""Export a run's checkpoint (or a transformers DecisionTransformerModel folder) as a model folder:
config.json, model.safetensors and a README.md model card. See ``python export.py --help``."""

from decision_transformer.run.errors import cli_main
from decision_transformer.run.export import main

if __name__ == "__main__":
    cli_main(main)
