"""Word-level vectorizer: Keras `TextVectorization` configured as the documents' Keras tokenizer pipeline."""

import keras

STANDARDIZE_OPTIONS = ("lower_and_strip_punctuation", "lower", "strip_punctuation", None)


def word_vectorizer(vocab_size=10000, max_length=100, standardize="lower_and_strip_punctuation",
                    name="text_vectorizer"):
    """A `TextVectorization` layer mapping strings to `(batch, max_length)` int ids.

    Id 0 is padding and id 1 the out-of-vocabulary token `"[UNK]"`; the other
    `vocab_size - 2` ids are the most frequent words of the texts passed to
    `adapt()`. Sequences are padded and truncated at the end ("post"), as in the
    documents. The layer is plain TensorFlow ops and lookup tables, so it runs in
    `tf.data` pipelines and in exported SavedModels.

    Args:
        vocab_size: number of ids, padding and OOV included.
        max_length: output length.
        standardize: one of `STANDARDIZE_OPTIONS` (None keeps case and punctuation).
        name: layer name.

    Returns:
        An un-adapted `keras.layers.TextVectorization`; call `adapt(texts)` next.

    Example:

    >>> vectorizer = word_vectorizer(vocab_size=20, max_length=4)
    >>> vectorizer.adapt(["not good", "good"])
    >>> vectorizer(["not good at all"]).numpy().tolist()
    [[3, 2, 1, 1]]
    """
    if not isinstance(vocab_size, int) or vocab_size < 3:
        raise ValueError(f"`vocab_size` must be an integer >= 3 (padding, OOV and at least one word); "
                         f"received vocab_size={vocab_size!r}.")
    if not isinstance(max_length, int) or max_length < 1:
        raise ValueError(f"`max_length` must be a positive integer; received max_length={max_length!r}.")
    if standardize not in STANDARDIZE_OPTIONS:
        raise ValueError(f"`standardize` must be one of {STANDARDIZE_OPTIONS}; received {standardize!r}.")
    return keras.layers.TextVectorization(
        max_tokens=vocab_size, standardize=standardize, output_mode="int",
        output_sequence_length=max_length, name=name)
