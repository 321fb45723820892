"""Smoke run: build a small causal LM from kerazoo layers, fit it with XLA, save, reload, compare.

Runs offline in well under a minute on 2 CPU cores; a quick check that an
installation works end to end.

    python recipes/smoke.py --steps 30
"""

import argparse
import os
import sys
import tempfile
import time

import kerazoo  # noqa: F401 (before TensorFlow: its import notices stay hidden)
import keras
import numpy as np

from kerazoo import models, recipe_flags, training

# A few lines written for this project, learned character by character.
SAMPLE_TEXT = (
    "the cat sat on the mat. the dog sat on the log. "
    "a cat is not a dog, and a log is not a mat. "
    "the cat did not sit on the log; the dog did not sit on the mat. "
)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=30, help="training steps (default: 30)")
    parser.add_argument("--batch-size", type=int, default=16, help="windows per step (default: 16)")
    parser.add_argument("--max-length", type=int, default=32, help="context length (default: 32)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    recipe_flags.add_runtime_flags(parser, precision="float32", jit_compile="on")
    return recipe_flags.parse_args(parser, argv, check_flags)


def check_flags(args):
    """The flags, checked before training (see `kerazoo.recipe_flags`)."""
    recipe_flags.positive(args, "steps", "batch_size", "max_length")
    recipe_flags.in_range(args, "max_length", high=len(SAMPLE_TEXT), high_open=True)  # the sample's length
    recipe_flags.in_range(args, "seed", 0, 2 ** 32 - 1)


def main(argv=None):
    args = parse_args(argv)
    with training.quiet_logs(args):
        return run(args)


def run(args):
    batch_size = training.start_run(args)
    vocab = sorted(set(SAMPLE_TEXT))
    ids = np.array([vocab.index(c) for c in SAMPLE_TEXT], dtype="int32")
    rng = np.random.default_rng(args.seed)
    starts = rng.integers(0, len(ids) - args.max_length, size=args.steps * batch_size)
    windows = np.stack([ids[s:s + args.max_length + 1] for s in starts])

    plan, _ = training.plan_from_flags(args)
    with plan.scope():
        model = models.transformer_lm(vocab_size=len(vocab), max_length=args.max_length, d_model=64,
                                      num_heads=4, num_layers=2, ff_dim=128)
        training.compile_model(model, plan, optimizer=training.adamw(3e-3))
        start = time.perf_counter()
        history = model.fit(windows[:, :-1], windows[:, 1:], batch_size=batch_size, epochs=1,
                            verbose=recipe_flags.fit_verbosity(args),
                            callbacks=training.runtime_callbacks(args, plan))
    losses = history.history["loss"]
    print(f"trained {args.steps} steps in {time.perf_counter() - start:.1f}s, loss {losses[-1]:.3f}")

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "smoke.keras")
        model.save(path)
        reloaded = keras.models.load_model(path)
        sample = windows[:4, :-1]
        diff = np.abs(reloaded.predict(sample, verbose=0) - model.predict(sample, verbose=0)).max()
    print(f"saved and reloaded: max |difference| = {diff:.2e}")
    if diff > 1e-5:
        print("error: the reloaded model does not reproduce the trained one", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
