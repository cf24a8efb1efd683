"""Upload a model folder to the Hugging Face Hub: ``python push_to_hub.py FOLDER OWNER/NAME``."""

import sys

from decision_transformer.run.cli import run_cli
from decision_transformer.run.hub import main

if __name__ == "__main__":
    sys.exit(run_cli(main))
