"""Train the original Decision Transformer (GPT-2 backbone) or BC.

    python experiment.py --env hopper --dataset medium --model_type dt

Every flag of the original experiment.py keeps its default and meaning; ``--help`` lists them.
"""

import sys

from decision_transformer.run.experiment import main

if __name__ == "__main__":
    sys.exit(main(backbone="gpt2"))
