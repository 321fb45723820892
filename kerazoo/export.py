"""SavedModel export for TF Serving: string-in signatures, dense named outputs, versions written atomically.

TF Serving loads `<base>/<name>/<version>/` and serves the largest integer
version, ignoring other names. Each export is written into a temporary,
non-integer sibling (`tmp-<pid>-<random>`) and renamed into place only once
complete, so the server never sees a half-written version. The exported
functions contain only core TensorFlow and tensorflow-text ops, none marked
for XLA. TF Serving does not check request shapes against the signature, so
the first op of each function checks that the strings are a vector: a rank-0
(or rank-2) request is an InvalidArgumentError instead of reaching tf-text
kernels unchecked, which can crash the server.
"""

import os
import re
import shutil
import uuid
import warnings

import keras
import numpy as np
import tensorflow as tf

from kerazoo import generation, nonfinite, seq2seq_decoding
from kerazoo.text import END, START

# A model's name: one folder name inside the export directory (recipe_flags checks --name with it too).
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


def export_saved_model(model, directory, name, version=None, preprocessor=None, serve_fn=None,
                       input_name="text", quantize=None):
    """Exports a classifier (or any string-in model) for TF Serving.

    The `serving_default` signature takes `input_name`: a `[None]` string
    tensor. By default it returns `probabilities` (float32: `[batch]` for a
    one-unit sigmoid output, else `[batch, classes]`) and `label` (int64:
    probability >= 0.5, or the argmax).

    Args:
        model: a `keras.Model` on token ids (with `preprocessor`) or on strings.
        directory: the base directory (e.g. "saved_models").
        name: the model's folder inside `directory`.
        version: a positive int; default: one more than the largest existing.
        preprocessor: a layer mapping `[batch]` strings to the model's input
            (e.g. an adapted `kerazoo.text.word_vectorizer`); tracked, so its
            vocabulary and lookup tables are saved with the model.
        serve_fn: instead of the classifier outputs, a function from the
            `[batch]` string tensor to a dict of dense tensors.
        input_name: name of the string input in the signature.
        quantize: None, or "int8": int8 weights from Keras's own
            post-training `model.quantize("int8")` (weights only), served at
            float32 speed: Dense kernels are int8 constants in the graph that
            TensorFlow folds into float32 kernels when it loads the model;
            Embedding (and EinsumDense) layers serve through Keras's int8
            layers; other layers (LSTM, norms) and biases stay float32. See
            `int8_serving_model`. `model` itself is left unchanged.

    Returns:
        The path of the new version directory.

    Example:

    >>> export_saved_model(model, "saved_models", "sentiment", preprocessor=vectorizer)  # doctest: +SKIP
    'saved_models/sentiment/1'
    """
    if not isinstance(model, keras.Model):
        raise TypeError(f"`model` must be a keras.Model; received {type(model).__name__}.")
    if preprocessor is None and serve_fn is None and model.inputs and model.inputs[0].dtype != "string":
        raise ValueError(f"model {model.name!r} takes {model.inputs[0].dtype} inputs: pass the "
                         "`preprocessor` that maps strings to them (e.g. the adapted vectorizer).")
    tracked = model
    if quantize is not None:
        nonfinite.check_finite_weights(model)  # before the float weights become int8 constants
        if serve_fn is not None:
            raise ValueError("`quantize` applies to the classifier outputs of `model`; with a `serve_fn`, "
                             "quantize the model it calls yourself (model.quantize('int8')).")
        model, tracked = int8_serving_model(model, quantize)
    if preprocessor is not None and not preprocessor.built:
        preprocessor(tf.constant([""]))  # builds it (e.g. a freshly adapted TextVectorization)
    if serve_fn is None:
        serve_fn = _classifier_outputs(model, preprocessor)

    def serve(strings):
        return _dense_outputs(serve_fn(_vector(strings)))

    signature = [tf.TensorSpec([None], tf.string, name=input_name)]
    return _write_version(directory, name, version, [tracked, preprocessor],
                          {"serving_default": (serve, signature)})


def export_text_generator(model, tokenizer, directory, name, version=None, max_new_tokens=64,
                          strategy="greedy", stop_token=None):
    """Exports a `transformer_lm` with its tokenizer as a prompt-in, text-out SavedModel.

    Signatures (input `prompt`: `[None]` strings):
    - `serving_default`: `text` (the generated continuation of each prompt)
      and `token_ids` (`[batch, max_new_tokens]` int32, `0` after a stop).
    - `generate`: the same outputs, sampled with request-time parameters,
      scalars that apply to every prompt of the request: `max_new_tokens`
      (int32, 1 ..the exported `max_new_tokens`; the outputs have that many
      columns), `temperature` (float32 > 0), `top_k` (int32, 0 = no limit,
      1 = greedy), `top_p` (float32 in (0, 1]) and `seed` (int32; the same
      seed and request give the same text). Values out of range fail the
      request (InvalidArgumentError), never the server.
    - `next_token_logits`: `logits` `[batch, vocab]` float32 for the token
      after each prompt.

    Decoding is the KV-cache loop of `kerazoo.generation` as a plain
    `tf.while_loop` (TF Serving runs without XLA). Prompts longer than the
    context allows keep their last tokens; an empty prompt starts from `[UNK]`;
    an empty batch returns empty outputs.

    Args:
        model: a `kerazoo.models.transformer_lm` model.
        tokenizer: its `kerazoo.text` tokenizer.
        directory, name, version: as in `export_saved_model`.
        max_new_tokens: tokens generated per request (the most `generate` allows).
        strategy: of `serving_default`: "greedy" (deterministic) or "sample"
            (temperature 1, seed 0).
        stop_token: id that ends a continuation.

    Returns:
        The path of the new version directory.
    """
    embedding = model.get_layer("embedding")
    if not 1 <= max_new_tokens < embedding.max_length:
        raise ValueError(f"`max_new_tokens` must be in [1, {embedding.max_length}) for this model; "
                         f"received {max_new_tokens}.")
    if strategy not in ("greedy", "sample"):
        raise ValueError(f"export_text_generator supports strategy='greedy' or 'sample' for serving_default "
                         f"(the `generate` signature takes top_k/top_p per request); received {strategy!r}.")
    default_decode = generation.decode_function(model, strategy)
    request_decode = generation.decode_function(model, "top_k_top_p")
    max_prompt = embedding.max_length - max_new_tokens
    stop = tf.constant(-1 if stop_token is None else stop_token)

    def prompt_ids(prompts):
        ids = tokenizer(prompts)[:, -max_prompt:]  # keep the end of over-long prompts
        # An empty prompt starts from [UNK]: decoding needs one token.
        empty = tf.cast(tf.equal(ids.row_lengths(), 0), ids.row_splits.dtype)
        unk = tf.RaggedTensor.from_row_lengths(
            tf.fill([tf.reduce_sum(empty)], tf.cast(tokenizer.unk_id, ids.dtype)), empty)
        return tf.concat([unk, ids], axis=1)

    def continue_prompts(decode, prompts, new_tokens, temperature, top_k, top_p, seed):
        ids = prompt_ids(prompts)
        lengths = tf.cast(ids.row_lengths(), tf.int32)
        batch = tf.shape(lengths)[0]
        longest = tf.reduce_max(tf.concat([lengths, [1]], axis=0))  # an empty batch has no maximum
        buffer = ids.to_tensor(default_value=0, shape=[batch, longest + new_tokens])
        out = decode(buffer, lengths, new_tokens, temperature, top_k, top_p, stop, tf.constant(0), seed, longest)
        new_ids = tf.gather(out, lengths[:, None] + tf.range(new_tokens)[None, :], batch_dims=1)
        return {"text": tokenizer.detokenize(new_ids), "token_ids": new_ids}

    def serve(prompts):
        return _dense_outputs(continue_prompts(
            default_decode, _vector(prompts), tf.constant(max_new_tokens), tf.constant(1.0), tf.constant(1),
            tf.constant(1.0), tf.constant(0)))

    def generate(prompt, max_new_tokens_, temperature, top_k, top_p, seed):
        scalars = [tf.ensure_shape(x, []) for x in (max_new_tokens_, temperature, top_k, top_p, seed)]
        new_tokens, temperature, top_k, top_p, seed = scalars
        checks = [
            tf.debugging.Assert((new_tokens >= 1) & (new_tokens <= max_new_tokens),
                                [f"max_new_tokens must be in [1, {max_new_tokens}]; received", new_tokens]),
            tf.debugging.Assert(tf.math.is_finite(temperature) & (temperature > 0),
                                ["temperature must be a finite number > 0; received", temperature]),
            tf.debugging.Assert((top_k >= 0) & (top_k <= embedding.vocab_size),
                                [f"top_k must be in [0, {embedding.vocab_size}] (0: no limit); received", top_k]),
            tf.debugging.Assert((top_p > 0) & (top_p <= 1), ["top_p must be in (0, 1]; received", top_p]),
        ]
        with tf.control_dependencies(checks):
            prompts = tf.identity(_vector(prompt))
        return _dense_outputs(continue_prompts(request_decode, prompts, new_tokens, temperature, top_k, top_p,
                                               seed))

    def next_token_logits(prompts):
        ids = prompt_ids(_vector(prompts))
        logits = model(ids.to_tensor(default_value=0), training=False)
        last = tf.cast(ids.row_lengths(), tf.int32) - 1
        return _dense_outputs({"logits": tf.cast(tf.gather(logits, last, batch_dims=1), tf.float32)})

    prompt = tf.TensorSpec([None], tf.string, name="prompt")
    request = [prompt, tf.TensorSpec([], tf.int32, name="max_new_tokens"),
               tf.TensorSpec([], tf.float32, name="temperature"), tf.TensorSpec([], tf.int32, name="top_k"),
               tf.TensorSpec([], tf.float32, name="top_p"), tf.TensorSpec([], tf.int32, name="seed")]
    return _write_version(directory, name, version, [model, tokenizer],
                          {"serving_default": (serve, [prompt]), "generate": (generate, request),
                           "next_token_logits": (next_token_logits, [prompt])})


def export_translator(model, source_tokenizer, target_tokenizer, directory, name, version=None,
                      max_new_tokens=None, strategy="beam", beam_width=4, length_penalty=0.6):
    """Exports an encoder–decoder model with both tokenizers as a string-in, string-out SavedModel.

    Signature `serving_default` (input `text`: `[None]` strings): `translation`
    (`[batch]` strings) and `token_ids` (`[batch, max_new_tokens]` int32, 0
    after the end token). Decoding is `kerazoo.seq2seq_decoding`'s loop as a
    plain `tf.while_loop` (TF Serving runs without XLA). Sources longer than
    the model's `max_length` keep their first tokens; the target vocabulary
    must hold `text.START` and `text.END` (`WordPieceTokenizer.learn(...,
    reserved_tokens=(START, END))`).

    Args:
        model: a `models.transformer_seq2seq` or `models.rnn_seq2seq` model.
        source_tokenizer, target_tokenizer: their `kerazoo.text` tokenizers.
        directory, name, version: as in `export_saved_model`.
        max_new_tokens: target tokens at most (default: the model's
            `max_length`; required for RNN models).
        strategy: "beam" or "greedy".
        beam_width, length_penalty: for "beam" (see `seq2seq_decoding.translate`).

    Returns:
        The path of the new version directory.
    """
    for token in (START, END):
        if token not in target_tokenizer.vocabulary:
            raise ValueError(f"the target vocabulary has no {token!r} token; learn it with "
                             "reserved_tokens=(text.START, text.END).")
    start, stop = target_tokenizer.vocabulary.index(START), target_tokenizer.vocabulary.index(END)
    decode = seq2seq_decoding.decode_function(model, strategy, beam_width, max_new_tokens)
    max_source = seq2seq_decoding.Seq2SeqDecoder(model).max_length

    def translate(texts):
        ids = source_tokenizer(_vector(texts))
        if max_source is not None:
            ids = ids[:, :max_source]
        batch = tf.shape(texts, out_type=tf.int64)[0]
        # At least one column: an all-empty batch still has a (fully masked) source.
        source = ids.to_tensor(default_value=0, shape=[batch, tf.maximum(ids.bounding_shape(1), 1)])
        tokens = decode(tf.cast(source, tf.int32), tf.constant(max_new_tokens or max_source),
                        tf.constant(start), tf.constant(stop), tf.constant(length_penalty, tf.float32))
        tokens = tf.where(tf.equal(tokens, stop), 0, tokens)
        return {"translation": target_tokenizer.detokenize(tokens), "token_ids": tokens}

    def serve(texts):
        return _dense_outputs(translate(texts))

    signature = [tf.TensorSpec([None], tf.string, name="text")]
    return _write_version(directory, name, version, [model, source_tokenizer, target_tokenizer],
                          {"serving_default": (serve, signature)})


def quantized_copy(model, mode="int8"):
    """A copy of `model` with Keras's post-training weight quantization; `model` is unchanged.

    Weights only: Keras's default int8 config also quantizes each layer's
    input on every call (abs-max), which made a BERT classifier's TF-only
    serving 2-4x slower on CPU (`bench/serving_latency.py`); with
    `Int8QuantizationConfig(activation_quantizer=None)` the int8 kernels are
    cast back to float in the graph, keeping the size gain at about float32
    latency.

    Args:
        model: a built `keras.Model` (functional or sequential).
        mode: "int8" (the mode whose layers export with core TensorFlow ops only).

    Returns:
        The quantized copy.
    """
    if mode != "int8":
        raise ValueError(f"`quantize` must be None or 'int8'; received {mode!r}.")
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    with warnings.catch_warnings():  # layers without int8 kernels (LSTM, norms) stay float32, by design
        warnings.filterwarnings("ignore", message=".*does not have a `quantize` method")
        copy.quantize(mode, config=keras.quantizers.Int8QuantizationConfig(activation_quantizer=None))
    if not any(variable.dtype == "int8" for variable in copy.weights):
        raise ValueError(f"model {model.name!r} has no layer Keras quantizes to int8 (Dense, EinsumDense, "
                         "Embedding): nothing would change.")
    return copy


# TensorFlow's graph constant folding, which runs when a function is instantiated, computes no tensor
# larger than this (ConstantFoldingOptions.max_constant_size_in_bytes).
FOLD_LIMIT_BYTES = 10 * 1024 * 1024


def int8_serving_model(model, mode="int8"):
    """`model` with Keras's int8 weights, in a form that serves at float32 speed.

    Keras's int8 Dense casts its int8 kernel to float and rescales its output
    on every call, which made a BERT classifier's serving about 10% slower
    than float32 on CPU. Here each plain `keras.layers.Dense` kernel is
    Keras's int8 kernel and scale (from `quantized_copy`) held as constants
    of the traced graph and dequantized as Keras does (`cast(kernel) /
    kernel_scale`). All inputs of that expression are constants, so
    TensorFlow's constant folding computes the float32 kernel once, when the
    function is instantiated (its first call; in TF Serving the first request
    or a warm-up request), and every later call runs the float32 model's
    graph. The SavedModel stores the int8 kernels (in `saved_model.pb`) and
    no float copy; the serving process holds float32 kernels in memory.

    Kept in Keras's own int8 layers (int8 variables, dequantized on every
    call): Embedding tables (a call gathers rows; it never casts the whole
    table), other quantized layers (e.g. EinsumDense), and any Dense kernel
    whose float32 form exceeds `FOLD_LIMIT_BYTES` (constant folding would
    leave it unfolded).

    Args:
        model: a built `keras.Model` (functional or sequential).
        mode: "int8".

    Returns:
        `(forward, tracked)`: `forward(inputs)` runs the model with those
        weights (call it while tracing the exported `tf.function`), and
        `tracked`, a `tf.Module` holding every variable `forward` reads (for
        `ExportArchive.track`; the folded layers' float32 kernels are not
        among them).

    Example:

    >>> forward, tracked = int8_serving_model(model)  # doctest: +SKIP
    >>> probabilities = forward(token_ids)  # doctest: +SKIP
    """
    quantized = quantized_copy(model, mode)

    def folds(layer):
        return type(layer) is keras.layers.Dense and 4 * int(np.prod(layer.kernel.shape)) <= FOLD_LIMIT_BYTES

    serving = keras.models.clone_model(model)
    serving.set_weights(model.get_weights())
    with warnings.catch_warnings():  # as in quantized_copy
        warnings.filterwarnings("ignore", message=".*does not have a `quantize` method")
        serving.quantize(mode, config=keras.quantizers.Int8QuantizationConfig(activation_quantizer=None),
                         filters=lambda layer: not folds(layer))
    folded = []  # (float32 kernel variable of `serving`, Keras's int8 kernel, its scale)
    for layer, keras_int8 in zip(serving._flatten_layers(), quantized._flatten_layers()):
        if folds(layer) and keras_int8.quantization_mode == "int8":
            folded.append((layer.kernel, keras.ops.convert_to_numpy(keras_int8._kernel),
                           keras.ops.convert_to_numpy(keras_int8.kernel_scale)))
    folded_ids = {id(variable) for variable, _, _ in folded}
    tracked = tf.Module()
    tracked.weights = [variable for variable in serving.weights if id(variable) not in folded_ids]

    def forward(inputs):
        # Made while tracing: Const nodes of the function, the inputs constant folding needs.
        kernels = [(variable, keras.ops.divide(keras.ops.cast(tf.constant(kernel), "float32"), tf.constant(scale)))
                   for variable, kernel, scale in folded]
        with keras.StatelessScope(state_mapping=kernels):
            return serving(inputs, training=False)

    return forward, tracked


def latest_version(path):
    """The newest integer version under a model folder.

    Args:
        path: `<directory>/<name>`.

    Returns:
        `(version, version_path)`.
    """
    versions = _versions(path)
    if not versions:
        raise FileNotFoundError(f"no exported versions (integer-named folders) in {os.fspath(path)!r}.")
    return versions[-1], os.path.join(path, str(versions[-1]))


def _vector(strings):
    """The first op of every endpoint: anything but a `[batch]` vector is an InvalidArgumentError."""
    return tf.ensure_shape(strings, [None])


def _classifier_outputs(model, preprocessor):
    """`model`: a `keras.Model`, or a function of its inputs (`int8_serving_model`'s forward)."""
    forward = (lambda inputs: model(inputs, training=False)) if isinstance(model, keras.Model) else model

    def outputs(strings):
        inputs = strings if preprocessor is None else preprocessor(strings)
        probabilities = tf.cast(forward(inputs), tf.float32)
        if probabilities.shape[-1] == 1:
            probabilities = probabilities[:, 0]
            return {"probabilities": probabilities, "label": tf.cast(probabilities >= 0.5, tf.int64)}
        return {"probabilities": probabilities, "label": tf.argmax(probabilities, axis=-1)}

    return outputs


def _dense_outputs(outputs):
    if not isinstance(outputs, dict) or not outputs:
        raise ValueError(f"the serving function must return a non-empty dict of tensors; "
                         f"received {type(outputs).__name__}.")
    for key, value in outputs.items():
        if not isinstance(value, tf.Tensor):
            raise ValueError(f"serving output {key!r} is a {type(value).__name__}: TF Serving needs dense "
                             "tensors (convert ragged ones with .to_tensor()).")
    return outputs


def _versions(path):
    if not os.path.isdir(path):
        return []
    return sorted(int(entry) for entry in os.listdir(path) if entry.isdigit())


def _write_version(directory, name, version, tracked, endpoints):
    if not isinstance(name, str) or not MODEL_NAME.fullmatch(name):
        raise ValueError(f"`name` must be a simple folder name (letters, digits, '.', '_', '-'); "
                         f"received {name!r}.")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise ValueError(f"`version` must be a positive integer; received {version!r}.")
    for obj in tracked:
        if isinstance(obj, keras.layers.Layer):
            nonfinite.check_finite_weights(obj)  # TF Serving would serve NaNs from the newest version
    base = os.path.join(os.fspath(directory), name)
    os.makedirs(base, exist_ok=True)
    if version is not None and os.path.exists(os.path.join(base, str(version))):
        raise FileExistsError(f"version {version} already exists: {os.path.join(base, str(version))!r} "
                              "(exports never overwrite).")

    archive = keras.export.ExportArchive()
    for obj in tracked:
        if obj is not None:
            archive.track(obj)
    for endpoint, (fn, signature) in endpoints.items():
        # Keras traces `fn` once (a tf.function of ours here would be traced again for the signature, storing
        # the graph, and any constants in it, twice).
        archive.add_endpoint(endpoint, fn, input_signature=signature)
    tmp = os.path.join(base, f"tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        archive.write_out(tmp, verbose=False)
        return _rename_into_place(tmp, base, version)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _rename_into_place(tmp, base, version):
    """Renames the finished export to `base/<version>` (default: the next free one) and returns that path.

    Renaming onto an existing (non-empty) version fails atomically; without an
    explicit version another export that finished first just means trying
    the next number.
    """
    while True:
        versions = _versions(base)
        candidate = version or (versions[-1] + 1 if versions else 1)
        final = os.path.join(base, str(candidate))
        try:
            os.rename(tmp, final)
            return final
        except OSError as error:
            if version is not None or not os.path.isdir(final):
                raise FileExistsError(f"could not move the export to {final!r}: {error}") from None
