"""kerazoo's LM recipe at nanoGPT's CPU configuration on tiny Shakespeare (character level).

nanoGPT's `config/train_shakespeare_char.py` with its CPU overrides: 4 layers, 4 heads, d_model 128,
context 64, batch 12, 2000 iterations, lr 1e-3 with 100 warm-up iterations and cosine decay to 1e-4,
dropout 0, AdamW (beta2 0.99, weight decay 0.1 on matrices), global gradient clipping 1.0, tied
embeddings, 90/10 split, train and validation loss on 20 batches every 250 iterations. Its published
result is a validation loss of 1.88; on this kind of machine (2 cores) it took 112 s in total and
reached 1.886 (PyTorch 2.13 CPU, eager). This script runs the same schedule through
`recipes/transformer_lm.py` and prints our figures next to those.

    python bench/nanogpt_shakespeare.py --data ../shared/data/tinyshakespeare/input.txt
"""

import argparse
import contextlib
import importlib.util
import io
import os
import re
import sys
import time

NANOGPT = {"val_loss": 1.886, "seconds": 112.0}
RECIPE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "recipes", "transformer_lm.py")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="tiny Shakespeare input.txt")
    parser.add_argument("--precision", default="float32", choices=("auto", "float32", "mixed_bfloat16"),
                        help="passed to the recipe (default: float32, i.e. XLA)")
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location("transformer_lm", RECIPE)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    flags = ["--data", args.data, "--tokenizer", "char", "--max-length", "64", "--d-model", "128",
             "--num-heads", "4", "--num-layers", "4", "--ff-dim", "512", "--dropout", "0", "--batch-size", "12",
             "--max-steps", "2000", "--learning-rate", "1e-3", "--min-learning-rate", "1e-4",
             "--warmup-steps", "100", "--weight-decay", "0.1", "--grad-clip", "1.0", "--eval-interval", "250",
             "--eval-batches", "20", "--precision", args.precision, "--sample-tokens", "60", "--no-export"]
    output = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(output):
        recipe.main(flags)
    seconds = time.perf_counter() - start
    log = output.getvalue()
    print(log)
    val_loss = float(re.search(r"done: 2000 steps, val loss ([0-9.]+)", log).group(1))
    print(f"{'':10s} {'val loss':>8s} {'seconds':>8s}")
    print(f"{'nanoGPT':10s} {NANOGPT['val_loss']:8.3f} {NANOGPT['seconds']:8.1f}   (published run on this kind of machine)")
    print(f"{'kerazoo':10s} {val_loss:8.3f} {seconds:8.1f}   ({seconds / NANOGPT['seconds']:.2f}x nanoGPT's time)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
