"""TransformerBlock against the same block assembled from stock Keras layers with copied weights."""

import keras
import numpy as np
import pytest

from kerazoo.layers import TransformerBlock

D_MODEL, HEADS, FF = 16, 4, 32


def _reference(block, x, mask, causal):
    """The block's computation written with keras.layers.MultiHeadAttention and the block's own weights."""
    a = block.attention
    inner = D_MODEL
    mha = keras.layers.MultiHeadAttention(HEADS, key_dim=D_MODEL // HEADS)
    mha.build(x.shape, x.shape)
    kernel, bias = a.qkv_dense.get_weights()
    for i, dense in enumerate((mha.query_dense, mha.key_dense, mha.value_dense)):
        dense.set_weights([kernel[:, i * inner:(i + 1) * inner].reshape(D_MODEL, HEADS, -1),
                           bias[i * inner:(i + 1) * inner].reshape(HEADS, -1)])
    out_kernel, out_bias = a.output_dense.get_weights()
    mha.output_dense.set_weights([out_kernel.reshape(HEADS, -1, D_MODEL), out_bias])
    attention_mask = None if mask is None else np.repeat(mask[:, None, :], x.shape[1], axis=1)

    def attend(h):
        return mha(h, h, attention_mask=attention_mask, use_causal_mask=causal)

    def feed_forward(h):
        return block.ff_output(block.ff_inner(h))

    if block.norm_first:
        h = x + attend(block.attention_norm(x))
        return h + feed_forward(block.ff_norm(h))
    h = block.attention_norm(x + attend(x))
    return block.ff_norm(h + feed_forward(h))


@pytest.mark.parametrize("norm_first", [True, False])
@pytest.mark.parametrize("causal", [True, False])
def test_block_matches_stock_keras_composition_in_full_and_at_query_positions(rng, norm_first, causal):
    block = TransformerBlock(HEADS, FF, causal=causal, norm_first=norm_first)
    x = rng.normal(size=(2, 6, D_MODEL)).astype("float32")
    mask = np.array([[1, 1, 1, 1, 0, 0], [1] * 6], bool)
    got = block(x, padding_mask=mask)
    expected = np.asarray(_reference(block, x, mask, causal))
    np.testing.assert_allclose(got, expected, atol=1e-5)
    # query_positions: the outputs at those positions only (any order, repeats allowed), also symbolically.
    positions = np.array([[0, 3, 1, 3], [5, 0, 2, 4]], "int32")
    np.testing.assert_allclose(block(x, padding_mask=mask, query_positions=positions),
                               np.take_along_axis(expected, positions[:, :, None], 1), atol=1e-5)
    symbolic = block(keras.Input((6, D_MODEL)), query_positions=keras.Input((4,), dtype="int32"))
    assert tuple(symbolic.shape) == (None, 4, D_MODEL)
    # 4 weights in attention, 2 x 2 in the norms, 2 x 2 in the feed-forward net.
    assert len(block.trainable_weights) == 12
    assert block.count_params() == (D_MODEL * 3 * D_MODEL + 3 * D_MODEL + D_MODEL * D_MODEL + D_MODEL
                                    + 4 * D_MODEL + D_MODEL * FF + FF + FF * D_MODEL + D_MODEL)


def test_causal_block_ignores_future_tokens(rng):
    block = TransformerBlock(HEADS, FF, causal=True)
    x = rng.normal(size=(2, 6, D_MODEL)).astype("float32")
    changed = x.copy()
    changed[:, 3:] += 1.0
    np.testing.assert_allclose(block(changed)[:, :3], block(x)[:, :3], atol=1e-6)


def test_dropout_only_in_training(rng):
    block = TransformerBlock(HEADS, FF, dropout=0.5)
    x = rng.normal(size=(2, 6, D_MODEL)).astype("float32")
    np.testing.assert_allclose(block(x), block(x), atol=0)
    assert not np.allclose(block(x, training=True), block(x))


def test_block_errors():
    with pytest.raises(ValueError, match=r"d_model=10 is not divisible by num_heads=4"):
        TransformerBlock(4, 8)(np.zeros((1, 3, 10), "float32"))
    with pytest.raises(ValueError, match=r"ff_dim=0"):
        TransformerBlock(2, 0)
    with pytest.raises(ValueError, match=r"num_heads=-1"):
        TransformerBlock(-1, 8)
    with pytest.raises(ValueError, match=r"rank 3"):
        TransformerBlock(2, 8)(np.zeros((3, 10), "float32"))
    x, block = np.zeros((2, 1, 8), "float32"), TransformerBlock(2, 8, causal=True)
    with pytest.raises(ValueError, match=r"query_positions.*\(batch, queries\)"):
        block(x, query_positions=np.zeros(2, "int32"))
    with pytest.raises(ValueError, match="cannot be combined"):
        block(x, cache=block.attention.empty_cache(2, 4), cache_index=0, query_positions=np.zeros((2, 1), "int32"))
