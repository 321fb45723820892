"""Prompt tuning: a `SoftPrompt` spliced in front of the first Transformer block of a frozen model."""

import keras
from keras import ops

from kerazoo.finetune.freezing import head_weights, layer_groups, train_only
from kerazoo.layers import SoftPrompt, TransformerBlock


def prompt_tune(model, num_prompts, insert_at=None, train_head=True):
    """A model that inserts `num_prompts` trainable vectors before the first block; the base is frozen.

    The new model shares every layer (and weight) of `model` and has the same
    inputs and outputs: the prompt positions are inserted into the input of
    the first `TransformerBlock`, every block's padding mask is extended with
    real positions, and the prompt positions are removed from the last
    block's output (or, when the last block computes selected positions
    only, `query_positions`, those positions are shifted past the prompt).
    Tokens keep their position embeddings. Call before compiling.

    Args:
        model: a functional kerazoo Transformer model.
        num_prompts: number of prompt vectors.
        insert_at: first prompt position (default: 1 when the model has a
            BERT `pooler`, which reads the `[CLS]` state at position 0; else 0).
        train_head: whether the head's weights (the layers after the last block) train too.

    Returns:
        The prompt-tuned `keras.Model`; its `SoftPrompt` layer is named `soft_prompt`.

    Example:

    >>> from kerazoo import models
    >>> lm = models.transformer_lm(vocab_size=50, max_length=8, d_model=16, num_heads=2, num_layers=1, ff_dim=32)
    >>> tuned = prompt_tune(lm, 4)
    >>> tuple(tuned(keras.ops.ones((2, 8), "int32")).shape)
    (2, 8, 50)
    """
    blocks = [layer for name, layers in layer_groups(model).items() if name.startswith("block_") for layer in layers]
    if insert_at is None:
        insert_at = 1 if any(layer.name == "pooler" for layer in model.layers) else 0
    prompt = SoftPrompt(num_prompts, insert_at=insert_at, name="soft_prompt")
    extended = {}

    def call(layer, *args, **kwargs):
        if not isinstance(layer, TransformerBlock):
            return layer(*args, **kwargs)
        x, *rest = args
        if layer is blocks[0]:
            if kwargs.get("padding_mask") is not None:
                x, extended["mask"] = prompt(x, padding_mask=kwargs["padding_mask"])
            else:
                x = prompt(x)
        if kwargs.get("padding_mask") is not None:
            kwargs["padding_mask"] = extended["mask"]
        if kwargs.get("query_positions") is not None:
            # Outputs at selected positions only (bert_pretrainer, bert_classifier): the
            # tokens at or after insert_at have moved num_prompts places right.
            positions = kwargs["query_positions"]
            kwargs["query_positions"] = positions + num_prompts * ops.cast(positions >= insert_at, positions.dtype)
            return layer(x, *rest, **kwargs)
        outputs = layer(x, *rest, **kwargs)
        return prompt(outputs, strip=True) if layer is blocks[-1] else outputs

    tuned = keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call)
    train_only(tuned, head_weights(tuned) if train_head else [])
    return tuned
