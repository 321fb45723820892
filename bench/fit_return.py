"""How long `model.fit` takes to return after its last training step, with the shipped pipeline and with autotuning.

A regression benchmark for a stall seen once: on a 2-core VM, the LM recipe's `fit` returned about 58 s
after its last step (18 s after a 500-step run), blocked in the teardown of the tf.data iterator's
background threads. `data.lm_dataset` now ends in `data.prefetched` (fixed prefetch, autotuning off).
This trains a small LM for --seconds on random token windows through each pipeline, interleaved, and
prints the median delay between the end of the last step (`on_train_end`) and `fit` returning.

    python bench/fit_return.py --seconds 120 --rounds 2
"""

import argparse
import statistics
import sys
import time

import kerazoo  # noqa: F401 (before TensorFlow: its import notices stay hidden)
import keras
import numpy as np
import tensorflow as tf

from kerazoo import data, models, training


class _TrainEnd(keras.callbacks.Callback):
    def on_train_end(self, logs=None):
        self.at = time.perf_counter()


class _StopAfter(keras.callbacks.Callback):
    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if time.perf_counter() - self.start > self.seconds:
            self.model.stop_training = True


def autotuned(ids, seq_len, batch_size, seed):
    """The pipeline as it was: the same windows, prefetch(AUTOTUNE) with autotuning on."""
    shipped = data.lm_dataset(ids, seq_len, batch_size, seed=seed)
    options = tf.data.Options()
    options.autotune.enabled = True
    return shipped.with_options(options).prefetch(tf.data.AUTOTUNE)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=120, help="training time per run (default: 120)")
    parser.add_argument("--rounds", type=int, default=1, help="runs of each pipeline, interleaved (default: 1)")
    args = parser.parse_args()
    ids = np.random.default_rng(0).integers(0, 65, size=1_000_000)
    plan = training.select_plan("float32")
    model = training.compile_model(models.transformer_lm(65, 64, 64, 4, 2, 256), plan)
    delays = {"shipped (data.prefetched)": [], "autotuned prefetch": []}
    for round_ in range(args.rounds):
        for name in (list(delays) if round_ % 2 == 0 else list(delays)[::-1]):
            make = data.lm_dataset if name.startswith("shipped") else autotuned
            end = _TrainEnd()
            with plan.scope():
                model.fit(make(ids, 64, 12, seed=round_), epochs=1, steps_per_epoch=10 ** 9, verbose=0,
                          callbacks=[_StopAfter(args.seconds), end])
            delays[name].append(time.perf_counter() - end.at)
            print(f"{name}: fit returned {delays[name][-1]:.2f}s after its last step", flush=True)
    shipped, tuned = (statistics.median(v) for v in delays.values())
    print(f"\nmedian delay: shipped {shipped:.2f}s, autotuned {tuned:.2f}s "
          f"(after {args.seconds:.0f}s of training each)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
