"""Greedy and beam-search decoding for encoder–decoder models, each one compiled `tf.while_loop`.

The source is encoded once; every decoding step feeds one target token per
sequence. For `models.transformer_seq2seq` the decoder self-attention keeps a
key/value cache and each block's cross-attention keys/values are projected
from the encoder output once; for `models.rnn_seq2seq` the step is one RNN
cell call plus additive attention over the encoder outputs. The search
functions themselves only see a `step` function and a state (a nest of
batch-first tensors), so any decoder can use them.
"""

import weakref

import numpy as np
import tensorflow as tf
from keras import ops

from kerazoo import generation
from kerazoo.layers import TransformerBlock, TransformerDecoderBlock

STRATEGIES = ("greedy", "beam")

_compiled = weakref.WeakKeyDictionary()  # model -> {(strategy, beam_width, length, jit): function}


def translate(model, source_ids, max_new_tokens, start_token, stop_token, strategy="greedy", beam_width=4,
              length_penalty=0.6, jit_compile=True):
    """Decodes target token ids for each source sequence.

    The loop is a `tf.function`, XLA-compiled by default, traced once per
    model, strategy, beam width, batch size and length bucket (sources are
    padded to a multiple of `generation.LENGTH_BUCKET`, capped at the model's
    `max_length`); later calls reuse it.

    Args:
        model: from `models.transformer_seq2seq` or `models.rnn_seq2seq`.
        source_ids: a list of token-id sequences or a `(batch, seq)` int array
            padded with 0 (the models' padding id).
        max_new_tokens: the most target tokens per sequence (>= 1).
        start_token: the id fed first to the decoder.
        stop_token: the id that ends a sequence (it is kept in the output).
        strategy: "greedy" or "beam".
        beam_width: hypotheses kept per sequence (strategy "beam").
        length_penalty: GNMT's alpha (strategy "beam"): hypotheses are ranked
            by log-probability / ((5 + length) / 6) ** alpha; 0 ranks by
            log-probability alone, larger values favour longer outputs.
        jit_compile: compile the loop with XLA.

    Returns:
        int32 numpy array `(batch, max_new_tokens)`: the target tokens after
        the start token, up to and including `stop_token`, then 0.

    Example:

    >>> from kerazoo import models
    >>> model = models.transformer_seq2seq(50, 60, max_length=16, d_model=16, num_heads=2,
    ...                                    num_layers=1, ff_dim=32)
    >>> tuple(translate(model, [[5, 6, 7], [8]], 10, start_token=2, stop_token=3,
    ...                 jit_compile=False).shape)
    (2, 10)
    """
    parts = Seq2SeqDecoder(model)
    if strategy not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES}; received {strategy!r}.")
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise ValueError(f"`max_new_tokens` must be an integer >= 1; received {max_new_tokens!r}.")
    _check_beam(strategy, beam_width, parts.target_vocab)
    source = _source_array(source_ids, parts)
    buffer_length = generation.bucket_length(int(max_new_tokens), parts.max_length)
    if max_new_tokens > buffer_length:
        raise ValueError(f"`max_new_tokens`={max_new_tokens} exceeds the model's max_length={parts.max_length}.")
    key = (strategy, beam_width if strategy == "beam" else 1, buffer_length, bool(jit_compile))
    functions = _compiled.setdefault(model, {})
    if key not in functions:
        functions[key] = tf.function(decode_function(model, strategy, key[1], buffer_length),
                                     jit_compile=bool(jit_compile), autograph=False)
    out = functions[key](tf.constant(source), tf.constant(max_new_tokens, tf.int32),
                         tf.constant(start_token, tf.int32), tf.constant(stop_token, tf.int32),
                         tf.constant(length_penalty, tf.float32))
    return out.numpy()[:, :max_new_tokens]


def decode_function(model, strategy="greedy", beam_width=4, buffer_length=None):
    """The decoding loop of `translate` as a plain (not XLA-marked) function, for exports.

    Args:
        model: a `transformer_seq2seq` or `rnn_seq2seq` model.
        strategy: "greedy" or "beam".
        beam_width: for "beam".
        buffer_length: target positions decoded at most (a Python int; default
            the model's `max_length`, required for RNN models).

    Returns:
        A callable `(source_ids, max_new_tokens, start_token, stop_token,
        length_penalty) -> (batch, buffer_length)` int32 tokens (0 after the
        stop token), all arguments tensors (`source_ids` `(batch, seq)` int32,
        padded with 0).
    """
    parts = Seq2SeqDecoder(model)
    _check_beam(strategy, beam_width, parts.target_vocab)
    buffer_length = buffer_length or parts.max_length
    if buffer_length is None:
        raise ValueError("`buffer_length` is required for models without a max_length (RNN models).")
    if parts.max_length is not None and buffer_length > parts.max_length:
        raise ValueError(f"`buffer_length`={buffer_length} exceeds the model's max_length={parts.max_length}.")

    def decode(source_ids, max_new_tokens, start_token, stop_token, length_penalty):
        pad_id = tf.constant(0)
        state = parts.encode(source_ids, buffer_length)
        batch = tf.shape(source_ids)[0]
        if strategy == "greedy":
            return greedy_search(parts.step, state, batch, buffer_length, max_new_tokens, start_token,
                                 stop_token, pad_id)
        return beam_search(parts.step, state, batch, buffer_length, max_new_tokens, start_token, stop_token,
                           pad_id, beam_width, length_penalty)

    return decode


def greedy_search(step, state, batch_size, buffer_length, max_new_tokens, start_token, stop_token, pad_id):
    """Feeds back the most likely token until `stop_token` or `max_new_tokens`.

    Args:
        step: `step(tokens (batch,), position, state) -> (logits (batch, vocab), state)`.
        state: a nest of `(batch, ...)` tensors (the encoded source, caches).
        batch_size: scalar.
        buffer_length: Python int, columns of the output (>= `max_new_tokens`).
        max_new_tokens, start_token, stop_token, pad_id: int32 scalars.

    Returns:
        `(batch, buffer_length)` int32 tokens.
    """
    tokens = tf.fill([batch_size, buffer_length], pad_id)
    done = tf.zeros([batch_size], tf.bool)

    def body(t, previous, tokens, state, done):
        logits, state = step(previous, t, state)
        token = tf.where(done, pad_id, tf.argmax(logits, axis=-1, output_type=tf.int32))
        return t + 1, token, _write_column(tokens, t, token), state, done | tf.equal(token, stop_token)

    def keep_going(t, previous, tokens, state, done):
        return (t < max_new_tokens) & ~tf.reduce_all(done)

    start = tf.fill([batch_size], start_token)
    _, _, tokens, _, _ = tf.while_loop(keep_going, body, (tf.constant(0), start, tokens, state, done))
    return tokens


def beam_search(step, state, batch_size, buffer_length, max_new_tokens, start_token, stop_token, pad_id,
                beam_width, length_penalty):
    """Keeps the `beam_width` best hypotheses per sequence; returns the best one.

    Hypotheses are ranked by log-probability / ((5 + length) / 6) **
    length_penalty (Wu et al., 2016). A finished hypothesis (it produced
    `stop_token`) stays in the beam with its score, extended only by padding,
    until better ones push it out; the search ends when every hypothesis is
    finished or after `max_new_tokens` tokens.

    Args:
        step, state, batch_size, buffer_length, max_new_tokens, start_token,
            stop_token, pad_id: as `greedy_search`.
        beam_width: Python int >= 1.
        length_penalty: float32 scalar (alpha).

    Returns:
        `(batch, buffer_length)` int32 tokens of the best hypothesis.
    """
    k = beam_width
    state = tf.nest.map_structure(lambda s: tf.repeat(s, k, axis=0), state)
    tokens = tf.fill([batch_size * k, buffer_length], pad_id)
    # Only the first hypothesis is live at the start, so the first step's
    # k best continuations are k different tokens.
    scores = tf.tile(tf.constant([[0.0] + [-np.inf] * (k - 1)]), [batch_size, 1])
    finished = tf.zeros([batch_size, k], tf.bool)
    lengths = tf.zeros([batch_size, k], tf.int32)

    def penalty(length):
        return ((5.0 + tf.cast(length, tf.float32)) / 6.0) ** length_penalty

    def body(t, previous, tokens, state, scores, finished, lengths):
        logits, state = step(previous, t, state)
        vocab = tf.shape(logits)[-1]
        log_probs = tf.reshape(tf.nn.log_softmax(tf.cast(logits, tf.float32)), [batch_size, k, vocab])
        # A finished hypothesis continues with padding only, at no cost.
        pad_only = tf.where(tf.equal(tf.range(vocab), pad_id), 0.0, -np.inf)
        log_probs = tf.where(finished[:, :, None], pad_only, log_probs)
        total = scores[:, :, None] + log_probs
        new_lengths = tf.where(finished, lengths, t + 1)
        ranked = tf.reshape(total / penalty(new_lengths)[:, :, None], [batch_size, k * vocab])
        _, best = tf.math.top_k(ranked, k)
        beam, token = best // vocab, best % vocab
        rows = tf.reshape(beam + tf.range(batch_size)[:, None] * k, [-1])
        scores = tf.gather(tf.reshape(total, [batch_size, k * vocab]), best, batch_dims=1)
        lengths = tf.gather(new_lengths, beam, batch_dims=1)
        finished = tf.gather(finished, beam, batch_dims=1) | tf.equal(token, stop_token)
        token = tf.reshape(token, [-1])
        tokens = _write_column(tf.gather(tokens, rows), t, token)
        state = tf.nest.map_structure(lambda s: tf.gather(s, rows), state)
        return t + 1, token, tokens, state, scores, finished, lengths

    def keep_going(t, previous, tokens, state, scores, finished, lengths):
        return (t < max_new_tokens) & ~tf.reduce_all(finished)

    start = tf.fill([batch_size * k], start_token)
    _, _, tokens, _, scores, _, lengths = tf.while_loop(
        keep_going, body, (tf.constant(0), start, tokens, state, scores, finished, lengths))
    best = tf.argmax(scores / penalty(lengths), axis=-1, output_type=tf.int32)
    return tf.gather(tf.reshape(tokens, [batch_size, k, buffer_length]), best, batch_dims=1)


class Seq2SeqDecoder:
    """The encode and step functions of a `transformer_seq2seq` or `rnn_seq2seq` model.

    Args:
        model: the model; its layers are used directly (no copy of the weights).

    Attributes:
        target_vocab: target vocabulary size.
        max_length: the longest source/target (None for RNN models).
        encode: `encode(source_ids, buffer_length) -> state`.
        step: `step(tokens, position, state) -> (float32 logits, state)`.
    """

    def __init__(self, model):
        names = {layer.name for layer in model.layers}
        if {"source_embedding", "encoder_norm", "target_embedding", "decoder_norm"} <= names:
            self._transformer(model)
        elif {"encoder", "decoder", "attention", "attention_keys", "logits"} <= names:
            self._rnn(model)
        else:
            raise ValueError(f"`model` ({getattr(model, 'name', model)!r}) must come from "
                             "kerazoo.models.transformer_seq2seq or kerazoo.models.rnn_seq2seq.")

    def _transformer(self, model):
        source_embedding, target_embedding = model.get_layer("source_embedding"), model.get_layer("target_embedding")
        encoder_blocks = [layer for layer in model.layers if type(layer) is TransformerBlock]
        decoder_blocks = [layer for layer in model.layers if isinstance(layer, TransformerDecoderBlock)]
        encoder_norm, decoder_norm = model.get_layer("encoder_norm"), model.get_layer("decoder_norm")
        self.target_vocab = target_embedding.vocab_size
        self.max_length = min(source_embedding.max_length, target_embedding.max_length)
        self.source_vocab = source_embedding.vocab_size

        def encode(source_ids, buffer_length):
            mask = tf.not_equal(source_ids, 0)
            x = source_embedding(source_ids)
            for block in encoder_blocks:
                x = block(x, padding_mask=mask)
            encoded = encoder_norm(x)
            batch = tf.shape(source_ids)[0]
            return dict(mask=mask,
                        key_values=[block.cross_attention.key_value(encoded) for block in decoder_blocks],
                        caches=[block.attention.empty_cache(batch, buffer_length) for block in decoder_blocks])

        def step(tokens, position, state):
            y = target_embedding(tokens[:, None], start_index=position)
            caches = []
            for block, key_value, cache in zip(decoder_blocks, state["key_values"], state["caches"]):
                y, cache = block(y, context_mask=state["mask"], cache=cache, cache_index=position,
                                 context_key_value=key_value)
                caches.append(cache)
            logits = target_embedding(decoder_norm(y), reverse=True)[:, 0]
            return ops.cast(logits, "float32"), dict(state, caches=caches)

        self.encode, self.step = encode, step

    def _rnn(self, model):
        source_embedding, target_embedding = model.get_layer("source_embedding"), model.get_layer("target_embedding")
        encoder, cell = model.get_layer("encoder"), model.get_layer("decoder").cell
        keys_dense, queries_dense = model.get_layer("attention_keys"), model.get_layer("attention_queries")
        attention, output_dense = model.get_layer("attention"), model.get_layer("attention_output")
        logits_dense = model.get_layer("logits")
        self.target_vocab = target_embedding.input_dim
        self.source_vocab = source_embedding.input_dim
        self.max_length = None

        def encode(source_ids, buffer_length):
            mask = tf.not_equal(source_ids, 0)
            encoded, *rnn_state = encoder(source_embedding(source_ids), mask=mask)
            return dict(mask=mask, encoded=encoded, keys=keys_dense(encoded), rnn_state=rnn_state)

        def step(tokens, position, state):
            output, rnn_state = cell(target_embedding(tokens), state["rnn_state"])
            context = attention([queries_dense(output[:, None]), state["encoded"], state["keys"]],
                                mask=[None, state["mask"]])
            y = output_dense(ops.concatenate([context, output[:, None]], axis=-1))
            return ops.cast(logits_dense(y)[:, 0], "float32"), dict(state, rnn_state=list(rnn_state))

        self.encode, self.step = encode, step


def _write_column(tokens, t, column):
    """`tokens[:, t] = column` without slicing by a tensor (XLA would recompile per step)."""
    rows = tf.range(tf.shape(tokens)[0])
    return tf.tensor_scatter_nd_update(tokens, tf.stack([rows, tf.fill(tf.shape(rows), t)], axis=1), column)


def _check_beam(strategy, beam_width, vocab):
    if strategy == "beam" and (not isinstance(beam_width, (int, np.integer)) or not 1 <= beam_width <= vocab):
        raise ValueError(f"`beam_width` must be an integer in [1, target vocabulary {vocab}]; "
                         f"received {beam_width!r}.")


def _source_array(source_ids, parts):
    rows = [np.asarray(row, dtype=np.int64).ravel() for row in source_ids]
    if not rows:
        raise ValueError("`source_ids` is empty: give at least one source sequence.")
    rows = [np.trim_zeros(row, "b") for row in rows]
    longest = max(1, max(len(row) for row in rows))
    for i, row in enumerate(rows):
        if row.size and (row.min() < 0 or row.max() >= parts.source_vocab):
            raise ValueError(f"source {i} has token ids outside [0, {parts.source_vocab}): "
                             f"min {row.min()}, max {row.max()}.")
    if parts.max_length is not None and longest > parts.max_length:
        raise ValueError(f"source length {longest} exceeds the model's max_length={parts.max_length}.")
    array = np.zeros((len(rows), generation.bucket_length(longest, parts.max_length)), np.int32)
    for i, row in enumerate(rows):
        array[i, :len(row)] = row
    return array
