"""GPT-style decoder-only Transformer language model."""

import keras

from kerazoo.layers import TokenAndPositionEmbedding, TransformerBlock


def transformer_lm(vocab_size=10000, max_length=128, d_model=512, num_heads=8, num_layers=4,
                   ff_dim=2048, dropout=0.0, tie_embeddings=True, positions="learned",
                   activation="gelu", name="transformer_lm"):
    """Builds a GPT-style causal language model (token ids in, next-token logits out).

    Token+position embedding → `num_layers` causal pre-norm `TransformerBlock`s →
    final layer norm → a projection to the vocabulary, by default with the
    token embedding itself (tied embeddings, as GPT-2: fewer parameters and
    better small-data perplexity). Defaults are the documents' configuration.
    `kerazoo.generation` decodes with these layers and a key/value cache; it
    relies on the layer names used here. The logits are float32 even under a mixed
    precision policy, so the softmax cross-entropy is computed in float32.

    Args:
        vocab_size: number of token ids.
        max_length: context length (the longest input).
        d_model: width of the residual stream.
        num_heads: attention heads per block (must divide `d_model`).
        num_layers: number of Transformer blocks.
        ff_dim: hidden width of each feed-forward network.
        dropout: dropout rate in every block and after the embedding.
        tie_embeddings: project to the vocabulary with the token embedding
            table (True) or a separate bias-free Dense layer (False).
        positions: `"learned"` or `"sinusoidal"` position information.
        activation: feed-forward activation.
        name: model name.

    Returns:
        A `keras.Model` mapping `(batch, seq)` int ids to `(batch, seq,
        vocab_size)` float32 logits.

    Example:

    >>> model = transformer_lm(vocab_size=100, max_length=16, d_model=32,
    ...                        num_heads=2, num_layers=1, ff_dim=64)
    >>> tuple(model(keras.ops.ones((2, 16), dtype="int32")).shape)
    (2, 16, 100)
    """
    token_ids = keras.Input(shape=(None,), dtype="int32", name="token_ids")
    embedding = TokenAndPositionEmbedding(vocab_size, max_length, d_model, positions=positions,
                                          name="embedding")
    x = keras.layers.Dropout(dropout, name="embedding_dropout")(embedding(token_ids))
    for i in range(num_layers):
        x = TransformerBlock(num_heads, ff_dim, dropout=dropout, causal=True,
                             activation=activation, name=f"block_{i}")(x)
    x = keras.layers.LayerNormalization(epsilon=1e-5, name="final_norm")(x)
    if tie_embeddings:
        x = embedding(x, reverse=True)
    else:
        # No bias (as GPT-2 and nanoGPT): it would add a (tokens x vocab)
        # add and gradient reduction to every step for no gain.
        x = keras.layers.Dense(vocab_size, use_bias=False, name="lm_head")(x)
    # A float32 identity: under mixed precision the loss then sees float32 logits.
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(x)
    return keras.Model(token_ids, logits, name=name)
