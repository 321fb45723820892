"""FastDropout against the definition of inverted dropout: the drop rate, the exact scale, the gradient, seeds."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerazoo.layers import FastDropout, MultiHeadSelfAttention, TransformerBlock


def _dropped_fraction(layer, x):
    y = keras.ops.convert_to_numpy(layer(x, training=True)).astype("float64")
    return float(np.mean(y == 0)), y


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("shape", [(64, 50, 32), (3, 7, 1001)])  # even and odd last axes take different paths
def test_drops_the_rate_and_scales_kept_values_by_the_inverse_keep_probability(rate, shape):
    x = keras.ops.ones(shape)
    fraction, y = _dropped_fraction(FastDropout(rate, seed=1), x)
    n = np.prod(shape)
    assert abs(fraction - rate) < 5 * np.sqrt(rate * (1 - rate) / n)  # 5 binomial standard deviations
    applied = round(rate * 65536) / 65536
    np.testing.assert_allclose(np.unique(y[y != 0]), [1 / (1 - applied)], rtol=1e-6)
    assert y.shape == shape


def test_is_the_identity_outside_training_and_at_rate_0():
    x = keras.random.normal((4, 6, 8), seed=0)
    np.testing.assert_array_equal(FastDropout(0.3)(x, training=False), x)
    np.testing.assert_array_equal(FastDropout(0.0)(x, training=True), x)
    np.testing.assert_array_equal(FastDropout(1.0)(x, training=True), np.zeros((4, 6, 8)))


def test_gradient_is_the_mask_times_the_scale():
    layer = FastDropout(0.25, seed=3)
    x = tf.random.normal((8, 16))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
        total = tf.reduce_sum(y)
    gradient = tape.gradient(total, x).numpy()
    kept = y.numpy() != 0
    np.testing.assert_allclose(gradient, kept / (1 - 16384 / 65536), rtol=1e-6)
    np.testing.assert_allclose(y.numpy()[kept], x.numpy()[kept] * gradient[kept], rtol=1e-6)


def test_masks_change_per_call_and_repeat_with_the_seed():
    x = keras.ops.ones((32, 64))
    first, second = FastDropout(0.5, seed=7), FastDropout(0.5, seed=7)
    a, b = first(x, training=True), first(x, training=True)
    assert not np.array_equal(a, b)
    np.testing.assert_array_equal(second(x, training=True), a)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_runs_in_bfloat16_and_is_keras_dropout_exactly_under_xla(jit_compile):
    fast, stock = FastDropout(0.5, seed=0, dtype="mixed_bfloat16"), keras.layers.Dropout(0.5, seed=0)
    x = tf.ones((16, 10), tf.bfloat16)
    y, expected = (tf.function(lambda x: layer(x, training=True), jit_compile=jit_compile)(x) for layer in (fast, stock))
    assert y.dtype == tf.bfloat16 and set(np.unique(y.numpy().astype("float32"))) == {0.0, 2.0}
    # Under XLA the same seed gives Keras's mask (its draw fuses there); in a graph, the 16-bit mask.
    assert np.array_equal(y, expected) == jit_compile


def test_serializes_and_a_noise_shape_falls_back_to_keras():
    layer = keras.layers.deserialize(keras.layers.serialize(FastDropout(0.2, noise_shape=(None, 1), seed=5)))
    assert isinstance(layer, FastDropout) and layer.rate == 0.2 and layer.noise_shape == (None, 1)
    y = keras.ops.convert_to_numpy(layer(keras.ops.ones((64, 8)), training=True))
    assert all(len(set(row)) == 1 for row in y)  # one draw per row, shared along the noise_shape's 1 axis


def test_the_attention_and_block_dropouts_are_fast():
    block = TransformerBlock(num_heads=2, ff_dim=8, dropout=0.1)
    block.build((1, 4, 8))
    attention = MultiHeadSelfAttention(num_heads=2, dropout=0.1)
    attention.build((1, 4, 8))
    assert isinstance(block.dropout_layer, FastDropout) and isinstance(attention.dropout_layer, FastDropout)
    assert block.dropout_layer.rate == attention.dropout_layer.rate == 0.1
