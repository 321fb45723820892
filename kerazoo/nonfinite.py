"""The non-finite guard: training stops at the first NaN/Inf loss, and a diverged model is never saved.

Keras's `TerminateOnNaN` stops `fit`, but `fit` then returns normally and a
script goes on to save and export NaN weights (TF Serving serves the newest
version). `NonFiniteGuard` stops the same way and remembers where;
`check` raises afterwards, before anything is written.
"""

import math

import keras
import numpy as np


class NonFiniteGuard(keras.callbacks.Callback):
    """Stops training at the first batch or epoch whose logged loss (or any logged value) is NaN or infinite.

    Call `check(model)` after `fit` and before saving: it raises
    `FloatingPointError` if training diverged or a weight is not finite.

    Attributes:
        diverged: None, or a description of the first non-finite value
            (which value, its epoch and step).

    Example:

    >>> guard = NonFiniteGuard()
    >>> model.fit(x, y, epochs=3, callbacks=[guard])  # doctest: +SKIP
    >>> guard.check(model)  # raises FloatingPointError if the loss went NaN  # doctest: +SKIP
    """

    def __init__(self):
        super().__init__()
        self.diverged = None
        self._epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self._inspect(logs, f"epoch {self._epoch + 1}, step {batch + 1}", keys=("loss",))

    def on_epoch_end(self, epoch, logs=None):
        self._inspect(logs, f"end of epoch {epoch + 1}")

    def _inspect(self, logs, where, keys=None):
        if self.diverged or not logs:
            return
        for key in keys or sorted(logs):
            value = logs.get(key)
            if value is None or np.size(value) != 1:
                continue
            value = float(np.asarray(value).reshape(()))
            if not math.isfinite(value):
                self.diverged = f"{key} = {value} at {where}"
                self.model.stop_training = True
                return

    def check(self, model=None):
        """Raises `FloatingPointError` if training diverged or (given `model`) a weight is not finite.

        Args:
            model: the trained model whose weights are about to be saved
                (default: the model the guard watched).
        """
        if self.diverged:
            raise FloatingPointError(
                f"training diverged ({self.diverged}); stopped there, and nothing was saved or "
                "exported: lower the learning rate or check the data")
        check_finite_weights(model if model is not None else self.model)


def check_finite_weights(model):
    """Raises `FloatingPointError` naming the first weight of `model` holding a NaN or infinity.

    Args:
        model: a `keras.Model` (or layer).
    """
    for variable in model.weights:
        if not keras.backend.is_float_dtype(variable.dtype):
            continue
        values = keras.ops.convert_to_numpy(keras.ops.cast(variable.value, "float32"))
        if not np.isfinite(values).all():
            bad = int(np.size(values) - np.isfinite(values).sum())
            raise FloatingPointError(
                f"weight {variable.path!r} holds {bad} non-finite values: the model diverged, so it is "
                "not saved or exported")
