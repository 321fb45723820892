"""Training setup: pick precision and XLA for the device, build under that policy, compile with AdamW."""

import contextlib
import dataclasses
import functools
import os
import statistics
import time

# Flags that TensorFlow reads once, at its first graph optimisation, so they
# are set on import. They change nothing until a plan turns XLA
# auto-clustering on (`xla_fusion`); then they restrict it to element-wise
# ops on the CPU, fusing layer norms, GELUs and softmaxes while matmuls stay
# with oneDNN's bfloat16 kernels.
_FUSION_FLAGS = ("--tf_xla_cpu_global_jit", "--tf_xla_ops_to_cluster=FUSIBLE")
_flags = os.environ.get("TF_XLA_FLAGS", "")
if "tf_xla_ops_to_cluster" not in _flags:
    os.environ["TF_XLA_FLAGS"] = " ".join([_flags, *_FUSION_FLAGS]).strip()

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
# bfloat16 without XLA must beat float32 with XLA by this factor on a matmul
# before the CPU plan switches to it: the rest of a training step (casts,
# layer norms, softmax) does not speed up with it.
_BFLOAT16_MIN_SPEEDUP = 1.3


@dataclasses.dataclass(frozen=True)
class TrainingPlan:
    """How to train on this machine.

    Attributes:
        precision: Keras dtype policy: "float32", "mixed_bfloat16" or "mixed_float16".
        jit_compile: whether `model.compile` should XLA-compile the train step.
        reason: one line saying why, for logs.
        xla_fusion: without `jit_compile`, let XLA fuse only the element-wise
            ops (auto-clustering), leaving matmuls to oneDNN. A process-wide
            TensorFlow setting, turned on by `compile_model`.
    """

    precision: str
    jit_compile: bool
    reason: str
    xla_fusion: bool = False

    @contextlib.contextmanager
    def policy_scope(self):
        """Builds models inside this block with the plan's dtype policy.

        Example:

        >>> plan = select_plan(precision="float32", jit_compile=True)
        >>> with plan.policy_scope():
        ...     model = build_my_model()  # doctest: +SKIP
        """
        previous = keras.config.dtype_policy()
        keras.config.set_dtype_policy(self.precision)
        try:
            yield self
        finally:
            keras.config.set_dtype_policy(previous)


def select_plan(precision="auto", jit_compile="auto"):
    """Chooses precision and XLA for the visible devices.

    On a GPU: XLA always; `mixed_bfloat16` where the GPU supports it (compute
    capability >= 8.0), else `mixed_float16`. On a CPU, XLA and bfloat16 do not
    combine (XLA's CPU backend does not use the bfloat16 matmul units that
    oneDNN uses), so the plan is either float32 with XLA or mixed_bfloat16
    without it, whichever a short matmul probe (about a second, once per
    process) finds faster; with mixed_bfloat16, XLA still fuses the
    element-wise ops between the matmuls (`xla_fusion`).

    Args:
        precision: "auto" or one of `PRECISIONS`.
        jit_compile: "auto" or a bool; "auto" follows the rules above for the
            chosen precision.

    Returns:
        A `TrainingPlan`.

    Example:

    >>> plan = select_plan()
    >>> plan.precision in PRECISIONS
    True
    """
    if precision != "auto" and precision not in PRECISIONS:
        raise ValueError(f"`precision` must be 'auto' or one of {PRECISIONS}; received {precision!r}.")
    if jit_compile != "auto" and not isinstance(jit_compile, bool):
        raise ValueError(f"`jit_compile` must be 'auto', True or False; received {jit_compile!r}.")
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        if precision == "auto":
            capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability")
            precision = "mixed_bfloat16" if capability and capability >= (8, 0) else "mixed_float16"
        jit = True if jit_compile == "auto" else jit_compile
        return TrainingPlan(precision, jit, f"GPU ({len(gpus)}): XLA with {precision}")
    if precision == "auto":
        speedup = cpu_bfloat16_speedup()
        precision = "mixed_bfloat16" if speedup >= _BFLOAT16_MIN_SPEEDUP else "float32"
        reason = (f"CPU: bfloat16 matmul (no XLA) is {speedup:.2f}x float32 matmul (XLA); "
                  f"threshold {_BFLOAT16_MIN_SPEEDUP}x")
    else:
        reason = f"CPU: precision {precision} requested"
    jit = (precision == "float32") if jit_compile == "auto" else jit_compile
    fusion = not jit and precision == "mixed_bfloat16"
    return TrainingPlan(precision, jit, f"{reason} -> {precision}, jit_compile={jit}, "
                        f"xla_fusion={fusion}", xla_fusion=fusion)


@functools.lru_cache(maxsize=None)
def cpu_bfloat16_speedup(size=1024, repeats=5):
    """Speed of a bfloat16 matmul without XLA relative to a float32 matmul with XLA.

    Args:
        size: side of the square matrices.
        repeats: timed repetitions; the median is used.

    Returns:
        float, > 1 when bfloat16 (oneDNN) is faster.
    """
    return (matmul_gflops(tf.bfloat16, False, size, repeats) /
            matmul_gflops(tf.float32, True, size, repeats))


def matmul_gflops(dtype, jit_compile, size=2048, repeats=5):
    """Median GFLOP/s of a square matmul (4 back to back per sample).

    Args:
        dtype: a TensorFlow float dtype.
        jit_compile: whether the matmul runs under XLA.
        size: side of the square matrices.
        repeats: timed samples.

    Returns:
        float.
    """
    a = tf.cast(tf.random.normal((size, size)), dtype)
    matmul = tf.function(lambda m: tf.matmul(m, m), jit_compile=jit_compile, autograph=False)
    matmul(a).numpy()  # trace and compile
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(4):
            result = matmul(a)
        result.numpy()
        samples.append(4 * 2 * size ** 3 / (time.perf_counter() - start) / 1e9)
    return statistics.median(samples)


def adamw(learning_rate=1e-3, weight_decay=0.1, beta_1=0.9, beta_2=0.99, global_clipnorm=None):
    """AdamW with the usual language-model defaults (nanoGPT's betas).

    Use with `compile_model`, which excludes biases and norm parameters from
    weight decay.

    Args:
        learning_rate: float or a `keras.optimizers.schedules` schedule.
        weight_decay: decoupled weight decay for matrices.
        beta_1, beta_2: Adam moment decay rates.
        global_clipnorm: clip the gradients so that their global norm is at
            most this (None: no clipping).

    Returns:
        A `keras.optimizers.AdamW`.
    """
    return keras.optimizers.AdamW(learning_rate=learning_rate, weight_decay=weight_decay,
                                  beta_1=beta_1, beta_2=beta_2, global_clipnorm=global_clipnorm)


def warmup_cosine(learning_rate, warmup_steps, total_steps, min_learning_rate=0.0):
    """Linear warm-up from 0 to `learning_rate`, then cosine decay to `min_learning_rate` at `total_steps`.

    Args:
        learning_rate: the peak rate, reached after `warmup_steps`.
        warmup_steps: steps of linear warm-up (>= 0).
        total_steps: the step at which the rate reaches `min_learning_rate`.
        min_learning_rate: the final rate.

    Returns:
        A `keras.optimizers.schedules.CosineDecay`.

    Example:

    >>> schedule = warmup_cosine(1e-3, 100, 2000, 1e-4)
    >>> float(schedule(2000))
    0.0001
    """
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(f"need 0 <= warmup_steps < total_steps; received warmup_steps={warmup_steps}, "
                         f"total_steps={total_steps}.")
    if not 0 <= min_learning_rate <= learning_rate:
        raise ValueError(f"need 0 <= min_learning_rate <= learning_rate; received "
                         f"{min_learning_rate} and {learning_rate}.")
    return keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0 if warmup_steps else learning_rate,
        decay_steps=total_steps - warmup_steps, alpha=min_learning_rate / learning_rate,
        warmup_target=learning_rate if warmup_steps else None, warmup_steps=warmup_steps)


def compile_model(model, plan, optimizer=None, loss=None, metrics=None, **compile_kwargs):
    """Compiles `model` following `plan`.

    Vectors (biases, layer-norm scales and offsets) are excluded from AdamW's
    weight decay, as in GPT-2/nanoGPT: decaying them only pulls them to zero.

    Args:
        model: a built `keras.Model` (build it inside `plan.policy_scope()`).
        plan: a `TrainingPlan` from `select_plan`.
        optimizer: an optimizer; defaults to `adamw()`.
        loss: the loss; defaults to sparse categorical cross-entropy on logits.
        metrics: optional metrics.
        **compile_kwargs: passed on to `model.compile`.

    Returns:
        The model, compiled.
    """
    if not isinstance(plan, TrainingPlan):
        raise TypeError(f"`plan` must be a TrainingPlan from select_plan(); received {type(plan).__name__}.")
    if plan.xla_fusion:
        # Global (not per model): functions traced from now on auto-cluster
        # element-wise ops. Functions already running keep their graphs.
        tf.config.optimizer.set_jit("autoclustering")
    optimizer = optimizer or adamw()
    if isinstance(optimizer, keras.optimizers.AdamW):
        optimizer.exclude_from_weight_decay(
            var_list=[v for v in model.trainable_variables if len(v.shape) < 2])
    loss = loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics,
                  jit_compile=plan.jit_compile, **compile_kwargs)
    return model


class EpochTimer(keras.callbacks.Callback):
    """Records the wall time of each epoch in `durations` (seconds).

    Example:

    >>> timer = EpochTimer()
    >>> model.fit(x, y, epochs=3, callbacks=[timer])  # doctest: +SKIP
    >>> len(timer.durations)                           # doctest: +SKIP
    3
    """

    def __init__(self):
        super().__init__()
        self.durations = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.durations.append(time.perf_counter() - self._start)


class LanguageModelProgress(keras.callbacks.Callback):
    """Prints step, train/validation loss, perplexity and tokens/s every epoch (= evaluation interval).

    Both losses are measured on `eval_batches` batches of each dataset, as
    nanoGPT's `estimate_loss`, so they are comparable with each other.

    Args:
        train_data, validation_data: datasets of (inputs, targets) batches.
        steps_per_epoch: training steps between evaluations.
        tokens_per_step: batch size x sequence length.
        eval_batches: batches per loss estimate.
        print_fn: where lines go.

    Attributes:
        history: list of dicts (step, train_loss, val_loss, seconds).
    """

    def __init__(self, train_data, validation_data, steps_per_epoch, tokens_per_step, eval_batches=20,
                 print_fn=print):
        super().__init__()
        self.train_data, self.validation_data = train_data, validation_data
        self.steps_per_epoch, self.tokens_per_step = steps_per_epoch, tokens_per_step
        self.eval_batches, self.print_fn = eval_batches, print_fn
        self.history = []

    def estimate(self, step):
        train_loss = self.model.evaluate(self.train_data, steps=self.eval_batches, verbose=0)
        val_loss = self.model.evaluate(self.validation_data, steps=self.eval_batches, verbose=0)
        train_loss, val_loss = (float(np.ravel(v)[0]) for v in (train_loss, val_loss))
        self.history.append(dict(step=step, train_loss=train_loss, val_loss=val_loss,
                                 seconds=time.perf_counter() - self._start))
        return train_loss, val_loss

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()
        train_loss, val_loss = self.estimate(0)
        self.print_fn(f"step     0: train loss {train_loss:.4f}, val loss {val_loss:.4f}, "
                      f"val perplexity {np.exp(val_loss):.2f}")
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        elapsed = time.perf_counter() - self._epoch_start
        step = (epoch + 1) * self.steps_per_epoch
        train_loss, val_loss = self.estimate(step)
        self.print_fn(f"step {step:5d}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, "
                      f"val perplexity {np.exp(val_loss):.2f}, "
                      f"{self.steps_per_epoch * self.tokens_per_step / elapsed:,.0f} tokens/s")
        self._epoch_start = time.perf_counter()


def save_keras_atomically(model, path):
    """Saves `model` to `path` (a `.keras` file) without ever leaving a half-written file there.

    Writes a temporary file in the same directory, then renames it over `path`.

    Args:
        model: the model.
        path: destination ending in `.keras`.
    """
    path = os.fspath(path)
    if not path.endswith(".keras"):
        raise ValueError(f"`path` must end in .keras; received {path!r}.")
    directory = os.path.dirname(path) or "."
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)[:-6]}.tmp-{os.getpid()}.keras")
    try:
        model.save(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
