"""Multi-head self-attention with one fused QKV projection."""

import keras
from keras import ops

from kerazoo.layers._validation import check_rank
from kerazoo.layers.dropout import FastDropout


@keras.saving.register_keras_serializable(package="kerazoo")
class MultiHeadSelfAttention(keras.layers.Layer):
    """Multi-head scaled dot-product self-attention (Vaswani et al., 2017).

    Queries, keys and values come from one `Dense(3 * num_heads * key_dim)`
    projection, so the layer runs one large matmul instead of three small ones.
    Scores are computed in the layer's compute dtype, and the masked softmax in
    float32 (a float16 softmax overflows, keras#17571).

    Args:
        num_heads: number of attention heads.
        key_dim: size of each head. Defaults to `d_model // num_heads`, in
            which case `d_model` must be divisible by `num_heads`.
        dropout: dropout rate on the attention probabilities.
        causal: if True, position `t` attends only to positions `<= t`.
        use_bias: whether the projections have biases.
        kernel_initializer: initializer of both projection kernels.
        **kwargs: base `Layer` arguments (`name`, `dtype`, ...).

    Call arguments:
        inputs: `(batch, seq, d_model)` tensor.
        padding_mask: optional `(batch, seq)` bool or 0/1 tensor, True (1) for
            real tokens. Padded positions are never attended to. When omitted,
            a Keras mask (e.g. from `Embedding(mask_zero=True)`) is used.
        training: whether dropout is active.
        return_attention_scores: also return the attention probabilities.
        cache: for incremental decoding (causal only), the `(keys, values)`
            cache from `empty_cache()` or a previous call; the keys and values
            of `inputs` are written into it at `cache_index`.
        cache_index: position of the first step of `inputs` (int or scalar tensor).
        query_positions: optional `(batch, queries)` int tensor: compute the
            outputs at these positions only (each still attends to every
            key), e.g. the masked positions of BERT's last layer.

    Returns:
        `(batch, seq, d_model)` tensor (`(batch, queries, d_model)` with
        `query_positions`); with `return_attention_scores=True` also the
        `(batch, num_heads, seq, seq)` attention probabilities; with a
        `cache`, also the updated cache.

    Example:

    >>> layer = MultiHeadSelfAttention(num_heads=4, causal=True)
    >>> tuple(layer(keras.random.normal((2, 10, 32))).shape)
    (2, 10, 32)
    """

    def __init__(self, num_heads, key_dim=None, dropout=0.0, causal=False,
                 use_bias=True, kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(**kwargs)
        if not isinstance(num_heads, int) or num_heads < 1:
            raise ValueError(
                f"`num_heads` must be a positive integer; received num_heads={num_heads!r}.")
        if key_dim is not None and (not isinstance(key_dim, int) or key_dim < 1):
            raise ValueError(
                f"`key_dim` must be a positive integer or None; received key_dim={key_dim!r}.")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"`dropout` must be in [0, 1); received dropout={dropout!r}.")
        self.num_heads = num_heads
        self.key_dim = key_dim
        self.dropout = dropout
        self.causal = causal
        self.use_bias = use_bias
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.supports_masking = True

    def build(self, input_shape):
        d_model = self._set_head_dim(input_shape)
        inner_dim = self.num_heads * self._head_dim
        dense_args = dict(use_bias=self.use_bias, kernel_initializer=self.kernel_initializer,
                          dtype=self.dtype_policy)
        self.qkv_dense = keras.layers.Dense(3 * inner_dim, name="qkv", **dense_args)
        self.qkv_dense.build(input_shape)
        self.output_dense = keras.layers.Dense(d_model, name="output", **dense_args)
        self.output_dense.build(tuple(input_shape[:-1]) + (inner_dim,))
        self.dropout_layer = FastDropout(self.dropout, dtype=self.dtype_policy)

    def call(self, inputs, padding_mask=None, training=None,
             return_attention_scores=False, mask=None, cache=None, cache_index=None,
             query_positions=None):
        if padding_mask is None:
            padding_mask = mask
        batch, seq = ops.shape(inputs)[0], ops.shape(inputs)[1]
        qkv = self.qkv_dense(inputs)
        qkv = ops.reshape(qkv, (batch, seq, 3, self.num_heads, self._head_dim))
        # One transpose for all three: (3, batch, heads, seq, head_dim).
        query, key, value = ops.unstack(ops.transpose(qkv, (2, 0, 3, 1, 4)), 3, axis=0)
        if query_positions is not None:
            self._check_query_positions(query_positions, cache)
            query_positions = ops.cast(query_positions, "int32")
            query = ops.take_along_axis(query, query_positions[:, None, :, None], axis=2)
        if cache is not None:
            self._check_cache_call(cache_index, return_attention_scores, padding_mask)
            # Write this step's keys and values at cache_index; attend over the whole cache.
            cache = tuple(_write_cache(part, new, cache_index) for part, new in zip(cache, (key, value)))
            key, value = cache
        outputs, probs = self._attend(query, key, value, padding_mask, training, query_offset=cache_index,
                                      query_positions=query_positions)
        if cache is not None:
            return outputs, cache
        if return_attention_scores:
            return outputs, probs
        return outputs

    def _set_head_dim(self, input_shape):
        """Checks the `(batch, seq, d_model)` input shape, sets the head size; returns d_model."""
        check_rank(self, input_shape, 3, "(batch, seq, d_model)")
        d_model = input_shape[-1]
        if d_model is None:
            raise ValueError(f"{self.name}: the last dimension (d_model) of the input must be known.")
        if self.key_dim is None and d_model % self.num_heads:
            raise ValueError(
                f"{self.name}: d_model={d_model} is not divisible by num_heads={self.num_heads}; "
                "choose num_heads that divides d_model or set key_dim explicitly.")
        self._head_dim = self.key_dim or d_model // self.num_heads
        return d_model

    def _attend(self, query, key, value, padding_mask, training, query_offset=None, query_positions=None):
        """The attention core shared with `MultiHeadCrossAttention`.

        Args:
            query: `(batch, heads, queries, head_dim)`.
            key, value: `(batch, heads, keys, head_dim)`.
            padding_mask: `(batch, keys)` or None.
            training: whether dropout is active.
            query_offset: position of the first query (cached decoding).
            query_positions: `(batch, queries)` positions of the queries, or None.

        Returns:
            `(outputs (batch, queries, d_model), probabilities (batch, heads, queries, keys))`.
        """
        # Scaling the queries costs seq*head_dim multiplies; scaling the
        # scores would cost seq*seq.
        query = query * ops.cast(self._head_dim ** -0.5, query.dtype)
        if query.shape[2] == 1:
            # One query (a decoding step): keys times the query vector, so
            # that XLA does not transpose (copy) the whole key cache per step.
            scores = ops.swapaxes(ops.matmul(key, ops.swapaxes(query, 2, 3)), 2, 3)
        else:
            scores = ops.einsum("bhqd,bhkd->bhqk", query, key)
        probs = self._masked_softmax(scores, padding_mask, query_offset=query_offset,
                                     query_positions=query_positions)
        probs = self.dropout_layer(probs, training=training)
        context = ops.einsum("bhqk,bhkd->bhqd", probs, value)
        batch, seq = ops.shape(context)[0], ops.shape(context)[2]
        context = ops.reshape(ops.transpose(context, (0, 2, 1, 3)),
                              (batch, seq, self.num_heads * self._head_dim))
        return self.output_dense(context), probs

    def empty_cache(self, batch_size, max_length, dtype=None):
        """A zero key/value cache for `call(..., cache=, cache_index=)`.

        Args:
            batch_size: sequences decoded together.
            max_length: positions the cache holds.
            dtype: cache dtype (default: the layer's compute dtype).

        Returns:
            `(keys, values)`: two `(batch_size, num_heads, max_length, head_dim)`
            zero tensors. Two tensors, not one stacked: attention reads each
            whole, where slicing keys and values out of one stacked tensor
            made XLA copy both (the whole cache) at every decoding step.
        """
        shape = (batch_size, self.num_heads, max_length, self._head_dim)
        return tuple(ops.zeros(shape, dtype=dtype or self.compute_dtype) for _ in ("keys", "values"))

    def _check_query_positions(self, query_positions, cache):
        if cache is not None:
            raise ValueError(f"{self.name}: `query_positions` and `cache` cannot be combined.")
        if len(query_positions.shape) != 2:
            raise ValueError(f"{self.name}: `query_positions` must have shape (batch, queries); "
                             f"received shape {tuple(query_positions.shape)}.")

    def _check_cache_call(self, cache_index, return_attention_scores, padding_mask):
        if not self.causal:
            raise ValueError(f"{self.name}: a key/value cache is only meaningful for causal "
                             "attention (causal=True).")
        if cache_index is None:
            raise ValueError(f"{self.name}: `cache_index` (position of the first input step) "
                             "is required with `cache`.")
        if return_attention_scores:
            raise ValueError(f"{self.name}: return_attention_scores is not supported with a cache.")
        if padding_mask is not None:
            raise ValueError(f"{self.name}: padding masks are not supported with a cache; decode each "
                             "sequence from its own positions (see kerazoo.generation).")

    def _masked_softmax(self, scores, padding_mask, query_offset=None, query_positions=None):
        """Softmax over keys, masked keys set to -1e9; float16 scores go through float32.

        Query i sits at position `query_positions[:, i]` when given, else at
        `query_offset + i` (0 without a cache); key j at j.
        """
        if scores.dtype == "float16":
            scores = ops.cast(scores, "float32")
        allowed = None
        if self.causal:
            key_positions = ops.arange(ops.shape(scores)[-1])
            if query_positions is not None:  # (batch, 1, queries, keys)
                allowed = query_positions[:, None, :, None] >= key_positions
            else:
                positions = ops.arange(ops.shape(scores)[-2])
                if query_offset is not None:
                    positions = positions + query_offset
                allowed = ops.expand_dims(positions, 1) >= ops.expand_dims(key_positions, 0)
        if padding_mask is not None:
            if len(padding_mask.shape) != 2:
                raise ValueError(
                    f"{self.name}: `padding_mask` must have shape (batch, seq); "
                    f"received shape {tuple(padding_mask.shape)}.")
            keys = ops.cast(padding_mask, "bool")[:, None, None, :]
            allowed = keys if allowed is None else ops.logical_and(allowed, keys)
        if allowed is not None:
            scores = ops.where(allowed, scores, ops.cast(-1e9, scores.dtype))
        return ops.cast(ops.softmax(scores, axis=-1), self.compute_dtype)

    def compute_mask(self, inputs, mask=None):
        return mask

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            key_dim=self.key_dim,
            dropout=self.dropout,
            causal=self.causal,
            use_bias=self.use_bias,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
        )
        return config


@keras.saving.register_keras_serializable(package="kerazoo")
class MultiHeadCrossAttention(MultiHeadSelfAttention):
    """Multi-head attention of one sequence over another (encoder–decoder attention).

    Queries come from `inputs` through one `Dense(num_heads * key_dim)`; keys
    and values from `context` through one fused `Dense(2 * num_heads *
    key_dim)`. Scaling, the masked float32 softmax, dropout and the output
    projection are `MultiHeadSelfAttention`'s own code. For decoding,
    `key_value(context)` projects the context once per sequence; pass the
    result as `key_value=` at every step instead of `context`.

    Args:
        num_heads: number of attention heads.
        key_dim: size of each head (default: `d_model // num_heads`, where
            `d_model` is the width of `inputs`).
        dropout: dropout rate on the attention probabilities.
        use_bias: whether the projections have biases.
        kernel_initializer: initializer of the projection kernels.
        **kwargs: base `Layer` arguments.

    Call arguments:
        inputs: `(batch, queries, d_model)` tensor.
        context: `(batch, keys, d_context)` tensor (e.g. encoder outputs).
        context_mask: optional `(batch, keys)` bool or 0/1 tensor, True for
            real context tokens; a Keras mask on `context` is used when omitted.
        training: whether dropout is active.
        return_attention_scores: also return the attention probabilities.
        key_value: the result of `key_value(context)`, instead of `context`.

    Returns:
        `(batch, queries, d_model)` tensor; with `return_attention_scores=True`
        also the `(batch, num_heads, queries, keys)` probabilities.

    Example:

    >>> layer = MultiHeadCrossAttention(num_heads=4)
    >>> tuple(layer(keras.random.normal((2, 5, 32)), keras.random.normal((2, 9, 16))).shape)
    (2, 5, 32)
    """

    def __init__(self, num_heads, key_dim=None, dropout=0.0, use_bias=True,
                 kernel_initializer="glorot_uniform", **kwargs):
        super().__init__(num_heads, key_dim=key_dim, dropout=dropout, causal=False, use_bias=use_bias,
                         kernel_initializer=kernel_initializer, **kwargs)

    def build(self, inputs_shape, context_shape=None):
        if context_shape is None:
            raise ValueError(f"{self.name}: build the layer by calling it with a `context` tensor.")
        d_model = self._set_head_dim(inputs_shape)
        check_rank(self, context_shape, 3, "(batch, keys, d_context) for the context")
        inner_dim = self.num_heads * self._head_dim
        dense_args = dict(use_bias=self.use_bias, kernel_initializer=self.kernel_initializer,
                          dtype=self.dtype_policy)
        self.query_dense = keras.layers.Dense(inner_dim, name="query", **dense_args)
        self.query_dense.build(inputs_shape)
        self.key_value_dense = keras.layers.Dense(2 * inner_dim, name="key_value", **dense_args)
        self.key_value_dense.build(context_shape)
        self.output_dense = keras.layers.Dense(d_model, name="output", **dense_args)
        self.output_dense.build(tuple(inputs_shape[:-1]) + (inner_dim,))
        self.dropout_layer = FastDropout(self.dropout, dtype=self.dtype_policy)

    def call(self, inputs, context=None, context_mask=None, training=None,
             return_attention_scores=False, key_value=None):
        if key_value is None:
            if context is None:
                raise ValueError(f"{self.name}: pass `context` (or its precomputed `key_value`).")
            key_value = self.key_value(context)
        batch, seq = ops.shape(inputs)[0], ops.shape(inputs)[1]
        query = ops.reshape(self.query_dense(inputs), (batch, seq, self.num_heads, self._head_dim))
        query = ops.transpose(query, (0, 2, 1, 3))
        outputs, probs = self._attend(query, key_value[:, 0], key_value[:, 1], context_mask, training)
        if return_attention_scores:
            return outputs, probs
        return outputs

    def key_value(self, context):
        """Projects the context to keys and values, once per sequence.

        Args:
            context: `(batch, keys, d_context)` tensor.

        Returns:
            `(batch, 2, num_heads, keys, head_dim)`: keys, then values.
        """
        batch, keys = ops.shape(context)[0], ops.shape(context)[1]
        kv = ops.reshape(self.key_value_dense(context), (batch, keys, 2, self.num_heads, self._head_dim))
        return ops.transpose(kv, (0, 2, 3, 1, 4))

    def empty_cache(self, batch_size, max_length, dtype=None):
        raise ValueError(f"{self.name}: cross-attention has no growing cache; "
                         "project the context once with `key_value(context)`.")

    def get_config(self):
        config = super().get_config()
        del config["causal"]
        return config


def _write_cache(cache, update, index):
    """`cache` with `update` written at positions `index ..` of axis 2, as a scatter.

    Not `ops.slice_update`: on TensorFlow it is the tf2xla op
    `XlaDynamicUpdateSlice`, which a server running without XLA (TF Serving)
    cannot execute. A scatter (`TensorScatterUpdate`) is a core op, and under
    XLA it updates the loop-carried cache in place as fast as the slice
    update (a one-hot blend rewrites the whole cache each step: slower).

    Args:
        cache: keys or values, `(batch, heads, max_length, head_dim)`.
        update: `(batch, heads, seq, head_dim)`.
        index: position of `update[..., 0, :]` (int or scalar tensor).

    Returns:
        The updated cache.
    """
    batch, heads, seq, head_dim = ops.shape(update)
    positions = ops.meshgrid(ops.arange(batch), ops.arange(heads), index + ops.arange(seq), indexing="ij")
    return ops.scatter_update(cache, ops.reshape(ops.stack(positions, axis=-1), (-1, 3)),
                              ops.reshape(ops.cast(update, cache.dtype), (-1, head_dim)))
