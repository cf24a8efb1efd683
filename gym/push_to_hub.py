"""Upload a model folder to the Hugging Face Hub: ``python push_to_hub.py FOLDER OWNER/NAME``."""

from decision_transformer.run.errors import cli_main
from decision_transformer.run.hub import main

if __name__ == "__main__":
    cli_main(main)
