"""BERT: a bidirectional Transformer encoder, its MLM + NSP pretrainer, and a sequence classifier."""

import keras
from keras import ops

from kerazoo.layers import TokenAndPositionEmbedding, TransformerBlock

BACKBONE_INPUTS = ("token_ids", "segment_ids", "padding_mask")


def _initializer():
    # BERT's: truncated normal, stddev 0.02, for every kernel and embedding.
    return keras.initializers.TruncatedNormal(stddev=0.02)


def bert_backbone(vocab_size, max_length=128, d_model=256, num_heads=4, num_layers=4, ff_dim=1024,
                  dropout=0.1, num_segments=2, norm_first=False, name="bert_backbone"):
    """Builds a BERT encoder: packed token ids, segment ids and a padding mask in; hidden states out.

    Token + learned position + segment embeddings, layer norm and dropout,
    then `num_layers` bidirectional `TransformerBlock`s (post-norm by default,
    as BERT) that ignore padded keys. The pooled output is BERT's: the final
    `[CLS]` state (position 0) through a tanh dense layer. Defaults are a small
    BERT (4 layers, 256 wide, 4 heads); BERT-base is `d_model=768,
    num_heads=12, num_layers=12, ff_dim=3072, max_length=512`.

    Layer names are part of the API: `embedding` (its token table is tied to
    the MLM output), `segment_embedding`, `embedding_norm`, `block_0` ...
    `block_{num_layers-1}`, `pooler`.

    Args:
        vocab_size: number of token ids.
        max_length: the longest input.
        d_model: hidden width.
        num_heads: attention heads (must divide `d_model`).
        num_layers: Transformer blocks.
        ff_dim: feed-forward width.
        dropout: dropout rate after the embeddings and in every block.
        num_segments: segment (token type) ids accepted.
        norm_first: pre-norm blocks instead of BERT's post-norm.
        name: model name.

    Returns:
        A functional `keras.Model` taking a dict of `(batch, seq)` int32
        `token_ids`, `segment_ids`, `padding_mask` (1 = real token), and
        returning a dict: `sequence_output` `(batch, seq, d_model)` and
        `pooled_output` `(batch, d_model)`.

    Example:

    >>> backbone = bert_backbone(vocab_size=100, max_length=16, d_model=32, num_heads=2,
    ...                          num_layers=1, ff_dim=64)
    >>> ones = keras.ops.ones((2, 16), dtype="int32")
    >>> tuple(backbone({"token_ids": ones, "segment_ids": ones, "padding_mask": ones})["pooled_output"].shape)
    (2, 32)
    """
    for arg, value in (("vocab_size", vocab_size), ("num_layers", num_layers), ("num_segments", num_segments)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"`{arg}` must be a positive integer; received {arg}={value!r}.")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be in [0, 1); received dropout={dropout!r}.")
    inputs = {key: keras.Input(shape=(None,), dtype="int32", name=key) for key in BACKBONE_INPUTS}
    embedding = TokenAndPositionEmbedding(vocab_size, max_length, d_model,
                                          embeddings_initializer=_initializer(), name="embedding")
    segments = keras.layers.Embedding(num_segments, d_model, embeddings_initializer=_initializer(),
                                      name="segment_embedding")
    x = keras.layers.Add(name="embedding_sum")([embedding(inputs["token_ids"]), segments(inputs["segment_ids"])])
    x = keras.layers.LayerNormalization(epsilon=1e-12, name="embedding_norm")(x)
    x = keras.layers.Dropout(dropout, name="embedding_dropout")(x)
    for i in range(num_layers):
        x = TransformerBlock(num_heads, ff_dim, dropout=dropout, norm_first=norm_first, activation="gelu",
                             layer_norm_epsilon=1e-12, kernel_initializer=_initializer(),
                             name=f"block_{i}")(x, padding_mask=inputs["padding_mask"])
    if norm_first:  # pre-norm stacks end with a norm, as GPT-2
        x = keras.layers.LayerNormalization(epsilon=1e-12, name="final_norm")(x)
    pooled = keras.layers.Dense(d_model, activation="tanh", kernel_initializer=_initializer(),
                                name="pooler")(x[:, 0, :])
    return keras.Model(inputs, {"sequence_output": x, "pooled_output": pooled}, name=name)


def with_dropout(backbone, dropout):
    """`backbone` with every dropout rate set to `dropout`: a rebuilt copy with the same weights.

    A backbone keeps the rate it was built with; `bert_pretrain` builds
    without dropout (a short pretraining underfits), while several epochs
    of fine-tuning can overfit without BERT's 0.1 (`bert_finetune.py
    --encoder-dropout`).

    Args:
        backbone: a `bert_backbone` (e.g. loaded from a `.keras` file).
        dropout: the new rate, in [0, 1), after the embeddings and in every block.

    Returns:
        A backbone with `dropout` and `backbone`'s weights (`backbone` itself when its rates already are).

    Example:

    >>> backbone = bert_backbone(vocab_size=100, max_length=16, d_model=32, num_layers=2, ff_dim=64, dropout=0.0)
    >>> with_dropout(backbone, 0.1).get_layer("block_1").dropout
    0.1
    """
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"`dropout` must be in [0, 1); received dropout={dropout!r}.")
    config = backbone.get_config()
    rates = {"Dropout": "rate", "TransformerBlock": "dropout"}
    layers = [layer for layer in config["layers"] if layer["class_name"] in rates]
    if all(layer["config"][rates[layer["class_name"]]] == dropout for layer in layers):
        return backbone
    for layer in layers:
        layer["config"][rates[layer["class_name"]]] = dropout
    rebuilt = backbone.__class__.from_config(config)
    rebuilt.set_weights(backbone.get_weights())
    return rebuilt


def bert_pretrainer(backbone, name="bert_pretrainer"):
    """Adds BERT's masked-LM and next-sentence heads to a `bert_backbone`.

    The MLM head runs only on the masked positions: their states are
    gathered, then dense + GELU + layer norm, then a projection to the
    vocabulary with the token embedding table itself (one variable: the
    embedding and the output share it, as in BERT) plus a per-token bias. The
    NSP head is a 2-way dense layer on the pooled output. Both return float32
    logits, also under mixed precision. Train with `pretraining_compile_args()`.

    Only the masked positions and `[CLS]` reach the heads, so the last block
    computes its outputs at those positions only (`query_positions`; keys
    and values still come from every position). The logits are the same as
    gathering from the backbone's full output, for about 60% less of the
    last block's work.

    Args:
        backbone: a model from `bert_backbone`; its layers are shared, so
            training the pretrainer trains the backbone.
        name: model name.

    Returns:
        A functional `keras.Model`: the backbone's inputs plus
        `masked_positions` `(batch, max_predictions)` int32 →
        `{"mlm": (batch, max_predictions, vocab_size), "nsp": (batch, 2)}` logits
        (NSP class 1 = "B follows A").
    """
    embedding = backbone.get_layer("embedding")
    d_model = embedding.embedding_dim
    inputs = dict(backbone.input)  # .input keeps the names; .inputs is a list in sorted-key order
    inputs["masked_positions"] = keras.Input(shape=(None,), dtype="int32", name="masked_positions")
    states = _last_block_at(backbone, inputs, ops.concatenate(
        [ops.zeros_like(inputs["masked_positions"][:, :1]), inputs["masked_positions"]], axis=1))
    pooled_output = backbone.get_layer("pooler")(states[:, 0, :])
    masked = states[:, 1:, :]
    x = keras.layers.Dense(d_model, activation="gelu", kernel_initializer=_initializer(),
                           name="mlm_transform")(masked)
    x = keras.layers.LayerNormalization(epsilon=1e-12, name="mlm_norm")(x)
    x = OutputBias(name="mlm_bias")(embedding(x, reverse=True))
    mlm = keras.layers.Activation("linear", dtype="float32", name="mlm")(x)
    nsp = keras.layers.Dense(2, kernel_initializer=_initializer(), name="nsp_dense")(pooled_output)
    nsp = keras.layers.Activation("linear", dtype="float32", name="nsp")(nsp)
    return keras.Model(inputs, {"mlm": mlm, "nsp": nsp}, name=name)


def _last_block_at(backbone, inputs, positions):
    """The backbone's final states `(batch, len(positions), d_model)` at `positions` only.

    Reruns its last block (and final norm) on that block's own input with
    `query_positions`, so the other positions' outputs are never computed.
    """
    num_layers = sum(layer.name.startswith("block_") for layer in backbone.layers)
    last_input = backbone.get_layer(f"block_{num_layers - 2}" if num_layers > 1 else "embedding_dropout").output
    states = backbone.get_layer(f"block_{num_layers - 1}")(
        last_input, padding_mask=inputs["padding_mask"], query_positions=positions)
    if any(layer.name == "final_norm" for layer in backbone.layers):
        states = backbone.get_layer("final_norm")(states)
    return states


def pretraining_compile_args():
    """Loss and metrics for `bert_pretrainer`: loss = MLM + NSP cross-entropy; MLM and NSP accuracy.

    The MLM loss and accuracy average over real predictions only: the data
    gives `masked_weights` as the MLM sample weight (see
    `kerazoo.text.pretraining_dataset`), and the loss divides by their sum.

    Returns:
        A dict of `loss`, `metrics` and `weighted_metrics` for `model.compile`
        (or `kerazoo.training.compile_model`).
    """
    return dict(
        loss={"mlm": keras.losses.SparseCategoricalCrossentropy(from_logits=True,
                                                                reduction="mean_with_sample_weight"),
              "nsp": keras.losses.SparseCategoricalCrossentropy(from_logits=True)},
        metrics={"nsp": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]},
        weighted_metrics={"mlm": [keras.metrics.SparseCategoricalAccuracy(name="accuracy")]})


def bert_classifier(backbone, num_classes=2, dropout=0.1, name="bert_classifier"):
    """A sequence classifier on a `bert_backbone`: dropout and a softmax layer on the pooled output.

    Args:
        backbone: a model from `bert_backbone` (pretrained or not); its layers
            are shared.
        num_classes: output classes (>= 2).
        dropout: dropout rate before the classification layer.
        name: model name.

    Only `[CLS]` reaches the pooler, so the last block computes its output
    there only (see `bert_pretrainer`).

    Returns:
        A functional `keras.Model` from the backbone's inputs to float32
        probabilities `(batch, num_classes)`; the new layers are
        `classifier_dropout` and `classifier`.
    """
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"`num_classes` must be an integer >= 2; received num_classes={num_classes!r}.")
    inputs = dict(backbone.input)
    cls_state = _last_block_at(backbone, inputs, ops.zeros_like(inputs["padding_mask"][:, :1]))[:, 0, :]
    pooled_output = backbone.get_layer("pooler")(cls_state)
    x = keras.layers.Dropout(dropout, name="classifier_dropout")(pooled_output)
    # Zero-initialised: fine-tuning starts from uniform probabilities. A random
    # kernel drawn from the same seeded stream as the pretraining run can line
    # up with the saturated pooled output and start at 99% for one class.
    probabilities = keras.layers.Dense(num_classes, activation="softmax", kernel_initializer="zeros",
                                       dtype="float32", name="classifier")(x)
    return keras.Model(inputs, probabilities, name=name)


FINETUNE_MODES = ("full", "frozen", "top-k")


def set_finetune_mode(classifier, mode, top_k=None):
    """Chooses which layers of a `bert_classifier` train; call it before compiling.

    - `"full"`: every layer.
    - `"frozen"`: only the classification layer; the pretrained encoder,
      pooler included, is a fixed feature extractor.
    - `"top-k"`: the last `top_k` Transformer blocks, the final norm of a
      pre-norm stack, the pooler and the classification layer.

    Args:
        classifier: a model from `bert_classifier`.
        mode: one of `FINETUNE_MODES`.
        top_k: blocks to train with `"top-k"` (1 ... number of blocks).

    Returns:
        The names of the layers that train, in model order.
    """
    if mode not in FINETUNE_MODES:
        raise ValueError(f"`mode` must be one of {FINETUNE_MODES}; received mode={mode!r}.")
    blocks = [layer.name for layer in classifier.layers if layer.name.startswith("block_")]
    if mode == "top-k" and (not isinstance(top_k, int) or not 1 <= top_k <= len(blocks)):
        raise ValueError(f"`top_k` must be an integer in [1, {len(blocks)}] (the model's blocks) for mode "
                         f"'top-k'; received top_k={top_k!r}.")
    trainable = {"full": None, "frozen": {"classifier"},
                 "top-k": {"classifier", "pooler", "final_norm", *blocks[len(blocks) - (top_k or 0):]}}[mode]
    for layer in classifier.layers:
        layer.trainable = trainable is None or layer.name in trainable
    return [layer.name for layer in classifier.layers if layer.trainable and layer.weights]


@keras.saving.register_keras_serializable(package="kerazoo")
class OutputBias(keras.layers.Layer):
    """Adds a learned bias, one per feature of the last axis (the MLM head's per-token bias).

    Example:

    >>> tuple(OutputBias()(keras.ops.zeros((2, 5))).shape)
    (2, 5)
    """

    def build(self, input_shape):
        self.bias = self.add_weight(shape=(input_shape[-1],), initializer="zeros", name="bias")

    def call(self, inputs):
        return inputs + ops.cast(self.bias, inputs.dtype)
