"""Encoder–decoder translation models: the Transformer, and an RNN with additive (Bahdanau) attention."""

import keras
from keras import ops

from kerazoo.layers import TokenAndPositionEmbedding, TransformerBlock, TransformerDecoderBlock

CELLS = {"gru": keras.layers.GRU, "lstm": keras.layers.LSTM}


def transformer_seq2seq(source_vocab, target_vocab, max_length=32, d_model=256, num_heads=8, num_layers=3,
                        ff_dim=1024, dropout=0.1, positions="learned", norm_first=True,
                        name="transformer_seq2seq"):
    """Builds an encoder–decoder Transformer (Vaswani et al., 2017) for translation.

    Encoder: token+position embedding → `num_layers` bidirectional
    `TransformerBlock`s (padding masked) → layer norm. Decoder: token+position
    embedding → `num_layers` `TransformerDecoderBlock`s (causal self-attention,
    cross-attention over the encoder output, feed-forward) → layer norm →
    logits through the target embedding table (tied input/output embeddings).
    Id 0 is padding on both sides. Decoding (`kerazoo.seq2seq_decoding`)
    relies on the layer names used here.

    Args:
        source_vocab: source token ids.
        target_vocab: target token ids.
        max_length: the longest source and the longest target sequence.
        d_model: width of the residual streams.
        num_heads: attention heads (must divide `d_model`).
        num_layers: encoder blocks and decoder blocks (each).
        ff_dim: hidden width of the feed-forward networks.
        dropout: dropout in every block and after the embeddings.
        positions: `"learned"` or `"sinusoidal"`, on both sides.
        norm_first: pre-norm (True) or post-norm (False) blocks.
        name: model name.

    Returns:
        A `keras.Model` from `[source_ids (batch, source_seq), target_ids
        (batch, target_seq)]` int32 (the target shifted right, starting with
        the start token) to `(batch, target_seq, target_vocab)` float32 logits.

    Example:

    >>> model = transformer_seq2seq(100, 120, max_length=16, d_model=32, num_heads=2,
    ...                             num_layers=1, ff_dim=64)
    >>> tuple(model([keras.ops.ones((2, 7), "int32"), keras.ops.ones((2, 5), "int32")]).shape)
    (2, 5, 120)
    """
    _check_positive(source_vocab=source_vocab, target_vocab=target_vocab, max_length=max_length,
                    d_model=d_model, num_heads=num_heads, num_layers=num_layers, ff_dim=ff_dim)
    if d_model % num_heads:
        raise ValueError(f"d_model={d_model} is not divisible by num_heads={num_heads}.")
    source_ids = keras.Input(shape=(None,), dtype="int32", name="source_ids")
    target_ids = keras.Input(shape=(None,), dtype="int32", name="target_ids")
    source_mask = ops.not_equal(source_ids, 0)

    source_embedding = TokenAndPositionEmbedding(source_vocab, max_length, d_model, positions=positions,
                                                 name="source_embedding")
    x = keras.layers.Dropout(dropout, name="source_dropout")(source_embedding(source_ids))
    for i in range(num_layers):
        x = TransformerBlock(num_heads, ff_dim, dropout=dropout, norm_first=norm_first,
                             name=f"encoder_block_{i}")(x, padding_mask=source_mask)
    encoded = keras.layers.LayerNormalization(epsilon=1e-5, name="encoder_norm")(x)

    target_embedding = TokenAndPositionEmbedding(target_vocab, max_length, d_model, positions=positions,
                                                 name="target_embedding")
    y = keras.layers.Dropout(dropout, name="target_dropout")(target_embedding(target_ids))
    for i in range(num_layers):
        y = TransformerDecoderBlock(num_heads, ff_dim, dropout=dropout, norm_first=norm_first,
                                    name=f"decoder_block_{i}")(y, encoded, context_mask=source_mask)
    y = keras.layers.LayerNormalization(epsilon=1e-5, name="decoder_norm")(y)
    logits = keras.layers.Activation("linear", dtype="float32", name="logits")(
        target_embedding(y, reverse=True))
    return keras.Model([source_ids, target_ids], logits, name=name)


def rnn_seq2seq(source_vocab, target_vocab, embedding_dim=256, units=512, cell="gru", dropout=0.0,
                name="rnn_seq2seq"):
    """Builds an RNN encoder–decoder with additive attention (Bahdanau et al., 2015).

    h = Encoder(E(source)): a GRU or LSTM over the source embeddings (padding
    skipped); its final state starts the decoder. s_t = Decoder(E(y_<t)): an
    RNN of the same kind over the target embeddings. a_t = Attention(s_t, h):
    additive scores v·tanh(W_q s_t + W_k h_j) over the real source tokens,
    context c_t = Σ_j a_tj h_j; the output tanh(W_c [c_t; s_t]) is projected
    to the target vocabulary. This is the TensorFlow NMT tutorial's
    arrangement (attention after the decoder step, Luong et al., 2015, with
    Bahdanau's additive score), which keeps each decoding step one RNN cell call.

    Args:
        source_vocab: source token ids (0 = padding).
        target_vocab: target token ids (0 = padding).
        embedding_dim: embedding size on both sides.
        units: RNN state size and attention size.
        cell: "gru" or "lstm".
        dropout: dropout on the embeddings and the attention output.
        name: model name.

    Returns:
        A `keras.Model` from `[source_ids, target_ids]` (as `transformer_seq2seq`)
        to `(batch, target_seq, target_vocab)` float32 logits.

    Example:

    >>> model = rnn_seq2seq(100, 120, embedding_dim=8, units=16)
    >>> tuple(model([keras.ops.ones((2, 7), "int32"), keras.ops.ones((2, 5), "int32")]).shape)
    (2, 5, 120)
    """
    _check_positive(source_vocab=source_vocab, target_vocab=target_vocab, embedding_dim=embedding_dim,
                    units=units)
    if cell not in CELLS:
        raise ValueError(f"`cell` must be one of {sorted(CELLS)}; received cell={cell!r}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be in [0, 1); received dropout={dropout!r}.")
    rnn = CELLS[cell]
    source_ids = keras.Input(shape=(None,), dtype="int32", name="source_ids")
    target_ids = keras.Input(shape=(None,), dtype="int32", name="target_ids")
    source_mask = ops.not_equal(source_ids, 0)

    x = keras.layers.Embedding(source_vocab, embedding_dim, name="source_embedding")(source_ids)
    x = keras.layers.Dropout(dropout, name="source_dropout")(x)
    encoded, *state = rnn(units, return_sequences=True, return_state=True, name="encoder")(
        x, mask=source_mask)
    keys = keras.layers.Dense(units, use_bias=False, name="attention_keys")(encoded)

    y = keras.layers.Embedding(target_vocab, embedding_dim, name="target_embedding")(target_ids)
    y = keras.layers.Dropout(dropout, name="target_dropout")(y)
    decoded = rnn(units, return_sequences=True, name="decoder")(y, initial_state=state)
    queries = keras.layers.Dense(units, use_bias=False, name="attention_queries")(decoded)
    context = keras.layers.AdditiveAttention(name="attention")(
        [queries, encoded, keys], mask=[None, source_mask])
    y = keras.layers.Concatenate(name="attention_concat")([context, decoded])
    y = keras.layers.Dense(units, activation="tanh", name="attention_output")(y)
    y = keras.layers.Dropout(dropout, name="output_dropout")(y)
    logits = keras.layers.Dense(target_vocab, dtype="float32", name="logits")(y)
    return keras.Model([source_ids, target_ids], logits, name=name)


def _check_positive(**values):
    for arg, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"`{arg}` must be a positive integer; received {arg}={value!r}.")
