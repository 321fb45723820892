"""The documents' text classifier: Embedding → LSTM → Dense."""

import keras


def lstm_classifier(vocab_size=10000, embedding_dim=16, lstm_units=32, max_length=100, num_classes=2,
                    bidirectional=False, dropout=0.0, mask_padding=True, name="lstm_classifier"):
    """Builds `Embedding(vocab_size, embedding_dim) → LSTM(lstm_units) → Dense` on token ids.

    Defaults are the documents' hyper-parameters (vocab 10000, embedding 16,
    LSTM 32, length 100) and give their parameter counts: Embedding 160,000,
    LSTM 6,272, Dense 33. Two classes use one sigmoid unit (train with binary
    cross-entropy); more classes a softmax (sparse categorical cross-entropy).

    With `mask_padding=True` (default) id 0 is treated as padding and the
    LSTM skips it; with the documents' post-padding the LSTM would otherwise
    read up to 100 padding steps after the text and its final state would
    mostly forget it. Masking adds no weights.

    Args:
        vocab_size: number of token ids (padding and OOV included).
        embedding_dim: embedding size.
        lstm_units: LSTM state size (per direction when bidirectional).
        max_length: input length (ids per text).
        num_classes: 2 for a sigmoid output, > 2 for a softmax.
        bidirectional: wrap the LSTM in `Bidirectional`.
        dropout: dropout rate after the embedding and after the LSTM.
        mask_padding: skip id 0 in the LSTM.
        name: model name.

    Returns:
        A `keras.Model` from `(batch, max_length)` int ids to probabilities:
        `(batch, 1)` for two classes, `(batch, num_classes)` otherwise.

    Example:

    >>> model = lstm_classifier()
    >>> model.count_params()
    166305
    """
    for arg, value in (("vocab_size", vocab_size), ("embedding_dim", embedding_dim),
                       ("lstm_units", lstm_units), ("max_length", max_length)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"`{arg}` must be a positive integer; received {arg}={value!r}.")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"`num_classes` must be an integer >= 2; received num_classes={num_classes!r}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be in [0, 1); received dropout={dropout!r}.")
    token_ids = keras.Input(shape=(max_length,), dtype="int32", name="token_ids")
    x = keras.layers.Embedding(vocab_size, embedding_dim, mask_zero=mask_padding,
                               name="embedding")(token_ids)
    if dropout:
        x = keras.layers.Dropout(dropout, name="embedding_dropout")(x)
    lstm = keras.layers.LSTM(lstm_units, name="lstm")
    x = keras.layers.Bidirectional(lstm, name="bidirectional_lstm")(x) if bidirectional else lstm(x)
    if dropout:
        x = keras.layers.Dropout(dropout, name="lstm_dropout")(x)
    binary = num_classes == 2
    # float32 probabilities even under a mixed precision policy.
    probabilities = keras.layers.Dense(1 if binary else num_classes,
                                       activation="sigmoid" if binary else "softmax",
                                       dtype="float32", name="classifier")(x)
    return keras.Model(token_ids, probabilities, name=name)
