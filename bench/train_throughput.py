"""Training tokens/s of a GPT-style LM: kerazoo blocks vs the same model on keras.layers.MultiHeadAttention.

Both models share the embedding and LM head; only the Transformer blocks differ.
Every setting {float32, mixed_bfloat16} x {XLA, no XLA} x {kerazoo, keras MHA},
is built and compiled first, then timed in interleaved rounds (the order rotates
each round) so that machine noise hits all rows alike; the row `training.choose_plan()` picks for
this model (timing its candidates itself, without a cache) is marked. Prints medians, ratios
to the keras-MHA float32 + XLA row, and model-FLOPs utilisation against the
matmul peak measured in the same run.

    python bench/train_throughput.py                  # config A
    python bench/train_throughput.py --repeats 7 --steps 8
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kerazoo import models, training  # noqa: E402
from kerazoo.layers import TokenAndPositionEmbedding  # noqa: E402

BASELINE = ("keras_mha", "float32", True, False)


def keras_mha_lm(vocab_size, max_length, d_model, num_heads, num_layers, ff_dim, tie_embeddings=True):
    """kerazoo's transformer_lm with each block written from stock Keras layers (the baseline).

    Embedding, tied output projection and final norm are the same as
    transformer_lm's, so the two models differ only in their blocks.
    """
    token_ids = keras.Input(shape=(None,), dtype="int32")
    embedding = TokenAndPositionEmbedding(vocab_size, max_length, d_model)
    x = embedding(token_ids)
    for _ in range(num_layers):
        h = keras.layers.LayerNormalization(epsilon=1e-5)(x)
        h = keras.layers.MultiHeadAttention(num_heads, d_model // num_heads)(h, h, use_causal_mask=True)
        x = x + h
        h = keras.layers.LayerNormalization(epsilon=1e-5)(x)
        h = keras.layers.Dense(ff_dim, activation="gelu")(h)
        x = x + keras.layers.Dense(d_model)(h)
    x = keras.layers.LayerNormalization(epsilon=1e-5)(x)
    if tie_embeddings:
        x = embedding(x, reverse=True)
    else:
        x = keras.layers.Dense(vocab_size, use_bias=False)(x)
    return keras.Model(token_ids, keras.layers.Activation("linear", dtype="float32")(x))


def flops_per_token(model, config):
    """Training FLOPs per token: 6 x matmul parameters + attention (PaLM appendix B: 12 L s d)."""
    # Tables used only as lookups cost no FLOPs; a tied token table is also
    # the output projection (a matmul).
    lookup_params = config["max_length"] * config["d_model"]  # position table
    if not config["tie_embeddings"]:
        lookup_params += config["vocab_size"] * config["d_model"]  # token table, lookup only
    matmul_params = model.count_params() - lookup_params
    return 6 * matmul_params + 12 * config["num_layers"] * config["max_length"] * config["d_model"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=8192)
    parser.add_argument("--d-model", type=int, default=256)
    parser.add_argument("--num-heads", type=int, default=4)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--ff-dim", type=int, default=1024)
    parser.add_argument("--seq", type=int, default=128, help="sequence length (default: 128)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per repeat (default: 5)")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds; medians reported (default: 5)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps after compiling (default: 3)")
    parser.add_argument("--untied", action="store_true",
                        help="separate output projection instead of tied embeddings (both models)")
    args = parser.parse_args()
    config = dict(vocab_size=args.vocab_size, max_length=args.seq, d_model=args.d_model,
                  num_heads=args.num_heads, num_layers=args.num_layers, ff_dim=args.ff_dim,
                  tie_embeddings=not args.untied)
    print(f"config: {config}, batch {args.batch_size}")

    rng = np.random.default_rng(0)
    ids = rng.integers(0, args.vocab_size, size=(args.batch_size, args.seq + 1)).astype("int32")
    x, y = ids[:, :-1], ids[:, 1:]
    plan, _ = training.choose_plan(
        lambda p: training.compile_model(models.transformer_lm(**config), p, optimizer=training.adamw(1e-4)),
        (x, y), cache_path=False, print_fn=lambda line: print(f"training.choose_plan(): {line[6:]}"))
    peaks = {(p, j): training.matmul_gflops(tf.float32 if p == "float32" else tf.bfloat16, j)
             for p in ("float32", "mixed_bfloat16") for j in (True, False)}
    for (p, j), gflops in peaks.items():
        print(f"matmul peak {p:15s} XLA={str(j):5s} {gflops:7.0f} GFLOP/s")

    builders = {"kerazoo": models.transformer_lm, "keras_mha": keras_mha_lm}
    settings = [(name, training.TrainingPlan(precision, jit, "benchmark"))
                for name in builders for precision in ("float32", "mixed_bfloat16")
                for jit in (True, False)]
    runs = {}
    if plan.xla_fusion:
        settings.append(("kerazoo", plan))
    for name, setting in settings:
        with setting.scope():  # the train step is traced (and auto-clustered, with xla_fusion) in here
            model = builders[name](**config)
            training.compile_model(model, setting, optimizer=training.adamw(1e-4))
            start = time.perf_counter()
            model.train_on_batch(x, y)  # traces, compiles and instantiates the train step
            first = time.perf_counter() - start
            for _ in range(args.warmup):
                model.train_on_batch(x, y)
        key = (name, setting.precision, setting.jit_compile, setting.xla_fusion)
        runs[key] = dict(model=model, first=first, samples=[])
        print(f"built {name:9s} {setting.precision:15s} XLA={str(setting.jit_compile):5s} "
              f"xla_fusion={str(setting.xla_fusion):5s} first step {first:5.1f}s")

    keys = list(runs)
    tokens = args.steps * args.batch_size * args.seq
    for r in range(args.repeats):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            model = runs[key]["model"]
            start = time.perf_counter()
            for _ in range(args.steps):
                loss = model.train_on_batch(x, y)
            runs[key]["samples"].append(tokens / (time.perf_counter() - start))
        print(f"round {r + 1}/{args.repeats} done (last loss {float(loss):.3f})")

    base = statistics.median(runs[BASELINE]["samples"])
    print(f"\nmedian of {args.repeats} repeats x {args.steps} steps; ratio vs keras_mha float32 + XLA")
    print(f"{'model':10s} {'precision':15s} {'XLA':5s} {'fusion':6s} {'tokens/s':>9s} {'ratio':>6s} "
          f"{'MFU fp32':>8s} {'MFU bf16':>8s} {'1st step':>8s}")
    fp32_peak = max(peaks[("float32", True)], peaks[("float32", False)])
    bf16_peak = max(peaks[("mixed_bfloat16", True)], peaks[("mixed_bfloat16", False)])
    medians = {key: statistics.median(run["samples"]) for key, run in runs.items()}
    plan_key = ("kerazoo", plan.precision, plan.jit_compile, plan.xla_fusion)
    for key, run in runs.items():
        name, precision, jit, fusion = key
        gflops = medians[key] * flops_per_token(run["model"], config) / 1e9
        chosen = "  <- training.choose_plan()" if key == plan_key else ""
        print(f"{name:10s} {precision:15s} {str(jit):5s} {str(fusion):6s} {medians[key]:9.0f} "
              f"{medians[key] / base:6.2f} {gflops / fp32_peak:8.1%} {gflops / bf16_peak:8.1%} "
              f"{run['first']:7.1f}s{chosen}")
    for precision in ("float32", "mixed_bfloat16"):
        for jit in (True, False):
            ours = medians[("kerazoo", precision, jit, False)]
            theirs = medians[("keras_mha", precision, jit, False)]
            print(f"kerazoo / keras_mha at {precision} XLA={jit}: {ours / theirs:.2f}x")
    print(f"kerazoo with training.choose_plan() / keras_mha float32 + XLA: {medians[plan_key] / base:.2f}x; "
          f"its MFU against the bfloat16 matmul peak measured above: "
          f"{medians[plan_key] * flops_per_token(runs[plan_key]['model'], config) / 1e9 / bf16_peak:.1%}")

if __name__ == "__main__":
    main()
