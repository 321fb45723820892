"""A language-model task: backbone, tokenizer and decoding in one model that saves as one `.keras` file."""

import keras
import numpy as np
import tensorflow as tf

from kerazoo import generation


@keras.saving.register_keras_serializable(package="kerazoo")
class CausalLM(keras.Model):
    """A causal LM task (as KerasHub's backbone / tokenizer / task split): text in, text out.

    It holds a `transformer_lm` backbone and the tokenizer it was trained
    with; the tokenizer's vocabulary is part of the config, so the `.keras`
    file alone restores both. Called on token ids it is the backbone (train
    it with `fit` like any model); `generate` continues strings with
    `kerazoo.generation`; `export_saved_model` writes the prompt-in,
    text-out SavedModel of `kerazoo.export.export_text_generator`. The
    backbone is checked for the decoding contract at construction: a model
    `generation` cannot decode is an error naming the offending layer.

    Args:
        backbone: a `kerazoo.models.transformer_lm` model.
        tokenizer: a `kerazoo.text` tokenizer (`CharTokenizer`, `WordPieceTokenizer`).
        **kwargs: base `Model` arguments (`name`, ...).

    Call arguments:
        token_ids: `(batch, seq)` int ids.

    Returns:
        `(batch, seq, vocab_size)` float32 logits.

    Example:

    >>> from kerazoo import models, text
    >>> tokenizer = text.CharTokenizer.learn(["hello world"])
    >>> lm = models.CausalLM(models.transformer_lm(tokenizer.vocabulary_size, max_length=32, d_model=16,
    ...                                            num_heads=2, num_layers=1, ff_dim=32), tokenizer)
    >>> len(lm.generate(["hello"], max_new_tokens=4, jit_compile=False)[0]) <= 4
    True
    """

    def __init__(self, backbone, tokenizer, **kwargs):
        super().__init__(**kwargs)
        generation.check_decodable(backbone)
        if tokenizer.vocabulary_size != backbone.get_layer("embedding").vocab_size:
            raise ValueError(f"the tokenizer has {tokenizer.vocabulary_size} tokens but the backbone's "
                             f"vocabulary is {backbone.get_layer('embedding').vocab_size}.")
        self.backbone = backbone
        self.tokenizer = tokenizer
        self.built = True  # the backbone holds every weight, already built

    def call(self, token_ids, training=None):
        return self.backbone(token_ids, training=training)

    def generate(self, prompts, max_new_tokens=32, **sampling):
        """Continues each prompt (the continuations only; they may end early at `stop_token`).

        Prompts keep their last tokens when longer than the context allows; an
        empty prompt starts from `[UNK]`, as in the exported signature.

        Args:
            prompts: a string or a list of strings.
            max_new_tokens: tokens to add.
            **sampling: `generation.generate` arguments (`strategy`,
                `temperature`, `top_k`, `top_p`, `stop_token`, `seed`,
                `jit_compile`).

        Returns:
            A string per prompt (a string for a string).
        """
        single = isinstance(prompts, str)
        prompts = [prompts] if single else list(prompts)
        max_prompt = self.backbone.get_layer("embedding").max_length - max_new_tokens
        if max_prompt < 1:
            raise ValueError(f"`max_new_tokens`={max_new_tokens} leaves no room for a prompt in the "
                             f"context of {max_prompt + max_new_tokens} tokens.")
        ids = [row[-max_prompt:] or [self.tokenizer.unk_id]
               for row in self.tokenizer(tf.constant(prompts, tf.string)).to_list()]
        out = generation.generate(self.backbone, ids, max_new_tokens, **sampling)
        new_ids = np.stack([row[len(prompt):len(prompt) + max_new_tokens] for row, prompt in zip(out, ids)])
        texts = [t.decode("utf-8", "replace") for t in self.tokenizer.detokenize(tf.constant(new_ids)).numpy()]
        return texts[0] if single else texts

    def export_saved_model(self, directory, name, **kwargs):
        """Writes the TF Serving SavedModel (`kerazoo.export.export_text_generator`).

        Args:
            directory, name: where (`<directory>/<name>/<version>/`).
            **kwargs: other `export_text_generator` arguments.

        Returns:
            The path of the new version directory.
        """
        from kerazoo import export  # export depends on the models, not the other way round

        return export.export_text_generator(self.backbone, self.tokenizer, directory, name, **kwargs)

    def get_config(self):
        return {"name": self.name, "backbone": keras.saving.serialize_keras_object(self.backbone),
                "tokenizer": keras.saving.serialize_keras_object(self.tokenizer)}

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        backbone = keras.saving.deserialize_keras_object(config.pop("backbone"))
        tokenizer = keras.saving.deserialize_keras_object(config.pop("tokenizer"))
        return cls(backbone, tokenizer, **config)
