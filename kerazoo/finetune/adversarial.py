"""Adversarial training on the input embeddings: FGM (Miyato et al., 2017) and PGD (Madry et al., 2018)."""

import keras
import tensorflow as tf

from kerazoo.layers import TokenAndPositionEmbedding


class AdversarialModel(keras.Model):
    """Trains a model on clean plus adversarial loss, the adversary perturbing its token embedding table.

    Each step computes the gradient `g` of the loss with respect to the token
    embedding table and adds `r = epsilon * g / ||g||` (FGM: the L2-norm-
    epsilon step that raises the loss most to first order; `g` is non-zero
    only on the rows of the batch's tokens, so this perturbs exactly the
    batch's input embeddings). With `pgd_steps > 1`, `r` is refined by
    `pgd_steps` steps of size `epsilon / pgd_steps` projected back on the
    epsilon ball (PGD). The weights are updated with the gradient of
    `loss(clean) + loss(perturbed)`; the table itself is restored exactly
    after each step. Works with any set of trainable weights, frozen
    embeddings included. TensorFlow backend.

    Args:
        model: a model whose token ids go through a `TokenAndPositionEmbedding`.
        epsilon: L2 norm of the perturbation.
        pgd_steps: 1 for FGM, more for PGD.

    Example:

    >>> from kerazoo import models
    >>> lm = models.transformer_lm(vocab_size=50, max_length=8, d_model=16, num_heads=2, num_layers=1, ff_dim=32)
    >>> adversarial = AdversarialModel(lm, epsilon=1.0)
    >>> adversarial.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    """

    def __init__(self, model, epsilon=1.0, pgd_steps=1, **kwargs):
        super().__init__(name=kwargs.pop("name", f"adversarial_{model.name}"), **kwargs)
        if not epsilon > 0:
            raise ValueError(f"`epsilon` must be positive; received epsilon={epsilon!r}.")
        if not isinstance(pgd_steps, int) or pgd_steps < 1:
            raise ValueError(f"`pgd_steps` must be a positive integer; received pgd_steps={pgd_steps!r}.")
        embeddings = [layer for layer in model.layers if isinstance(layer, TokenAndPositionEmbedding)]
        if not embeddings:
            raise ValueError(f"model {model.name!r} has no TokenAndPositionEmbedding to perturb.")
        self.model = model
        self.epsilon = epsilon
        self.pgd_steps = pgd_steps
        self.table = embeddings[0].token_embedding.embeddings
        self.adversarial_loss_tracker = keras.metrics.Mean(name="adversarial_loss")

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    def perturbation(self, x, y, sample_weight=None):
        """The adversarial change of the embedding table for one batch: FGM's, or PGD's after `pgd_steps`.

        Returns:
            A tensor of the table's shape with L2 norm `epsilon` (at most, for PGD).
        """
        original = tf.identity(self.table)
        delta = tf.zeros_like(original)
        step = self.epsilon / self.pgd_steps
        for _ in range(self.pgd_steps):
            with tf.GradientTape() as tape:
                tape.watch(self.table.value)
                self.table.assign(original + delta)
                loss = self._loss(x, y, sample_weight)
            grad = tf.convert_to_tensor(tape.gradient(loss, self.table.value))
            delta = delta + step * grad / (tf.norm(grad) + 1e-12)
            delta = delta * tf.minimum(1.0, self.epsilon / (tf.norm(delta) + 1e-12))
        self.table.assign(original)
        return delta

    def train_step(self, data):
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        variables = self.trainable_variables
        original = tf.identity(self.table)
        delta = self.perturbation(x, y, sample_weight)
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            clean = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            self._loss_tracker.update_state(clean, sample_weight=tf.shape(tf.nest.flatten(x)[0])[0])
            self.table.assign(original + delta)
            adversarial = self._loss(x, y, sample_weight)
            total = self.optimizer.scale_loss(clean + adversarial)
        grads = tape.gradient(total, variables)
        self.table.assign(original)
        self.optimizer.apply(grads, variables)
        self.adversarial_loss_tracker.update_state(adversarial)
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def _loss(self, x, y, sample_weight):
        """The compiled loss on `(x, y)` (`compute_loss` does not touch the loss metric)."""
        return self.compute_loss(x=x, y=y, y_pred=self(x, training=True), sample_weight=sample_weight,
                                 training=True)
