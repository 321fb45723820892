"""Generation tokens/s: kerazoo's KV-cache decoding vs naive recomputation vs KerasHub's GPT2CausalLM.

All three decode greedily from the same 16-token prompt with random weights at
config A (vocab 8192, d_model 256, 4 heads, 4 layers, ff 1024), in one run,
interleaved, medians of --repeats. KerasHub is an optional, benchmark-only
dependency (`pip install keras-hub`); without it its rows are skipped.

    python bench/generation.py
    python bench/generation.py --new-tokens 128 256 --batch-sizes 1 8 --repeats 5
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kerazoo import generation, models  # noqa: E402

CONFIG = dict(vocab_size=8192, d_model=256, num_heads=4, num_layers=4, ff_dim=1024)
BASELINE = "naive"


def naive_decoder(model):
    """Greedy decoding that reruns the whole model over the sequence for every token.

    The buffer has a fixed length and the step is one XLA-compiled function,
    so this baseline compiles once and pays only for the recomputation.
    """
    @tf.function(jit_compile=True)
    def next_tokens(ids, t):
        logits = model(ids, training=False)
        return tf.argmax(tf.gather(logits, t - 1, axis=1), axis=-1, output_type=tf.int32)

    def decode(prompt, new_tokens):
        batch, length = prompt.shape
        ids = np.zeros((batch, length + new_tokens), np.int32)
        ids[:, :length] = prompt
        ids = tf.constant(ids)
        for t in range(length, length + new_tokens):
            token = next_tokens(ids, tf.constant(t))
            ids = tf.tensor_scatter_nd_update(
                ids, tf.stack([tf.range(batch), tf.fill([batch], t)], 1), token)
        return ids.numpy()

    return decode


def keras_hub_decoder(max_length):
    """GPT2CausalLM of the same size with random weights (None when keras-hub is missing)."""
    try:
        import keras_hub
    except ImportError:
        return None
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=CONFIG["vocab_size"], num_layers=CONFIG["num_layers"],
        num_heads=CONFIG["num_heads"], hidden_dim=CONFIG["d_model"],
        intermediate_dim=CONFIG["ff_dim"], max_sequence_length=max_length)
    causal_lm = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    causal_lm.compile(sampler="greedy")

    def decode(prompt, new_tokens):
        batch, length = prompt.shape
        ids = np.zeros((batch, length + new_tokens), np.int32)
        ids[:, :length] = prompt
        mask = np.zeros_like(ids, dtype=bool)
        mask[:, :length] = True
        out = causal_lm.generate({"token_ids": ids, "padding_mask": mask}, stop_token_ids=None)
        return out["token_ids"]

    return decode


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompt-length", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeats", type=int, default=5, help="timed calls per row (default: 5)")
    parser.add_argument("--skip-naive-above", type=int, default=128,
                        help="skip the (slow) naive rows for more new tokens than this (default: 128)")
    args = parser.parse_args()
    max_length = 512
    keras.utils.set_random_seed(0)
    model = models.transformer_lm(max_length=max_length, **CONFIG)
    decoders = {
        "kerazoo_kv_cache": lambda prompt, n: generation.generate(model, prompt, n),
        "naive": naive_decoder(model),
    }
    hub = keras_hub_decoder(max_length)
    if hub is None:
        print("keras-hub is not installed: its rows are skipped (pip install keras-hub)")
    else:
        decoders["keras_hub_gpt2"] = hub
    rng = np.random.default_rng(0)

    results = {}
    for batch in args.batch_sizes:
        for new_tokens in args.new_tokens:
            prompt = rng.integers(1, CONFIG["vocab_size"], size=(batch, args.prompt_length)).astype("int32")
            other = rng.integers(1, CONFIG["vocab_size"], size=(batch, args.prompt_length - 3)).astype("int32")
            rows = [name for name in decoders
                    if not (name == "naive" and new_tokens > args.skip_naive_above)]
            for name in rows:
                start = time.perf_counter()
                decoders[name](prompt, new_tokens)
                first = time.perf_counter() - start
                start = time.perf_counter()
                decoders[name](other, new_tokens)  # another prompt length: must not recompile
                second = time.perf_counter() - start
                results[(batch, new_tokens, name)] = dict(first=first, second=second, samples=[])
            for r in range(args.repeats):
                for name in rows[r % len(rows):] + rows[:r % len(rows)]:
                    start = time.perf_counter()
                    decoders[name](prompt, new_tokens)
                    seconds = time.perf_counter() - start
                    results[(batch, new_tokens, name)]["samples"].append(batch * new_tokens / seconds)
            print(f"batch {batch}, {new_tokens} new tokens: done", flush=True)

    print(f"\ngreedy, prompt {args.prompt_length} tokens, config A; median of {args.repeats}; "
          f"ratios vs {BASELINE} and vs keras_hub_gpt2 in the same setting")
    print(f"{'batch':>5s} {'new':>4s} {'decoder':18s} {'tokens/s':>9s} {'vs naive':>8s} {'vs hub':>7s} "
          f"{'1st call':>8s} {'2nd call':>8s}")
    for (batch, new_tokens, name), row in results.items():
        median = statistics.median(row["samples"])
        ratios = []
        for other_name in (BASELINE, "keras_hub_gpt2"):
            ref = results.get((batch, new_tokens, other_name))
            ratios.append(f"{median / statistics.median(ref['samples']):.2f}" if ref else "-")
        print(f"{batch:5d} {new_tokens:4d} {name:18s} {median:9.0f} {ratios[0]:>8s} {ratios[1]:>7s} "
              f"{row['first']:7.2f}s {row['second']:7.2f}s")


if __name__ == "__main__":
    main()
