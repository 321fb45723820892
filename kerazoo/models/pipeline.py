"""Raw strings in: a preprocessor layer in front of a model that takes token ids."""

import keras


def with_preprocessor(model, preprocessor, name=None):
    """Wraps `model` so that it takes a batch of strings.

    Train the id model (strings cannot enter XLA-compiled steps); use the
    wrapped one to predict on text, to save a single `.keras` file, or to export.

    Args:
        model: a `keras.Model` whose input is token ids.
        preprocessor: a layer mapping a `(batch,)` string tensor to those ids,
            e.g. an adapted `kerazoo.text.word_vectorizer`.
        name: name of the new model (default: `<model.name>_text`).

    Returns:
        A functional `keras.Model` from `(batch,)` strings to `model`'s outputs. Pass
        strings as a `tf.Tensor` or `tf.data.Dataset` (Keras cannot convert numpy string arrays).

    Example:

    >>> text_model = with_preprocessor(model, vectorizer)  # doctest: +SKIP
    >>> text_model.predict(tf.constant(["a fine film"]))    # doctest: +SKIP
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model; received {type(model).__name__}.")
    text = keras.Input(shape=(), dtype="string", name="text")
    return keras.Model(text, model(preprocessor(text)), name=name or f"{model.name}_text")
