"""Token embedding plus position information: the input stage of every Transformer here."""

import keras
from keras import ops

from kerazoo.layers._validation import check_length, check_rank
from kerazoo.layers.position import PositionalEncoding, PositionEmbedding

_POSITION_LAYERS = {"learned": PositionEmbedding, "sinusoidal": PositionalEncoding}


@keras.saving.register_keras_serializable(package="kerazoo")
class TokenAndPositionEmbedding(keras.layers.Layer):
    """Embeds token ids and adds learned or sinusoidal position information.

    Args:
        vocab_size: number of token ids.
        max_length: the longest sequence accepted.
        embedding_dim: size of each embedding vector (the model's `d_model`).
        positions: `"learned"` (`PositionEmbedding`) or `"sinusoidal"`
            (`PositionalEncoding`).
        mask_zero: if True, id 0 is padding and the layer emits a Keras mask
            that downstream kerazoo layers honour.
        embeddings_initializer: initializer of the token table.
        **kwargs: base `Layer` arguments.

    Call arguments:
        inputs: `(batch, seq)` integer token ids.
        start_index: position of the first input step (for cached decoding).
        reverse: if True, `inputs` are `(batch, seq, embedding_dim)` hidden
            states and the layer returns their dot products with every token
            embedding, `(batch, seq, vocab_size)` logits: the output layer of a
            model with tied input and output embeddings.

    Returns:
        `(batch, seq, embedding_dim)` embeddings (or logits with `reverse=True`).

    Example:

    >>> layer = TokenAndPositionEmbedding(vocab_size=100, max_length=16, embedding_dim=8)
    >>> tuple(layer(keras.ops.ones((2, 5), dtype="int32")).shape)
    (2, 5, 8)
    """

    def __init__(self, vocab_size, max_length, embedding_dim, positions="learned",
                 mask_zero=False, embeddings_initializer="uniform", **kwargs):
        super().__init__(**kwargs)
        for arg, value in (("vocab_size", vocab_size), ("max_length", max_length),
                           ("embedding_dim", embedding_dim)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"`{arg}` must be a positive integer; received {arg}={value!r}.")
        if positions not in _POSITION_LAYERS:
            raise ValueError(
                f"`positions` must be one of {sorted(_POSITION_LAYERS)}; received positions={positions!r}.")
        self.vocab_size = vocab_size
        self.max_length = max_length
        self.embedding_dim = embedding_dim
        self.positions = positions
        self.mask_zero = mask_zero
        self.embeddings_initializer = keras.initializers.get(embeddings_initializer)
        self.token_embedding = keras.layers.Embedding(
            vocab_size, embedding_dim, embeddings_initializer=self.embeddings_initializer,
            mask_zero=mask_zero, dtype=self.dtype_policy, name="token_embedding")
        self.position_layer = _POSITION_LAYERS[positions](
            max_length, dtype=self.dtype_policy, name="position")

    def build(self, input_shape):
        check_rank(self, input_shape, 2, "(batch, seq) of token ids")
        check_length(self, input_shape[1], self.max_length)
        self.token_embedding.build(input_shape)
        self.position_layer.build(tuple(input_shape) + (self.embedding_dim,))

    def call(self, inputs, start_index=0, reverse=False):
        if reverse:
            # Tied output projection: hidden states -> logits over the vocabulary.
            table = ops.cast(self.token_embedding.embeddings, inputs.dtype)
            return ops.matmul(inputs, ops.transpose(table))
        return self.position_layer(self.token_embedding(inputs), start_index=start_index)

    def compute_mask(self, inputs, mask=None):
        if len(inputs.shape) == 3:  # reverse=True: hidden states in, the mask passes through
            return mask
        return self.token_embedding.compute_mask(inputs, mask)

    def get_config(self):
        config = super().get_config()
        config.update(
            vocab_size=self.vocab_size,
            max_length=self.max_length,
            embedding_dim=self.embedding_dim,
            positions=self.positions,
            mask_zero=self.mask_zero,
            embeddings_initializer=keras.initializers.serialize(self.embeddings_initializer),
        )
        return config
