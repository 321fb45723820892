"""Position information added to token embeddings: fixed sinusoids or learned vectors."""

import keras
import numpy as np
from keras import ops

from kerazoo.layers._validation import check_length, check_rank


def sinusoidal_encoding(max_length, d_model):
    """The table of Vaswani et al. (2017), section 3.5, as a numpy array.

    PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(pos / 10000^(2i/d_model)).

    Args:
        max_length: number of positions (rows).
        d_model: encoding size (columns); may be odd.

    Returns:
        float32 array of shape `(max_length, d_model)`.
    """
    positions = np.arange(max_length, dtype=np.float64)[:, None]
    pair_index = np.arange(d_model) // 2  # i in the formula, for columns 2i and 2i+1
    angles = positions / np.power(10000.0, 2 * pair_index / d_model)
    table = np.where(np.arange(d_model) % 2 == 0, np.sin(angles), np.cos(angles))
    return table.astype("float32")


class _AddedPositions(keras.layers.Layer):
    """Base for layers that add a `(max_length, d_model)` table to their input."""

    def __init__(self, max_length, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(max_length, int) or max_length < 1:
            raise ValueError(
                f"`max_length` must be a positive integer; received max_length={max_length!r}.")
        self.max_length = max_length
        self.supports_masking = True

    def build(self, input_shape):
        check_rank(self, input_shape, 3, "(batch, seq, d_model)")
        check_length(self, input_shape[1], self.max_length)
        if input_shape[-1] is None:
            raise ValueError(f"{self.name}: the last dimension (d_model) of the input must be known.")

    def _table(self):
        raise NotImplementedError

    def call(self, inputs, start_index=0):
        """Adds positions `start_index ... start_index + seq - 1` to `inputs`.

        `start_index` (int or scalar tensor) serves cached decoding, where the
        input is the next token at a known position.
        """
        seq_len = inputs.shape[1]
        check_length(self, seq_len, self.max_length)
        if seq_len is None:
            seq_len = ops.shape(inputs)[1]
        table = self._table()
        positions = ops.slice(table, (start_index, 0), (seq_len, ops.shape(table)[1]))
        return inputs + ops.cast(positions, inputs.dtype)[None]

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(max_length=self.max_length)
        return config


@keras.saving.register_keras_serializable(package="kerazoo")
class PositionalEncoding(_AddedPositions):
    """Adds the fixed sinusoidal positional encoding of Vaswani et al. (2017).

    The encoding has no weights; it works for any sequence length up to
    `max_length`.

    Args:
        max_length: the longest sequence the layer accepts.
        **kwargs: base `Layer` arguments.

    Call arguments:
        inputs: `(batch, seq, d_model)` embeddings, `seq <= max_length`.
        start_index: position of the first input step (default 0).

    Returns:
        `inputs + PE[start_index : start_index + seq]`, same shape and dtype.

    Example:

    >>> layer = PositionalEncoding(max_length=64)
    >>> tuple(layer(keras.ops.zeros((1, 10, 16))).shape)
    (1, 10, 16)
    """

    def build(self, input_shape):
        super().build(input_shape)
        self._encoding = sinusoidal_encoding(self.max_length, input_shape[-1])

    def _table(self):
        return ops.convert_to_tensor(self._encoding)


@keras.saving.register_keras_serializable(package="kerazoo")
class PositionEmbedding(_AddedPositions):
    """Adds a learned embedding of each position (as in GPT-2 and BERT).

    Args:
        max_length: the longest sequence the layer accepts (rows of the table).
        initializer: initializer of the `(max_length, d_model)` table.
        **kwargs: base `Layer` arguments.

    Call arguments:
        inputs: `(batch, seq, d_model)` embeddings, `seq <= max_length`.
        start_index: position of the first input step (default 0).

    Returns:
        `inputs + embeddings[start_index : start_index + seq]`.

    Example:

    >>> layer = PositionEmbedding(max_length=64)
    >>> tuple(layer(keras.ops.zeros((1, 10, 16))).shape)
    (1, 10, 16)
    """

    def __init__(self, max_length, initializer="glorot_uniform", **kwargs):
        super().__init__(max_length, **kwargs)
        self.initializer = keras.initializers.get(initializer)

    def build(self, input_shape):
        super().build(input_shape)
        self.embeddings = self.add_weight(
            name="embeddings", shape=(self.max_length, input_shape[-1]),
            initializer=self.initializer)

    def _table(self):
        return self.embeddings

    def get_config(self):
        config = super().get_config()
        config.update(initializer=keras.initializers.serialize(self.initializer))
        return config
