"""kerazoo's LM recipe against nanoGPT itself, side by side, at nanoGPT's CPU configuration on tiny Shakespeare.

nanoGPT's `config/train_shakespeare_char.py` with its CPU overrides: 4 layers, 4 heads, d_model 128,
context 64, batch 12, 2000 iterations, lr 1e-3 with 100 warm-up iterations and cosine decay to 1e-4,
dropout 0, AdamW (beta2 0.99, weight decay 0.1 on matrices), global gradient clipping 1.0, tied
embeddings, 90/10 split, train and validation loss on 20 batches every 250 iterations. Both run as
separate processes in this script, one after the other (the order alternates across --rounds), and
their wall times (process start to exit: imports, compiles and evaluations included) are compared.

nanoGPT is not part of this project: check it out and prepare its data yourself, into a benchmark-only
virtual environment with PyTorch's CPU build (its prepare.py downloads input.txt unless it is there):

    python3 -m venv /tmp/bench-venv && /tmp/bench-venv/bin/pip install torch numpy requests
    git clone https://github.com/karpathy/nanoGPT /tmp/nanogpt
    cp ../shared/data/tinyshakespeare/input.txt /tmp/nanogpt/data/shakespeare_char/
    (cd /tmp/nanogpt && /tmp/bench-venv/bin/python data/shakespeare_char/prepare.py)
    python bench/nanogpt_shakespeare.py --data ../shared/data/tinyshakespeare/input.txt \\
        --nanogpt-dir /tmp/nanogpt --nanogpt-python /tmp/bench-venv/bin/python

Like nanoGPT's train.py, the recipe only trains and evaluates here (`--sample-tokens 0 --no-export`).
Without --nanogpt-dir only kerazoo runs. Each kerazoo run starts with an empty plan cache, so the
automatic plan's timing of candidates is included in its wall time (--plan-cache reuses one).
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NANOGPT_FLAGS = ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=100", "--block_size=64",
                 "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--lr_decay_iters={steps}",
                 "--max_iters={steps}", "--dropout=0.0", "--out_dir={out}"]


def kerazoo_command(args):
    return [sys.executable, os.path.join(ROOT, "recipes", "transformer_lm.py"), "--data", args.data,
            "--tokenizer", "char", "--max-length", "64", "--d-model", "128", "--num-heads", "4",
            "--num-layers", "4", "--ff-dim", "512", "--dropout", "0", "--batch-size", "12",
            "--max-steps", str(args.steps), "--learning-rate", "1e-3", "--min-learning-rate", "1e-4",
            "--warmup-steps", "100", "--weight-decay", "0.1", "--grad-clip", "1.0", "--eval-interval", "250",
            "--eval-batches", "20", "--precision", args.precision, "--sample-tokens", "0", "--no-export"]


def run(name, command, cwd, env, pattern):
    """Runs one training process; returns (wall seconds, final validation loss, its output)."""
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode:
        raise SystemExit(f"error: {name} failed ({result.returncode}):\n{result.stdout[-2000:]}"
                         f"{result.stderr[-3000:]}")
    losses = re.findall(pattern, result.stdout)
    if not losses:
        raise SystemExit(f"error: no validation loss in {name}'s output:\n{result.stdout[-2000:]}")
    return seconds, float(losses[-1]), result.stdout


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--data", required=True, help="tiny Shakespeare input.txt")
    parser.add_argument("--precision", default="auto", choices=("auto", "float32", "mixed_bfloat16"),
                        help="passed to the recipe (default: auto, the plan timed for this model)")
    parser.add_argument("--nanogpt-dir", help="a karpathy/nanoGPT checkout with data/shakespeare_char prepared")
    parser.add_argument("--nanogpt-python", default=sys.executable,
                        help="the Python that has PyTorch (default: this one)")
    parser.add_argument("--steps", type=int, default=2000, help="training iterations (default: 2000)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each, interleaved (default: 1)")
    parser.add_argument("--plan-cache", help="KERAZOO_PLAN file to reuse (default: a fresh one per run)")
    args = parser.parse_args()
    if not os.path.isfile(args.data):
        raise SystemExit(f"error: --data {args.data!r} is not a file")
    if args.nanogpt_dir and not os.path.isfile(os.path.join(args.nanogpt_dir, "data", "shakespeare_char",
                                                            "train.bin")):
        raise SystemExit(f"error: --nanogpt-dir {args.nanogpt_dir!r} has no data/shakespeare_char/train.bin; "
                         "run its data/shakespeare_char/prepare.py first")
    results = {"nanoGPT": [], "kerazoo": []}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            order = ["nanoGPT", "kerazoo"] if round_ % 2 == 0 else ["kerazoo", "nanoGPT"]
            for name in order:
                if name == "nanoGPT" and args.nanogpt_dir:
                    flags = [f.format(steps=args.steps, out=os.path.join(tmp, "nanogpt-out")) for f in NANOGPT_FLAGS]
                    command = [args.nanogpt_python, "train.py", "config/train_shakespeare_char.py", *flags]
                    outcome = run(name, command, args.nanogpt_dir, dict(os.environ),
                                  r"step \d+: train loss [0-9.]+, val loss ([0-9.]+)")
                elif name == "kerazoo":
                    env = dict(os.environ, KERAZOO_PLAN=args.plan_cache or os.path.join(tmp, f"plans-{round_}.json"))
                    outcome = run(name, kerazoo_command(args), ROOT, env,
                                  rf"done: {args.steps} steps, val loss ([0-9.]+)")
                    print("\n".join(line for line in outcome[2].splitlines()
                                    if line.startswith(("plan:", "first step:", "step", "done:"))))
                else:
                    continue
                results[name].append(outcome[:2])
                print(f"{name}: {outcome[0]:.1f}s, val loss {outcome[1]:.4f}", flush=True)
    print(f"\n{'(medians)':10s} {'val loss':>8s} {'wall s':>8s}")
    for name, runs in results.items():
        if runs:
            print(f"{name:10s} {statistics.median(v for _, v in runs):8.3f} "
                  f"{statistics.median(s for s, _ in runs):8.1f}")
    if results["nanoGPT"]:
        ratio = (statistics.median(s for s, _ in results["kerazoo"]) /
                 statistics.median(s for s, _ in results["nanoGPT"]))
        print(f"kerazoo / nanoGPT wall time: {ratio:.2f}x (--precision {args.precision}, same machine, same run)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
