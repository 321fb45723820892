"""The Transformer block: self-attention and a feed-forward network, each with a residual and layer norm."""

import keras
from keras import ops

from kerazoo.layers._validation import check_rank
from kerazoo.layers.adapter import BottleneckAdapter
from kerazoo.layers.attention import MultiHeadCrossAttention, MultiHeadSelfAttention
from kerazoo.layers.dropout import FastDropout


@keras.saving.register_keras_serializable(package="kerazoo")
class TransformerBlock(keras.layers.Layer):
    """One Transformer layer: self-attention then a position-wise feed-forward net.

    With `norm_first=True` (pre-norm, GPT-2 and most modern LMs) each sub-layer
    computes `x + f(LayerNorm(x))`, which trains stably without warm-up
    tricks; with `norm_first=False` (post-norm, the original Transformer and
    BERT) it computes `LayerNorm(x + f(x))`.

    Args:
        num_heads: attention heads; must divide `d_model` (the input width).
        ff_dim: hidden width of the feed-forward network.
        dropout: rate for attention probabilities and both residual branches.
        causal: if True, position `t` attends only to positions `<= t`.
        norm_first: pre-norm (True) or post-norm (False).
        activation: feed-forward activation (any Keras activation name).
        layer_norm_epsilon: epsilon of both layer norms.
        kernel_initializer: initializer of every kernel in the block.
        adapter_dim: if set, a `BottleneckAdapter` of this width follows the
            attention and the feed-forward output (inside each residual
            branch, Houlsby et al.); `add_adapters` adds them to a built block.
        **kwargs: base `Layer` arguments.

    Call arguments:
        inputs: `(batch, seq, d_model)` tensor.
        padding_mask: optional `(batch, seq)` mask, True for real tokens; a
            Keras mask on `inputs` is used when it is omitted.
        training: whether dropout is active.
        cache, cache_index: key/value cache for incremental decoding, see
            `MultiHeadSelfAttention` (`block.attention.empty_cache(...)`).
        query_positions: optional `(batch, queries)` int tensor: the outputs
            at these positions only (keys and values still come from every
            position). Equal to gathering them from the full output, for
            less work: BERT's pretrainer runs its last block this way on
            the masked positions.

    Returns:
        `(batch, seq, d_model)` tensor (`(batch, queries, d_model)` with
        `query_positions`), and the updated cache when one is given.

    Example:

    >>> block = TransformerBlock(num_heads=2, ff_dim=64, causal=True)
    >>> tuple(block(keras.random.normal((2, 10, 32))).shape)
    (2, 10, 32)
    """

    def __init__(self, num_heads, ff_dim, dropout=0.0, causal=False, norm_first=True,
                 activation="gelu", layer_norm_epsilon=1e-5,
                 kernel_initializer="glorot_uniform", adapter_dim=None, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(ff_dim, int) or ff_dim < 1:
            raise ValueError(f"`ff_dim` must be a positive integer; received ff_dim={ff_dim!r}.")
        self.num_heads = num_heads
        self.ff_dim = ff_dim
        self.dropout = dropout
        self.causal = causal
        self.norm_first = norm_first
        self.activation = keras.activations.get(activation)
        self.layer_norm_epsilon = layer_norm_epsilon
        self.kernel_initializer = keras.initializers.get(kernel_initializer)
        self.adapter_dim = adapter_dim
        self.supports_masking = True
        # Sub-layers are created here so that argument errors (num_heads,
        # dropout) surface at construction; weights are still made in build().
        self.attention = MultiHeadSelfAttention(
            num_heads, dropout=dropout, causal=causal, kernel_initializer=self.kernel_initializer,
            dtype=self.dtype_policy, name="attention")

    def build(self, input_shape):
        check_rank(self, input_shape, 3, "(batch, seq, d_model)")
        d_model = input_shape[-1]
        policy = self.dtype_policy
        self.attention.build(input_shape)
        self.attention_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=policy, name="attention_norm")
        self.attention_norm.build(input_shape)
        self.ff_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=policy, name="ff_norm")
        self.ff_norm.build(input_shape)
        self.ff_inner = keras.layers.Dense(
            self.ff_dim, activation=self.activation, kernel_initializer=self.kernel_initializer,
            dtype=policy, name="ff_inner")
        self.ff_inner.build(input_shape)
        self.ff_output = keras.layers.Dense(
            d_model, kernel_initializer=self.kernel_initializer, dtype=policy, name="ff_output")
        self.ff_output.build(tuple(input_shape[:-1]) + (self.ff_dim,))
        self.dropout_layer = FastDropout(self.dropout, dtype=policy)
        if self.adapter_dim:
            self._build_adapters()

    def add_adapters(self, adapter_dim):
        """Adds bottleneck adapters after the attention and the feed-forward output of a built block.

        They start as the identity, so the block's outputs do not change.

        Args:
            adapter_dim: bottleneck width.
        """
        if self.adapter_dim:
            raise ValueError(f"{self.name} already has adapters (adapter_dim={self.adapter_dim}).")
        if not self.built:
            raise ValueError(f"{self.name}: build the block before adding adapters, or pass adapter_dim.")
        self.adapter_dim = adapter_dim
        self._tracker.unlock()
        self._build_adapters()
        self._tracker.lock()

    def _build_adapters(self):
        d_model = self.attention_norm.gamma.shape[0]
        with self._open_name_scope():  # weight paths "block_0/attention_adapter/...", also when added later
            for name in ("attention_adapter", "ff_adapter"):
                adapter = BottleneckAdapter(self.adapter_dim, dtype=self.dtype_policy, name=name)
                adapter.build((None, None, d_model))
                setattr(self, name, adapter)

    def _adapted(self, adapter_name, x):
        return getattr(self, adapter_name)(x) if self.adapter_dim else x

    def call(self, inputs, padding_mask=None, training=None, mask=None, cache=None, cache_index=None,
             query_positions=None):
        if padding_mask is None:
            padding_mask = mask
        new_cache = []

        def attend(x):
            out = self.attention(x, padding_mask=padding_mask, training=training, cache=cache,
                                 cache_index=cache_index, query_positions=query_positions)
            if cache is not None:
                out, updated = out
                new_cache.append(updated)
            return self.dropout_layer(self._adapted("attention_adapter", out), training=training)

        residual = inputs
        if query_positions is not None:  # the attention gathers its queries; the residual follows
            self.attention._check_query_positions(query_positions, cache)
            residual = ops.take_along_axis(inputs, ops.cast(query_positions, "int32")[:, :, None], axis=1)
        x = self._residual(inputs, attend, self.attention_norm, residual)
        x = self._residual(x, lambda h: self._feed_forward(h, training), self.ff_norm)
        return (x, new_cache[0]) if cache is not None else x

    def _residual(self, x, sublayer, norm, residual=None):
        """`x + sublayer(norm(x))` (pre-norm) or `norm(x + sublayer(x))` (post-norm).

        `residual` replaces the `x` added back, when the sublayer's outputs
        are at fewer positions than its inputs (`query_positions`).
        """
        residual = x if residual is None else residual
        if self.norm_first:
            return residual + sublayer(norm(x))
        return norm(residual + sublayer(x))

    def _feed_forward(self, x, training):
        return self.dropout_layer(self._adapted("ff_adapter", self.ff_output(self.ff_inner(x))), training=training)

    def compute_output_shape(self, inputs_shape, query_positions_shape=None):
        if query_positions_shape is None:
            return inputs_shape
        return (*query_positions_shape, inputs_shape[-1])

    def compute_mask(self, inputs, mask=None):
        return mask

    def get_config(self):
        config = super().get_config()
        config.update(
            num_heads=self.num_heads,
            ff_dim=self.ff_dim,
            dropout=self.dropout,
            causal=self.causal,
            norm_first=self.norm_first,
            activation=keras.activations.serialize(self.activation),
            layer_norm_epsilon=self.layer_norm_epsilon,
            kernel_initializer=keras.initializers.serialize(self.kernel_initializer),
            adapter_dim=self.adapter_dim,
        )
        return config


@keras.saving.register_keras_serializable(package="kerazoo")
class TransformerDecoderBlock(TransformerBlock):
    """A Transformer decoder layer: causal self-attention, cross-attention, feed-forward.

    The decoder half of the encoder–decoder Transformer (Vaswani et al.,
    2017): each target position attends to earlier target positions, then to
    the whole (padding-masked) encoder output, then goes through the
    feed-forward net; every sub-layer has a residual and a layer norm (pre-
    or post-norm, as `TransformerBlock`). For decoding, the self-attention
    keeps a key/value cache and the encoder's keys/values are projected once
    per sequence (`cross_attention.key_value(context)`).

    Args:
        num_heads: heads of both attentions; must divide `d_model`.
        ff_dim: hidden width of the feed-forward network.
        dropout: rate for attention probabilities and the residual branches.
        norm_first: pre-norm (True) or post-norm (False).
        activation: feed-forward activation.
        layer_norm_epsilon: epsilon of the layer norms.
        kernel_initializer: initializer of every kernel in the block.
        adapter_dim: bottleneck adapters, as `TransformerBlock` (after self-attention and feed-forward).
        **kwargs: base `Layer` arguments.

    Call arguments:
        inputs: `(batch, target_seq, d_model)` target-side hidden states.
        context: `(batch, source_seq, d_context)` encoder outputs.
        context_mask: optional `(batch, source_seq)` mask, True for real
            source tokens; a Keras mask on `context` is used when omitted.
        training: whether dropout is active.
        cache, cache_index: self-attention key/value cache for incremental
            decoding (`block.attention.empty_cache(...)`).
        context_key_value: `block.cross_attention.key_value(context)`,
            instead of `context`.

    Returns:
        `(batch, target_seq, d_model)` tensor, and the updated cache when one is given.

    Example:

    >>> block = TransformerDecoderBlock(num_heads=2, ff_dim=64)
    >>> tuple(block(keras.random.normal((2, 6, 32)), keras.random.normal((2, 9, 32))).shape)
    (2, 6, 32)
    """

    def __init__(self, num_heads, ff_dim, dropout=0.0, norm_first=True, activation="gelu",
                 layer_norm_epsilon=1e-5, kernel_initializer="glorot_uniform", adapter_dim=None, **kwargs):
        super().__init__(num_heads, ff_dim, dropout=dropout, causal=True, norm_first=norm_first,
                         activation=activation, layer_norm_epsilon=layer_norm_epsilon,
                         kernel_initializer=kernel_initializer, adapter_dim=adapter_dim, **kwargs)
        self.cross_attention = MultiHeadCrossAttention(
            num_heads, dropout=dropout, kernel_initializer=self.kernel_initializer,
            dtype=self.dtype_policy, name="cross_attention")

    def build(self, inputs_shape, context_shape=None):
        super().build(inputs_shape)
        if context_shape is None:
            raise ValueError(f"{self.name}: build the block by calling it with a `context` tensor.")
        self.cross_attention.build(inputs_shape, context_shape)
        self.cross_attention_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon, dtype=self.dtype_policy, name="cross_attention_norm")
        self.cross_attention_norm.build(inputs_shape)

    def call(self, inputs, context=None, context_mask=None, training=None, cache=None,
             cache_index=None, context_key_value=None):
        new_cache = []

        def attend(x):
            out = self.attention(x, training=training, cache=cache, cache_index=cache_index)
            if cache is not None:
                out, updated = out
                new_cache.append(updated)
            return self.dropout_layer(self._adapted("attention_adapter", out), training=training)

        def attend_context(x):
            out = self.cross_attention(x, context, context_mask=context_mask, training=training,
                                       key_value=context_key_value)
            return self.dropout_layer(out, training=training)

        x = self._residual(inputs, attend, self.attention_norm)
        x = self._residual(x, attend_context, self.cross_attention_norm)
        x = self._residual(x, lambda h: self._feed_forward(h, training), self.ff_norm)
        return (x, new_cache[0]) if cache is not None else x

    def compute_output_shape(self, inputs_shape, context_shape=None):
        return inputs_shape

    def get_config(self):
        config = super().get_config()
        del config["causal"]
        return config
