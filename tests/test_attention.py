"""MultiHeadSelfAttention against keras.layers.MultiHeadAttention, plus masking properties and errors."""

import keras
import numpy as np
import pytest

from kerazoo.layers import MultiHeadSelfAttention

BATCH, SEQ, D_MODEL, HEADS = 3, 7, 16, 4


def _pair(causal=False):
    """A kerazoo layer and a Keras MultiHeadAttention holding the same weights."""
    ours = MultiHeadSelfAttention(HEADS, causal=causal)
    ours.build((None, SEQ, D_MODEL))
    ref = keras.layers.MultiHeadAttention(HEADS, key_dim=D_MODEL // HEADS)
    ref.build((None, SEQ, D_MODEL), (None, SEQ, D_MODEL))
    q, k, v, o = ref.query_dense, ref.key_dense, ref.value_dense, ref.output_dense
    inner = HEADS * (D_MODEL // HEADS)
    ours.qkv_dense.set_weights([
        np.concatenate([d.kernel.numpy().reshape(D_MODEL, inner) for d in (q, k, v)], axis=1),
        np.concatenate([d.bias.numpy().reshape(inner) for d in (q, k, v)]),
    ])
    ours.output_dense.set_weights([o.kernel.numpy().reshape(inner, D_MODEL), o.bias.numpy()])
    return ours, ref


def _padding_mask():
    lengths = np.array([SEQ, 4, 1])
    return np.arange(SEQ)[None, :] < lengths[:, None]


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("padded", [False, True])
def test_matches_keras_multi_head_attention(rng, causal, padded):
    ours, ref = _pair(causal)
    x = rng.normal(size=(BATCH, SEQ, D_MODEL)).astype("float32")
    mask = _padding_mask() if padded else None
    attention_mask = None if mask is None else np.repeat(mask[:, None, :], SEQ, axis=1)
    expected, expected_scores = ref(x, x, attention_mask=attention_mask, use_causal_mask=causal,
                                    return_attention_scores=True)
    got, scores = ours(x, padding_mask=mask, return_attention_scores=True)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(scores, expected_scores, atol=1e-6)


def test_causal_output_ignores_future_tokens(rng):
    layer = MultiHeadSelfAttention(HEADS, causal=True)
    x = rng.normal(size=(BATCH, SEQ, D_MODEL)).astype("float32")
    for t in range(SEQ - 1):
        changed = x.copy()
        changed[:, t + 1:] = rng.normal(size=changed[:, t + 1:].shape)
        np.testing.assert_allclose(layer(changed)[:, : t + 1], layer(x)[:, : t + 1], atol=1e-6)
        assert not np.allclose(layer(changed)[:, t + 1:], layer(x)[:, t + 1:])


def test_real_tokens_ignore_padded_tokens(rng):
    layer = MultiHeadSelfAttention(HEADS)
    mask = _padding_mask()
    x = rng.normal(size=(BATCH, SEQ, D_MODEL)).astype("float32")
    changed = np.where(mask[..., None], x, rng.normal(size=x.shape)).astype("float32")
    a, b = layer(x, padding_mask=mask), layer(changed, padding_mask=mask)
    np.testing.assert_allclose(np.asarray(a)[mask], np.asarray(b)[mask], atol=1e-6)


@pytest.mark.parametrize("causal", [False, True])
def test_attention_rows_sum_to_one_and_skip_masked_keys(rng, causal):
    layer = MultiHeadSelfAttention(HEADS, causal=causal)
    mask = _padding_mask()
    _, scores = layer(rng.normal(size=(BATCH, SEQ, D_MODEL)).astype("float32"),
                      padding_mask=mask, return_attention_scores=True)
    scores = np.asarray(scores)
    np.testing.assert_allclose(scores.sum(-1), 1.0, atol=1e-6)
    assert scores.shape == (BATCH, HEADS, SEQ, SEQ)
    assert np.all(scores[~np.broadcast_to(mask[:, None, None, :], scores.shape)] < 1e-12)
    if causal:
        assert np.all(np.triu(scores[0, 0], k=1) == 0)


def test_keras_mask_from_embedding_equals_explicit_padding_mask(rng):
    ids = np.array([[5, 3, 2, 0, 0], [1, 2, 3, 4, 9]])
    embedding = keras.layers.Embedding(10, D_MODEL, mask_zero=True)
    layer = MultiHeadSelfAttention(HEADS)
    inputs = keras.Input((None,), dtype="int32")
    model = keras.Model(inputs, layer(embedding(inputs)))
    explicit = layer(embedding(ids), padding_mask=ids != 0)
    np.testing.assert_allclose(model(ids), explicit, atol=1e-6)
    # And the mask really changed something: without it the result differs.
    unmasked = np.asarray(embedding(ids))  # a plain array carries no Keras mask
    assert not np.allclose(layer(unmasked)[0, :3], np.asarray(explicit)[0, :3])


@pytest.mark.parametrize("policy,tolerance", [("mixed_bfloat16", 3e-2), ("mixed_float16", 3e-3)])
def test_mixed_precision_computes_in_half_and_stays_near_float32(rng, policy, tolerance):
    """The same weights in float32 are the oracle: close (half-precision rounding), yet not identical."""
    x = rng.normal(size=(BATCH, SEQ, D_MODEL)).astype("float32")
    reference = MultiHeadSelfAttention(HEADS, causal=True)
    expected, expected_scores = reference(x, padding_mask=_padding_mask(), return_attention_scores=True)
    layer = MultiHeadSelfAttention(HEADS, causal=True, dtype=policy)
    layer.build(x.shape)
    layer.set_weights(reference.get_weights())
    out, scores = layer(x, padding_mask=_padding_mask(), return_attention_scores=True)
    assert out.dtype == policy.split("_")[1] and layer.qkv_dense.kernel.dtype == "float32"
    out, scores = np.asarray(out, "float32"), np.asarray(scores, "float32")
    np.testing.assert_allclose(out, expected, atol=tolerance)
    np.testing.assert_allclose(scores, expected_scores, atol=tolerance)
    assert np.abs(out - np.asarray(expected)).max() > 0  # it really ran in half precision


def test_float16_softmax_of_a_fully_masked_row_is_finite(rng):
    """-1e9 is -inf in float16, so a float16 softmax of a row with every key masked is NaN (keras#17571)."""
    layer = MultiHeadSelfAttention(HEADS, dtype="mixed_float16")
    mask = np.ones((2, SEQ), bool)
    mask[1] = False
    out, scores = layer(rng.normal(size=(2, SEQ, D_MODEL)).astype("float32"), padding_mask=mask,
                        return_attention_scores=True)
    assert np.isfinite(np.asarray(out, "float32")).all()
    np.testing.assert_allclose(np.asarray(scores, "float32")[1], 1 / SEQ, rtol=1e-3)  # uniform, not NaN


def test_key_dim_may_be_set_when_heads_do_not_divide_d_model(rng):
    layer = MultiHeadSelfAttention(num_heads=3, key_dim=5)
    assert layer(rng.normal(size=(2, 4, 16)).astype("float32")).shape == (2, 4, 16)
    assert layer.qkv_dense.kernel.shape == (16, 45)


def test_heads_not_dividing_d_model_is_a_clear_error():
    with pytest.raises(ValueError, match=r"d_model=10 is not divisible by num_heads=4"):
        MultiHeadSelfAttention(4)(np.zeros((1, 3, 10), "float32"))


def test_wrong_rank_is_a_clear_error():
    with pytest.raises(ValueError, match=r"expects inputs of rank 3.*received shape \(3, 8\)"):
        MultiHeadSelfAttention(2)(np.zeros((3, 8), "float32"))


def test_bad_padding_mask_and_arguments_are_clear_errors():
    with pytest.raises(ValueError, match=r"padding_mask.*\(batch, seq\).*\(1, 1, 3\)"):
        MultiHeadSelfAttention(2)(np.zeros((1, 3, 8), "float32"), padding_mask=np.ones((1, 1, 3)))
    with pytest.raises(ValueError, match="num_heads=0"):
        MultiHeadSelfAttention(0)
    with pytest.raises(ValueError, match="dropout=1.5"):
        MultiHeadSelfAttention(2, dropout=1.5)


def test_cache_misuse_is_a_clear_error():
    layer = MultiHeadSelfAttention(2, causal=True)
    x = np.zeros((1, 1, 8), "float32")
    layer(x)
    cache = layer.empty_cache(1, 4)
    with pytest.raises(ValueError, match="cache_index"):
        layer(x, cache=cache)
    with pytest.raises(ValueError, match="padding masks are not supported with a cache"):
        layer(x, cache=cache, cache_index=0, padding_mask=np.ones((1, 1)))
    with pytest.raises(ValueError, match="only meaningful for causal"):
        MultiHeadSelfAttention(2)(x, cache=cache, cache_index=0)
