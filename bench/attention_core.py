"""Attention-core variants inside 4 Transformer blocks: which layout to ship, with and without XLA.

Times forward + backward + SGD of 4 pre-norm causal blocks (config A: d_model 256, 4 heads, ff 1024,
seq 128, batch 16) for:
- kerazoo: `MultiHeadSelfAttention` as shipped (one transpose of the fused QKV to (3, B, H, S, D));
- einsum_bshd: the same projections, scores and context by einsum on the (B, S, H, D) layout, no
  explicit transposes;
- dot_product_attention: `keras.ops.dot_product_attention(..., is_causal=True)` on that layout;
- keras_mha: the block built from `keras.layers.MultiHeadAttention` (the baseline).
Settings mixed_bfloat16 without XLA and float32 with XLA, interleaved; medians; ratios to keras_mha.

    python bench/attention_core.py --repeats 9
"""

import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
from keras import ops  # noqa: E402

from kerazoo.layers import MultiHeadSelfAttention, TransformerBlock  # noqa: E402

D_MODEL, HEADS, FF, SEQ, BATCH = 256, 4, 1024, 128, 16


class EinsumBSHD(MultiHeadSelfAttention):
    """Scores and context by einsum on (batch, seq, heads, head_dim): no explicit transposes."""

    def call(self, inputs, **kwargs):
        batch, seq = ops.shape(inputs)[0], ops.shape(inputs)[1]
        qkv = ops.reshape(self.qkv_dense(inputs), (batch, seq, 3, self.num_heads, self._head_dim))
        query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        scores = ops.einsum("bqhd,bkhd->bhqk", query * ops.cast(self._head_dim ** -0.5, query.dtype), key)
        context = ops.einsum("bhqk,bkhd->bqhd", self._masked_softmax(scores, None), value)
        return self.output_dense(ops.reshape(context, (batch, seq, -1)))


class DotProductAttention(MultiHeadSelfAttention):
    """`keras.ops.dot_product_attention` on (batch, seq, heads, head_dim)."""

    def call(self, inputs, **kwargs):
        batch, seq = ops.shape(inputs)[0], ops.shape(inputs)[1]
        qkv = ops.reshape(self.qkv_dense(inputs), (batch, seq, 3, self.num_heads, self._head_dim))
        context = ops.dot_product_attention(qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2], is_causal=True)
        return self.output_dense(ops.reshape(context, (batch, seq, -1)))


def kerazoo_block(attention_class=None):
    def block(x):
        layer = TransformerBlock(HEADS, FF, causal=True)
        if attention_class is not None:
            layer.attention = attention_class(HEADS, causal=True, name="attention")
        return layer(x)
    return block


def keras_mha_block(x):
    h = keras.layers.LayerNormalization(epsilon=1e-5)(x)
    x = x + keras.layers.MultiHeadAttention(HEADS, D_MODEL // HEADS)(h, h, use_causal_mask=True)
    h = keras.layers.LayerNormalization(epsilon=1e-5)(x)
    return x + keras.layers.Dense(D_MODEL)(keras.layers.Dense(FF, activation="gelu")(h))


VARIANTS = {"kerazoo": kerazoo_block(), "einsum_bshd": kerazoo_block(EinsumBSHD),
            "dot_product_attention": kerazoo_block(DotProductAttention), "keras_mha": keras_mha_block}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9, help="interleaved rounds (default: 9)")
    parser.add_argument("--steps", type=int, default=3, help="steps per timing (default: 3)")
    args = parser.parse_args()
    x = np.random.default_rng(0).normal(size=(BATCH, SEQ, D_MODEL)).astype("float32")
    runs = {}
    for precision, jit in (("mixed_bfloat16", False), ("float32", True)):
        keras.config.set_dtype_policy(precision)
        for name, block in VARIANTS.items():
            inputs = keras.Input((SEQ, D_MODEL))
            h = inputs
            for _ in range(4):
                h = block(h)
            model = keras.Model(inputs, keras.layers.Activation("linear", dtype="float32")(h))
            model.compile(keras.optimizers.SGD(1e-4), "mse", jit_compile=jit)
            for _ in range(3):
                model.train_on_batch(x, x)
            runs[(precision, jit, name)] = (model, [])
    keras.config.set_dtype_policy("float32")
    keys = list(runs)
    for r in range(args.repeats):
        for key in keys[r % len(keys):] + keys[:r % len(keys)]:
            model, samples = runs[key]
            start = time.perf_counter()
            for _ in range(args.steps):
                model.train_on_batch(x, x)
            samples.append((time.perf_counter() - start) / args.steps * 1000)
    print(f"4 blocks, batch {BATCH}, seq {SEQ}: forward + backward + SGD, median ms of {args.repeats}")
    print(f"{'precision':15s} {'XLA':5s} {'variant':22s} {'ms/step':>8s} {'speed vs keras_mha':>18s}")
    for (precision, jit, name), (_, samples) in runs.items():
        base = statistics.median(runs[(precision, jit, "keras_mha")][1])
        median = statistics.median(samples)
        print(f"{precision:15s} {str(jit):5s} {name:22s} {median:8.1f} {base / median:18.2f}")


if __name__ == "__main__":
    main()
