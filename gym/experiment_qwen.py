"""Train a Decision Transformer with the Qwen3-style backbone (RoPE, RMSNorm, SwiGLU, GQA, QK-norm).

    python experiment_qwen.py --env humanoid-medium-v2 --embed_dim 768 --n_layer 12 --n_head 12 \
        --n_kv_head 4 --mlp_ratio 4.0 --batch_size 64 --K 20

Same flags as experiment.py plus the backbone's; ``--help`` lists them.
"""

import sys

from decision_transformer.run.experiment import main

if __name__ == "__main__":
    sys.exit(main(backbone="qwen3"))
