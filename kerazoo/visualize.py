"""Pictures: attention maps of any model built from MultiHeadSelfAttention, accuracy-vs-shots curves, bar charts.

matplotlib is imported only inside the functions that draw (`pip install
kerazoo[plots]`), so `import kerazoo` stays light.
"""

import dataclasses
import os

import keras
import numpy as np
import tensorflow as tf


@dataclasses.dataclass(frozen=True)
class AttentionMap:
    """Attention probabilities of one layer for one text.

    Attributes:
        scores: `(num_heads, seq, seq)` float array (or `(seq, seq)` for one
            head); row i is how query position i distributes its attention
            over the key positions (each row sums to 1).
        tokens: the `seq` tokens as strings.
        layer: index of the attention layer.
        head: the head shown, or None for all.
    """

    scores: np.ndarray
    tokens: list
    layer: int
    head: int = None


def attention_layers(model):
    """The `MultiHeadSelfAttention` layers of a functional model, in order, with the layer whose input feeds each.

    Args:
        model: a functional `keras.Model` whose layers include
            `TransformerBlock`s or `MultiHeadSelfAttention` layers (LMs from
            `models.transformer_lm`, BERT-style encoders).

    Returns:
        A list of `(attention layer, outer layer)` pairs: the outer layer is
        the block holding the attention, or the attention layer itself.
    """
    from kerazoo.layers import MultiHeadSelfAttention, TransformerBlock

    found = []
    for layer in model.layers:
        if isinstance(layer, TransformerBlock):
            found.append((layer.attention, layer))
        elif isinstance(layer, MultiHeadSelfAttention):
            found.append((layer, layer))
    return found


def attention_maps(model, tokenizer, text, layer=0, head=None, path=None):
    """Attention probabilities of one layer for `text`, optionally drawn as a labelled heat map.

    The model runs up to the chosen layer's input; the layer is then called
    again with `return_attention_scores=True` (after its block's layer norm
    for pre-norm blocks), so the model itself is unchanged.

    Args:
        model: a functional model with `MultiHeadSelfAttention` layers (see
            `attention_layers`): one token-id input (a `transformer_lm`), or
            the dict inputs of `models.bert_backbone` (a BERT backbone,
            classifier or pretrainer).
        tokenizer: a `kerazoo.text` tokenizer for a token-id input; a
            `text.BertPreprocessor` for BERT inputs (its `[CLS]`/`[SEP]` are
            shown, its padding is cut off).
        text: the input text.
        layer: index among the attention layers (negative counts from the end).
        head: one head, or None for all.
        path: where to write a PNG (one panel per head shown); None: no picture.

    Returns:
        An `AttentionMap`.

    Example:

    >>> maps = attention_maps(lm, tokenizer, "a=3 b=5 a=", layer=1, path="attention.png")  # doctest: +SKIP
    >>> maps.scores.shape                                                                # doctest: +SKIP
    (4, 10, 10)
    """
    layers = attention_layers(model)
    if not layers:
        raise ValueError(f"model {model.name!r} has no MultiHeadSelfAttention layers (directly or in "
                         "TransformerBlocks) among its layers.")
    if not isinstance(layer, int) or not -len(layers) <= layer < len(layers):
        raise ValueError(f"`layer` must be an integer in [{-len(layers)}, {len(layers)}); received {layer!r}.")
    layer = layer % len(layers)
    attention, outer = layers[layer]
    inputs, ids, padding_mask, token_tokenizer = _encode(model, tokenizer, text)
    x = _input_of(model, outer, inputs)(inputs, training=False)
    if outer is not attention and outer.norm_first:
        x = outer.attention_norm(x)
    _, scores = attention(x, padding_mask=padding_mask, return_attention_scores=True, training=False)
    scores = tf.cast(scores, tf.float32).numpy()[0]
    if head is not None:
        if not isinstance(head, int) or not 0 <= head < scores.shape[0]:
            raise ValueError(f"`head` must be an integer in [0, {scores.shape[0]}); received {head!r}.")
        scores = scores[head]
    tokens = [_token_text(token_tokenizer, i) for i in ids.numpy()[0]]
    maps = AttentionMap(scores, tokens, layer, head)
    if path is not None:
        _draw_attention(maps, path)
    return maps


def plot_accuracy_vs_shots(series, path, chance=None, title="In-context learning"):
    """Writes a PNG of accuracy against the number of demonstrations, with 95% intervals.

    Args:
        series: a list of `icl.ShotAccuracy` (one curve), or a dict of
            curve name → such a list.
        path: the PNG to write.
        chance: chance accuracy, drawn as a dashed line.
        title: the figure title.

    Returns:
        `path`.
    """
    from matplotlib.figure import Figure

    series = series if isinstance(series, dict) else {"accuracy": series}
    figure = Figure(figsize=(6, 4), dpi=120, layout="constrained")
    axes = figure.subplots()
    shots = sorted({r.shots for results in series.values() for r in results})
    position = {k: i for i, k in enumerate(shots)}  # evenly spaced: shot counts usually double
    for name, results in series.items():
        x = [position[r.shots] for r in results]
        y = np.array([r.accuracy for r in results])
        low, high = np.array([r.interval for r in results]).T
        axes.errorbar(x, y, yerr=[y - low, high - y], marker="o", capsize=4, label=name)
    if chance is not None:
        axes.axhline(chance, color="grey", linestyle="--", label=f"chance ({chance:.2f})")
    axes.set_xticks(range(len(shots)), [str(k) for k in shots])
    axes.set_xlabel("demonstrations in the prompt (shots)")
    axes.set_ylabel("accuracy (95% interval)")
    axes.set_ylim(0, 1.02)
    axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    _save(figure, path)
    return path


def bar_chart(categories, panels, path, title=None, log_panels=()):
    """Writes a PNG of grouped bars: one panel per quantity, one bar group per category.

    Args:
        categories: names along the x axis (e.g. fine-tuning methods).
        panels: a dict of y-axis label → a dict of series name → one value per category.
        path: the PNG to write.
        title: the figure title.
        log_panels: y-axis labels of the panels drawn on a log scale.

    Returns:
        `path`.
    """
    from matplotlib.figure import Figure

    figure = Figure(figsize=(max(6.0, 0.8 * len(categories) + 2), 3.2 * len(panels)), dpi=120,
                    layout="constrained")
    x = np.arange(len(categories))
    for axes, (ylabel, series) in zip(np.atleast_1d(figure.subplots(len(panels), 1, sharex=True)), panels.items()):
        width = 0.8 / len(series)
        for i, (name, values) in enumerate(series.items()):
            axes.bar(x + (i - (len(series) - 1) / 2) * width, values, width, label=name)
        if ylabel in log_panels:
            axes.set_yscale("log")
        axes.set_ylabel(ylabel)
        axes.grid(axis="y", alpha=0.3)
        if len(series) > 1:
            axes.legend(fontsize=8)
        axes.set_xticks(x, categories, rotation=30, ha="right")
    if title:
        figure.suptitle(title)
    _save(figure, path)
    return path


def _draw_attention(maps, path):
    from matplotlib.figure import Figure

    panels = maps.scores[None] if maps.head is not None else maps.scores
    heads = [maps.head] if maps.head is not None else list(range(len(panels)))
    columns = min(len(panels), 2)
    rows = -(-len(panels) // columns)
    seq = len(maps.tokens)
    side = min(12.0, max(3.5, 0.22 * seq))
    font = max(4, min(10, 260 / max(seq, 1)))
    figure = Figure(figsize=(side * columns + 1, side * rows), dpi=110, layout="constrained")
    for i, (scores, h) in enumerate(zip(panels, heads)):
        axes = figure.add_subplot(rows, columns, i + 1)
        image = axes.imshow(scores, cmap="viridis", vmin=0.0, vmax=1.0, interpolation="nearest")
        axes.set_xticks(range(seq), maps.tokens, rotation=90, fontsize=font, fontfamily="monospace")
        axes.set_yticks(range(seq), maps.tokens, fontsize=font, fontfamily="monospace")
        axes.set_xlabel("key (attended to)")
        axes.set_ylabel("query position")
        axes.set_title(f"layer {maps.layer}, head {h}")
    figure.colorbar(image, ax=figure.axes, shrink=0.8, label="attention probability")
    _save(figure, path)


def _save(figure, path):
    """Writes the PNG atomically (a temporary file, then a rename)."""
    path = os.fspath(path)
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}.png")
    try:
        figure.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _encode(model, tokenizer, text):
    """`(model inputs, token ids, padding mask, tokenizer of single ids)` for one text, padding cut off."""
    takes_dict = isinstance(model.input, dict)
    encoded = tokenizer(tf.constant([text]))
    if takes_dict != isinstance(encoded, dict):
        wanted = "a BertPreprocessor (dict inputs)" if takes_dict else "a tokenizer of token ids"
        raise ValueError(f"model {model.name!r} takes {sorted(model.input) if takes_dict else 'one token-id input'}; "
                         f"`tokenizer` must be {wanted}, received {type(tokenizer).__name__}.")
    if takes_dict:
        length = int(tf.reduce_sum(encoded["padding_mask"][0]))
        inputs = {key: value[:, :length] for key, value in encoded.items() if key in model.input}
        ids, padding_mask, tokenizer = inputs["token_ids"], inputs.get("padding_mask"), tokenizer.tokenizer
    else:
        ids = inputs = encoded.to_tensor()
        padding_mask = None
    if ids.shape[1] == 0:
        raise ValueError("`text` has no tokens.")
    return inputs, ids, padding_mask, tokenizer


def _input_of(model, layer, inputs):
    """The sub-model from the inputs given (a subset, for a pretrainer's extra inputs) to `layer`'s input.

    A block called as `block(x, padding_mask=mask)` lists both tensors as its
    input; the hidden states `x` come first.
    """
    hidden = layer.input[0] if isinstance(layer.input, (list, tuple)) else layer.input
    if isinstance(inputs, dict):
        return keras.Model({key: model.input[key] for key in inputs}, hidden)
    return keras.Model(model.input, hidden)


def _token_text(tokenizer, token_id):
    text = tokenizer.detokenize(tf.constant([[token_id]])).numpy()[0].decode("utf-8", "replace")
    return {" ": "␣", "\n": "\\n", "\t": "\\t", "": "·"}.get(text, text)
