"""PositionalEncoding against the formula, PositionEmbedding, TokenAndPositionEmbedding, and their errors."""

import math

import numpy as np
import pytest

from kerazoo.layers import PositionalEncoding, PositionEmbedding, TokenAndPositionEmbedding


def _formula(max_length, d_model):
    """PE(pos,2i)=sin(pos/10000^(2i/d)), PE(pos,2i+1)=cos(pos/10000^(2i/d)), written out element by element."""
    table = np.zeros((max_length, d_model))
    for pos in range(max_length):
        for j in range(d_model):
            i = j // 2
            angle = pos / 10000 ** (2 * i / d_model)
            table[pos, j] = math.sin(angle) if j % 2 == 0 else math.cos(angle)
    return table


@pytest.mark.parametrize("d_model", [16, 7])
def test_positional_encoding_matches_formula(rng, d_model):
    x = rng.normal(size=(2, 12, d_model)).astype("float32")
    out = PositionalEncoding(max_length=50)(x)
    np.testing.assert_allclose(np.asarray(out) - x, np.broadcast_to(_formula(12, d_model), x.shape),
                               atol=1e-6)


def test_positional_encoding_start_index_continues_the_sequence():
    layer = PositionalEncoding(max_length=20)
    zeros = np.zeros((1, 3, 8), "float32")
    np.testing.assert_allclose(layer(zeros, start_index=5)[0], _formula(20, 8)[5:8], atol=1e-6)


def test_position_embedding_adds_its_learned_table(rng):
    layer = PositionEmbedding(max_length=10)
    x = rng.normal(size=(2, 6, 4)).astype("float32")
    out = layer(x)
    assert [w.shape for w in layer.trainable_weights] == [(10, 4)]
    np.testing.assert_allclose(out, x + layer.embeddings.numpy()[None, :6], atol=1e-6)
    np.testing.assert_allclose(layer(x[:, :2], start_index=3),
                               x[:, :2] + layer.embeddings.numpy()[None, 3:5], atol=1e-6)


@pytest.mark.parametrize("layer_class", [PositionalEncoding, PositionEmbedding])
def test_input_longer_than_max_length_is_a_clear_error(layer_class):
    with pytest.raises(ValueError, match=r"sequence length 9 exceeds max_length=8"):
        layer_class(max_length=8)(np.zeros((1, 9, 4), "float32"))
    with pytest.raises(ValueError, match=r"expects inputs of rank 3.*\(9, 4\)"):
        layer_class(max_length=8)(np.zeros((9, 4), "float32"))
    with pytest.raises(ValueError, match=r"max_length=0"):
        layer_class(max_length=0)


def test_token_and_position_embedding(rng):
    ids = np.array([[4, 2, 0], [1, 1, 1]])
    for positions, table_of in [("learned", lambda l: l.position_layer.embeddings.numpy()),
                                ("sinusoidal", lambda l: _formula(10, 6))]:
        layer = TokenAndPositionEmbedding(vocab_size=5, max_length=10, embedding_dim=6,
                                          positions=positions, mask_zero=True)
        out = layer(ids)
        tokens = layer.token_embedding.embeddings.numpy()[ids]
        np.testing.assert_allclose(out, tokens + table_of(layer)[:3], atol=1e-6)
        np.testing.assert_array_equal(layer.compute_mask(ids), ids != 0)


def test_token_and_position_embedding_errors():
    with pytest.raises(ValueError, match=r"positions.*'rotary'"):
        TokenAndPositionEmbedding(5, 10, 6, positions="rotary")
    with pytest.raises(ValueError, match=r"embedding_dim=0"):
        TokenAndPositionEmbedding(5, 10, 0)
    with pytest.raises(ValueError, match=r"sequence length 11 exceeds max_length=10"):
        TokenAndPositionEmbedding(5, 10, 6)(np.zeros((1, 11), "int32"))
    with pytest.raises(ValueError, match=r"expects inputs of rank 2"):
        TokenAndPositionEmbedding(5, 10, 6)(np.zeros((1, 3, 2), "int32"))
