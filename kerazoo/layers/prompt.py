"""Soft prompt (Lester et al., 2021): trainable vectors inserted among a sequence's embeddings."""

import keras
from keras import ops

from kerazoo.layers._validation import check_rank


@keras.saving.register_keras_serializable(package="kerazoo")
class SoftPrompt(keras.layers.Layer):
    """Inserts `num_prompts` trainable vectors into `(batch, seq, d_model)` embeddings, or takes them out.

    Prompt tuning trains only these vectors (and usually a task head) and
    leaves the pretrained network frozen. They go in at position
    `insert_at`: 0 prepends them (a language model), 1 keeps a leading
    `[CLS]` token first (BERT, whose pooler reads position 0). The padding
    mask grows by as many real (1) positions. The same layer called with
    `strip=True` removes the prompt positions again, so a model's outputs
    keep their original shape. Initialised uniformly in [-0.5, 0.5], one of
    Lester et al.'s choices.

    Args:
        num_prompts: number of prompt vectors.
        insert_at: index of the first prompt position.
        initializer: initializer of the `(num_prompts, d_model)` table.
        **kwargs: base `Layer` arguments.

    Call arguments:
        inputs: `(batch, seq, d_model)` embeddings (hidden states with `strip=True`).
        padding_mask: optional `(batch, seq)` mask, 1 for real tokens; returned extended.
        strip: remove the prompt positions instead of inserting them.

    Returns:
        `(batch, seq + num_prompts, d_model)` (`(batch, seq - num_prompts, d_model)`
        with `strip=True`); with a `padding_mask`, also the `(batch, seq + num_prompts)` mask.

    Example:

    >>> prompt = SoftPrompt(3, insert_at=1)
    >>> x, mask = prompt(keras.ops.zeros((2, 5, 8)), padding_mask=keras.ops.ones((2, 5), "int32"))
    >>> tuple(x.shape), tuple(mask.shape), tuple(prompt(x, strip=True).shape)
    ((2, 8, 8), (2, 8), (2, 5, 8))
    """

    def __init__(self, num_prompts, insert_at=0, initializer=None, **kwargs):
        super().__init__(**kwargs)
        for arg, value, low in (("num_prompts", num_prompts, 1), ("insert_at", insert_at, 0)):
            if not isinstance(value, int) or value < low:
                raise ValueError(f"`{arg}` must be an integer >= {low}; received {arg}={value!r}.")
        self.num_prompts = num_prompts
        self.insert_at = insert_at
        self.initializer = keras.initializers.get(
            initializer or keras.initializers.RandomUniform(-0.5, 0.5))

    def build(self, inputs_shape, padding_mask_shape=None):
        check_rank(self, inputs_shape, 3, "(batch, seq, d_model)")
        self.prompts = self.add_weight(shape=(self.num_prompts, inputs_shape[-1]), initializer=self.initializer,
                                       name="prompts")

    def call(self, inputs, padding_mask=None, strip=False):
        head, tail = inputs[:, :self.insert_at], inputs[:, self.insert_at:]
        if strip:
            return ops.concatenate([head, tail[:, self.num_prompts:]], axis=1)
        batch = ops.shape(inputs)[0]
        prompts = ops.broadcast_to(ops.cast(self.prompts, inputs.dtype)[None],
                                   (batch, self.num_prompts, ops.shape(inputs)[-1]))
        outputs = ops.concatenate([head, prompts, tail], axis=1)
        if padding_mask is None:
            return outputs
        real = ops.ones((batch, self.num_prompts), dtype=padding_mask.dtype)
        mask = ops.concatenate([padding_mask[:, :self.insert_at], real, padding_mask[:, self.insert_at:]], axis=1)
        return outputs, mask

    def get_config(self):
        config = super().get_config()
        config.update(num_prompts=self.num_prompts, insert_at=self.insert_at,
                      initializer=keras.initializers.serialize(self.initializer))
        return config
