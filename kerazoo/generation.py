"""Autoregressive decoding for `models.transformer_lm` with a key/value cache, the whole loop compiled."""

import weakref

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from kerazoo.layers import TokenAndPositionEmbedding, TransformerBlock

STRATEGIES = ("greedy", "sample", "top_k", "top_p")
# Buffers are padded to a multiple of this many positions, so prompts of other
# lengths reuse the compiled loop instead of tracing a new one.
LENGTH_BUCKET = 64
# The prompt is run through the model in one pass over its first positions: the
# longest prompt rounded up to a power of two, at least this many.
PREFILL_BUCKET = 16

_compiled = weakref.WeakKeyDictionary()  # model -> {(strategy, jit_compile): decode function}


def generate(model, prompt_ids, max_new_tokens, strategy="greedy", temperature=1.0, top_k=None,
             top_p=None, stop_token=None, seed=None, pad_id=0, prompt_padding=None, jit_compile=True):
    """Continues each prompt by up to `max_new_tokens` tokens.

    The prompts are run through the model once to fill a key/value cache;
    then each step feeds one token per sequence and attends over the cache, so
    the prefix is never recomputed. Sequences of different lengths decode in
    one batch: every row keeps its own positions (row i's prompt occupies
    positions `0 .. len_i - 1`), and rows whose prompt is longer keep feeding
    prompt tokens while shorter ones already generate. The loop is one
    `tf.function` (`tf.while_loop`), XLA-compiled by default, traced once per
    model, strategy, batch size and length bucket; later calls reuse it.

    Args:
        model: a model from `kerazoo.models.transformer_lm` (its layers are
            used directly: no second copy of the weights).
        prompt_ids: a list of token-id sequences (lengths may differ) or a
            `(batch, prompt_len)` int array (padded with `pad_id` on the side
            that `prompt_padding` names).
        max_new_tokens: tokens to add to each prompt (>= 1).
        strategy: "greedy" (argmax), "sample" (softmax sampling at
            `temperature`), "top_k" (sample among the `top_k` most likely) or
            "top_p" (sample from the smallest set of tokens whose probability
            is >= `top_p`).
        temperature: divides the logits before sampling (not with "greedy").
        top_k: for "top_k".
        top_p: for "top_p", in (0, 1].
        stop_token: a row ends after generating this id.
        seed: int for reproducible sampling (None: a fresh random seed).
        pad_id: fills each row after its end.
        prompt_padding: None (every id is part of the prompt), "left" or
            "right": `pad_id`s on that side of each prompt are padding.
        jit_compile: compile the loop with XLA.

    Returns:
        int32 numpy array `(batch, max_prompt_len + max_new_tokens)`: each row
        is its prompt, then its new tokens (up to and including `stop_token`),
        then `pad_id`.

    Example:

    >>> from kerazoo import models
    >>> model = models.transformer_lm(vocab_size=50, max_length=32, d_model=16,
    ...                               num_heads=2, num_layers=1, ff_dim=32)
    >>> tuple(generate(model, [[1, 2, 3], [4]], max_new_tokens=5, jit_compile=False).shape)
    (2, 8)
    """
    layers = _decoder_layers(model)
    embedding = layers[0]
    _check_token_id("pad_id", pad_id, embedding.vocab_size)
    if stop_token is not None:
        _check_token_id("stop_token", stop_token, embedding.vocab_size)
    if seed is not None and (not _is_int(seed) or not 0 <= seed < 2 ** 31):
        raise ValueError(f"`seed` must be None or an integer in [0, 2**31); received {seed!r}.")
    prompts = _as_prompt_list(prompt_ids, embedding.vocab_size, prompt_padding, pad_id)
    if not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 1:
        raise ValueError(f"`max_new_tokens` must be an integer >= 1; received {max_new_tokens!r}.")
    lengths = np.array([len(p) for p in prompts], dtype=np.int32)
    total = int(lengths.max()) + int(max_new_tokens)
    if total > embedding.max_length:
        raise ValueError(
            f"prompt length {int(lengths.max())} + max_new_tokens {max_new_tokens} = {total} exceeds "
            f"the model's max_length={embedding.max_length}.")
    sampling = _check_sampling(strategy, temperature, top_k, top_p)
    if top_k is not None and top_k > embedding.vocab_size:
        raise ValueError(f"`top_k`={top_k} exceeds the vocabulary size {embedding.vocab_size}.")
    buffer_length = bucket_length(total, embedding.max_length)
    batch = len(prompts)
    # Extra rows up to the batch bucket are all-padding prompts as long as the
    # longest one, with no tokens to generate: they never hold the loop up.
    ids = np.full((bucket_batch(batch), buffer_length), pad_id, dtype=np.int32)
    for row, prompt in enumerate(prompts):
        ids[row, :len(prompt)] = prompt
    budgets = np.zeros(len(ids), np.int32)
    budgets[:batch] = max_new_tokens
    lengths = np.concatenate([lengths, np.full(len(ids) - batch, lengths.max(), np.int32)])
    prefill = min(buffer_length, max(PREFILL_BUCKET, 1 << int(lengths.max() - 1).bit_length()))
    if seed is None:
        seed = np.random.default_rng().integers(2 ** 31)

    key = (strategy, bool(jit_compile))
    functions = _compiled.setdefault(model, {})
    if key not in functions:
        functions[key] = tf.function(_decode_loop(*layers, strategy),
                                     jit_compile=bool(jit_compile), autograph=False)
    out = functions[key](
        tf.constant(ids), tf.constant(lengths), tf.constant(budgets),
        tf.constant(sampling["temperature"], tf.float32), tf.constant(sampling["top_k"], tf.int32),
        tf.constant(sampling["top_p"], tf.float32),
        tf.constant(-1 if stop_token is None else stop_token, tf.int32),
        tf.constant(pad_id, tf.int32), tf.constant(seed, tf.int32), prefill)
    return out.numpy()[:batch, :total]


def bucket_batch(batch):
    """The batch size `generate` compiles for: the next power of two up to 8, then the next multiple of 8.

    Args:
        batch: positive int.

    Returns:
        The bucketed batch size (>= `batch`).
    """
    return 1 << (batch - 1).bit_length() if batch <= 8 else -(-batch // 8) * 8


def bucket_length(length, limit=None):
    """`length` rounded up to a multiple of `LENGTH_BUCKET`, at most `limit`.

    Buffers of this length let new prompt (or source) lengths reuse a traced loop.

    Args:
        length: positive int.
        limit: the model's maximum length, or None.

    Returns:
        The bucketed length.
    """
    bucketed = -(-length // LENGTH_BUCKET) * LENGTH_BUCKET
    return bucketed if limit is None else min(limit, bucketed)


def decode_function(model, strategy="greedy"):
    """The decoding loop of `generate` as a plain (not XLA-marked) Python function.

    For embedding in an exported `tf.function` (TF Serving runs without XLA).
    Its arguments are tensors: `ids (batch, length)` int32 with prompts
    written from position 0 and `pad_id` after them, `lengths (batch,)`,
    `max_new_tokens` (a scalar or one budget per row), `temperature`,
    `top_k`, `top_p`, `stop_token` (-1 for none), `pad_id`, `seed`, and
    `prefill`, how many leading positions one pass fills (>= the longest
    prompt; an int or a scalar tensor). It returns the filled `ids`.

    Args:
        model: a `kerazoo.models.transformer_lm` model.
        strategy: one of `STRATEGIES`, or "top_k_top_p": temperature, then
            the `top_k` most likely (`top_k <= 0`: all), then top-p; with
            tensors for all three this serves requests that each choose
            their own sampling.

    Returns:
        A callable building the decoding graph.
    """
    if strategy not in STRATEGIES + ("top_k_top_p",):
        raise ValueError(f"`strategy` must be one of {STRATEGIES + ('top_k_top_p',)}; received {strategy!r}.")
    return _decode_loop(*_decoder_layers(model), strategy)


def _decode_loop(embedding, blocks, final_norm, head, strategy):

    def forward(token_ids, start, caches):
        """Hidden states of `token_ids` at positions start.., writing their keys/values."""
        x = embedding(token_ids, start_index=start)
        updated = []
        for block, cache in zip(blocks, caches):
            x, cache = block(x, cache=cache, cache_index=start)
            updated.append(cache)
        return final_norm(x), updated

    def logits_of(hidden):
        logits = head(hidden) if head is not None else embedding(hidden, reverse=True)
        return ops.cast(logits, "float32")

    def decode(ids, lengths, max_new_tokens, temperature, top_k, top_p, stop_token, pad_id, seed, prefill):
        batch, length = tf.shape(ids)[0], tf.shape(ids)[1]
        caches = [block.attention.empty_cache(batch, length) for block in blocks]
        # Fill the cache with the prompts' positions in one pass. Positions
        # past a row's prompt hold padding for now; each is rewritten (keys
        # and values of the real token) by the step that reaches it, before
        # anything attends to it.
        hidden, caches = forward(ids[:, :prefill], 0, caches)
        start = tf.reduce_min(tf.concat([lengths, [prefill]], axis=0))  # an empty batch does not loop
        logits = logits_of(tf.gather(hidden, start - 1, axis=1))
        end = tf.reduce_max(lengths + max_new_tokens)
        done = tf.zeros([batch], tf.bool)

        def step(t, ids, caches, logits, done):
            proposal = _choose(strategy, logits, temperature, top_k, top_p, tf.stack([seed, t]))
            prompt_token = tf.gather(ids, t, axis=1)
            in_prompt = t < lengths
            finished = done | (t >= lengths + max_new_tokens)
            token = tf.where(in_prompt, prompt_token, tf.where(finished, pad_id, proposal))
            done = finished | (~in_prompt & tf.equal(proposal, stop_token))
            ids = tf.tensor_scatter_nd_update(
                ids, tf.stack([tf.range(batch), tf.fill([batch], t)], axis=1), token)
            hidden, caches = forward(token[:, None], t, caches)
            return t + 1, ids, caches, logits_of(hidden[:, 0]), done

        def keep_going(t, ids, caches, logits, done):
            return (t < end) & ~tf.reduce_all(done)

        _, ids, *_ = tf.while_loop(keep_going, step, (start, ids, caches, logits, done))
        return ids

    return decode


def _choose(strategy, logits, temperature, top_k, top_p, seed):
    """Next token per row from float32 `(batch, vocab)` logits."""
    if strategy == "greedy":
        return tf.argmax(logits, axis=-1, output_type=tf.int32)
    logits = logits / temperature
    if strategy in ("top_k", "top_k_top_p"):
        if strategy == "top_k_top_p":
            top_k = tf.where(top_k > 0, top_k, tf.shape(logits)[-1])
        kth_largest = tf.gather(tf.sort(logits, direction="DESCENDING"), top_k - 1, axis=1)
        logits = tf.where(logits < kth_largest[:, None], -np.inf, logits)
    if strategy in ("top_p", "top_k_top_p"):
        logits = top_p_filter(logits, top_p)
    return tf.cast(tf.random.stateless_categorical(logits, 1, seed)[:, 0], tf.int32)


def top_p_filter(logits, top_p):
    """Sets to -inf every logit outside the smallest set whose probability is >= `top_p`.

    Args:
        logits: float `(batch, vocab)`.
        top_p: float in (0, 1].

    Returns:
        The filtered logits (ties at the threshold are kept).
    """
    sorted_logits = tf.sort(logits, direction="DESCENDING")
    probabilities = tf.nn.softmax(sorted_logits)
    # A token is kept when the tokens ranked above it sum to less than top_p.
    mass_above = tf.cumsum(probabilities, axis=-1, exclusive=True)
    kept = tf.reduce_sum(tf.cast(mass_above < top_p, tf.int32), axis=-1)
    threshold = tf.gather(sorted_logits, kept - 1, axis=1, batch_dims=1)
    return tf.where(logits < threshold[:, None], -np.inf, logits)


def check_decodable(model):
    """Raises a ValueError naming the layer when `generate` cannot decode `model`.

    Args:
        model: a model meant for `generate` (e.g. from `models.transformer_lm`).
    """
    _decoder_layers(model)


def _decoder_layers(model):
    """The layers decoding runs, in order; a ValueError naming the layer that breaks the contract.

    The contract (what `models.transformer_lm` builds): a `TokenAndPositionEmbedding`
    named "embedding", causal `TransformerBlock`s, a "final_norm" layer, and
    the output projection: a Dense "lm_head", or the embedding itself called
    a second time (tied). Dropout and the float32 "logits" identity are
    skipped. Any other layer would be silently left out of decoding, so it
    is an error.
    """
    embedding, blocks, final_norm, head = None, [], None, None
    for layer in model.layers:
        kind = type(layer).__name__
        if isinstance(layer, keras.layers.InputLayer) or isinstance(layer, keras.layers.Dropout):
            continue
        if layer.name == "embedding" and isinstance(layer, TokenAndPositionEmbedding):
            embedding = layer
        elif isinstance(layer, TransformerBlock) and layer.causal and final_norm is None:
            blocks.append(layer)
        elif layer.name == "final_norm" and blocks:
            final_norm = layer
        elif layer.name == "lm_head" and isinstance(layer, keras.layers.Dense) and final_norm is not None:
            head = layer
        elif layer.name == "logits" and isinstance(layer, keras.layers.Activation):
            continue
        else:
            raise ValueError(
                f"cannot decode model {model.name!r}: its layer {layer.name!r} ({kind}) is not part of a "
                "kerazoo.models.transformer_lm (embedding, causal TransformerBlocks, final_norm, tied "
                "embedding or Dense 'lm_head'), so generation would silently compute other logits.")
    if embedding is None or not blocks or final_norm is None:
        missing = [name for name, found in (("'embedding' (TokenAndPositionEmbedding)", embedding),
                                            ("causal TransformerBlocks", blocks), ("'final_norm'", final_norm))
                   if not found]
        raise ValueError(f"cannot decode model {model.name!r}: it has no {' and no '.join(missing)}; "
                         "`model` must be a causal language model from kerazoo.models.transformer_lm.")
    if head is None and len(embedding._inbound_nodes) < 2:
        raise ValueError(f"cannot decode model {model.name!r}: it has no Dense 'lm_head' and its 'embedding' "
                         "is not reused as the output projection (tied), so its output head is unknown.")
    return embedding, blocks, final_norm, head


def _as_prompt_list(prompt_ids, vocab_size, padding, pad_id):
    if padding not in (None, "left", "right"):
        raise ValueError(f"`prompt_padding` must be None, 'left' or 'right'; received {padding!r}.")
    if isinstance(prompt_ids, (str, bytes)) or not hasattr(prompt_ids, "__iter__"):
        raise ValueError(f"`prompt_ids` must be a list of token-id sequences or a 2-D int array; "
                         f"received {type(prompt_ids).__name__}.")
    prompts = [np.asarray(p) for p in prompt_ids]
    for row, prompt in enumerate(prompts):
        if prompt.ndim != 1:
            raise ValueError(f"prompt {row} must be a 1-D sequence of token ids; received shape {prompt.shape} "
                             "(one prompt is `[[id, ...]]`).")
        if prompt.size and not np.issubdtype(prompt.dtype, np.integer):
            raise ValueError(f"prompt {row} must hold integer token ids; received dtype {prompt.dtype}.")
        prompts[row] = prompt.astype(np.int64)
    if not prompts:
        raise ValueError("`prompt_ids` is empty: give at least one prompt.")
    for row, prompt in enumerate(prompts):
        if padding:
            real = np.flatnonzero(prompt != pad_id)
            prompt = prompts[row] = (prompt[real[0]:] if padding == "left" else prompt[:real[-1] + 1]
                                     ) if real.size else prompt[:0]
        if prompt.size == 0:
            raise ValueError(f"prompt {row} is empty: every prompt needs at least one token.")
        if prompt.min() < 0 or prompt.max() >= vocab_size:
            raise ValueError(f"prompt {row} has token ids outside [0, {vocab_size}): "
                             f"min {prompt.min()}, max {prompt.max()}.")
    return prompts


def _check_sampling(strategy, temperature, top_k, top_p):
    if strategy not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES}; received {strategy!r}.")
    if strategy == "greedy" and (temperature != 1.0 or top_k is not None or top_p is not None):
        raise ValueError("strategy='greedy' takes no temperature, top_k or top_p; "
                         "use strategy='sample', 'top_k' or 'top_p'.")
    if not isinstance(temperature, (int, float, np.number)) or not 0 < temperature < np.inf:
        raise ValueError(f"`temperature` must be a finite number > 0; received {temperature!r}.")
    if (strategy == "top_k") != (top_k is not None):
        raise ValueError(f"`top_k` goes with strategy='top_k' (and it needs it); "
                         f"received strategy={strategy!r}, top_k={top_k!r}.")
    if (strategy == "top_p") != (top_p is not None):
        raise ValueError(f"`top_p` goes with strategy='top_p' (and it needs it); "
                         f"received strategy={strategy!r}, top_p={top_p!r}.")
    if top_k is not None and (not _is_int(top_k) or top_k < 1):
        raise ValueError(f"`top_k` must be a positive integer; received {top_k!r}.")
    if top_p is not None and not (isinstance(top_p, (int, float, np.number)) and 0 < top_p <= 1):
        raise ValueError(f"`top_p` must be in (0, 1]; received {top_p!r}.")
    return dict(temperature=float(temperature), top_k=top_k or 1, top_p=top_p or 1.0)


def _is_int(value):
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _check_token_id(name, value, vocab_size):
    if not _is_int(value) or not 0 <= value < vocab_size:
        raise ValueError(f"`{name}` must be a token id in [0, {vocab_size}); received {value!r}.")
