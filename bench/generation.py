"""Generation tokens/s: kerazoo's KV-cache decoding vs naive recomputation vs KerasHub's GPT2CausalLM (XLA).

All three decode greedily from 16-token prompts with random weights at config A
(vocab 8192, d_model 256, 4 heads, 4 layers, ff 1024), in one run, interleaved,
medians of --repeats. KerasHub's `generate` is compiled with `jit_compile=True`
(Keras's default "auto" turns XLA off on CPU, which would flatter kerazoo).
The naive baseline reruns the model on the prefix only, for the last
position's logits only, in a `tf.function` that takes any length (no XLA: a
new length every step would recompile). KerasHub is a benchmark-only
dependency: install it in a separate venv (`pip install -e . keras-hub`);
without it its rows are skipped.

Columns: steady-state tokens/s (compiled, same prompt shape: excludes
compilation); `1st call` (includes tracing/compiling); `new-len call`, the
mean time of calls whose prompt lengths (15, 14, 13, ...) the decoder has
not seen, i.e. per-call time including any recompiles a new length causes.

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
    """Greedy decoding that reruns the model over the whole prefix for every token (no cache).

    Only the last position goes through the (tied) output projection.
    """
    hidden_states = keras.Model(model.inputs, model.get_layer("final_norm").output)
    table = model.get_layer("embedding").token_embedding.embeddings

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)])
    def next_tokens(prefix):
        last = hidden_states(prefix, training=False)[:, -1]
        return tf.argmax(tf.matmul(last, table, transpose_b=True), axis=-1, output_type=tf.int32)

    def decode(prompt, new_tokens):
        ids = tf.constant(prompt)
        for _ in range(new_tokens):
            ids = tf.concat([ids, next_tokens(ids)[:, None]], axis=1)
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
    causal_lm.compile(sampler="greedy", jit_compile=True)  # "auto" would mean no XLA on CPU

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
            rows = [name for name in decoders
                    if not (name == "naive" and new_tokens > args.skip_naive_above)]
            for name in rows:
                start = time.perf_counter()
                decoders[name](prompt, new_tokens)
                results[(batch, new_tokens, name)] = dict(first=time.perf_counter() - start, samples=[],
                                                          new_length=[])
            for r in range(args.repeats):
                # A prompt length this decoder has not seen yet (shorter each round), then the usual one.
                other = prompt[:, :args.prompt_length - 1 - r]
                for name in rows[r % len(rows):] + rows[:r % len(rows)]:
                    start = time.perf_counter()
                    decoders[name](other, new_tokens)
                    results[(batch, new_tokens, name)]["new_length"].append(time.perf_counter() - start)
                    start = time.perf_counter()
                    decoders[name](prompt, new_tokens)
                    seconds = time.perf_counter() - start
                    results[(batch, new_tokens, name)]["samples"].append(batch * new_tokens / seconds)
            print(f"batch {batch}, {new_tokens} new tokens: done", flush=True)

    print(f"\ngreedy, prompt {args.prompt_length} tokens, config A; median of {args.repeats}; "
          f"ratios vs {BASELINE} and vs keras_hub_gpt2 (XLA) in the same setting")
    print(f"{'batch':>5s} {'new':>4s} {'decoder':18s} {'tokens/s':>9s} {'vs naive':>8s} {'vs hub':>7s} "
          f"{'1st call':>8s} {'new-len call':>12s}")
    for (batch, new_tokens, name), row in results.items():
        median = statistics.median(row["samples"])
        ratios = []
        for other_name in (BASELINE, "keras_hub_gpt2"):
            ref = results.get((batch, new_tokens, other_name))
            ratios.append(f"{median / statistics.median(ref['samples']):.2f}" if ref else "-")
        print(f"{batch:5d} {new_tokens:4d} {name:18s} {median:9.0f} {ratios[0]:>8s} {ratios[1]:>7s} "
              f"{row['first']:7.2f}s {statistics.mean(row['new_length']):11.2f}s")


if __name__ == "__main__":
    main()
