"""Training setup: pick precision, XLA and a tf.distribute strategy, build under them, compile with AdamW."""

import contextlib
import dataclasses
import hashlib
import json
import os
import platform
import statistics
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf

from kerazoo import nonfinite
from kerazoo.data.corpus import prefetched
from kerazoo.native_logs import quiet_native_logs

PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
STRATEGIES = ("default", "mirrored", "multi-worker", "tpu")
# Seen with TF 2.21 on a CPU: under mirrored, XLA cannot reach a replica's
# variables on another logical device ("Trying to access resource ...
# located in device CPU:1"); under multi-worker, the collective all-reduce
# does not convert to XLA ("tf2xla conversion failed"). Keras's own
# jit_compile="auto" turns XLA off under tf.distribute too.
_NO_XLA_UNDER_STRATEGY = ("XLA and auto-clustering off: a tf.distribute step does not compile with XLA here "
                          "(as Keras's jit_compile='auto' decides)")
# Ends the reason of a CPU plan chosen without timing mixed_bfloat16.
_NO_BF16_NOTE = (" (mixed_bfloat16 not timed: this CPU has no bfloat16 instructions (avx512_bf16, amx_bf16), so "
                 "bfloat16 would only be converted to float32 around each kernel; --precision mixed_bfloat16 "
                 "forces it)")
_strategies = {}  # name -> this process's one instance (collective ops are configured once per process)
# TF_XLA_FLAGS that restrict CPU auto-clustering to element-wise ops (layer
# norms, GELUs, softmaxes), leaving matmuls to oneDNN's bfloat16 kernels.
# TensorFlow parses TF_XLA_FLAGS once, at the first traced function.
_FUSIBLE_FLAG = "--tf_xla_ops_to_cluster=FUSIBLE"
_fusible_parsed_here = False


@dataclasses.dataclass(frozen=True)
class TrainingPlan:
    """How to train on this machine.

    Attributes:
        precision: Keras dtype policy: "float32", "mixed_bfloat16" or "mixed_float16".
        jit_compile: whether `model.compile` should XLA-compile the train step.
        reason: one line saying why, for logs.
        xla_fusion: without `jit_compile`, let XLA fuse only the element-wise
            ops (auto-clustering), leaving matmuls to oneDNN. Process-wide
            TensorFlow settings, so they are on only inside `scope()`.
        strategy: one of `STRATEGIES`; `scope()` enters that
            `tf.distribute` strategy (see `strategy`).
    """

    precision: str
    jit_compile: bool
    reason: str
    xla_fusion: bool = False
    strategy: str = "default"

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

    @contextlib.contextmanager
    def scope(self):
        """Builds, compiles and trains inside this block: the strategy, the dtype policy and, for `xla_fusion`, auto-clustering.

        Keras traces its train/test functions at their first call, so `fit`
        and `evaluate` must run inside the block for the fusion to apply. On
        exit TensorFlow's JIT settings are restored to what they were. Models
        and optimizers built here live under the plan's `tf.distribute`
        strategy (their variables mirrored on every replica).

        Example:

        >>> plan = TrainingPlan("float32", True, "example")
        >>> with plan.scope():
        ...     keras.config.dtype_policy().name
        'float32'
        """
        with contextlib.ExitStack() as stack:
            if self.strategy != "default":
                stack.enter_context(strategy(self.strategy).scope())
            stack.enter_context(self.policy_scope())
            if self.xla_fusion:
                stack.enter_context(_fusible_auto_clustering())
            yield self

    def to_dict(self):
        """The plan as a JSON-ready dict (saved next to checkpoints and in TensorBoard)."""
        return dataclasses.asdict(self)


def select_plan(precision="auto", jit_compile="auto", strategy="default"):
    """Chooses precision and XLA by rule, without timing anything.

    On a GPU: XLA always; `mixed_bfloat16` where the GPU supports it (compute
    capability >= 8.0), else `mixed_float16`. On a CPU, "auto" means float32
    with XLA: XLA and bfloat16 do not combine there (XLA's CPU backend does not
    use the bfloat16 matmul units that oneDNN uses), and whether bfloat16,
    or float32 without XLA, is faster depends on the model, so `choose_plan`
    times them.
    A CPU plan in mixed_bfloat16 without XLA gets `xla_fusion` where
    TensorFlow can still restrict auto-clustering to element-wise ops.
    On a TPU, "auto" is mixed_bfloat16 (TPUStrategy compiles with XLA
    itself). Under `mirrored` and `multi-worker`, XLA is off, even when
    asked for, with the reason in the plan: the distributed step fails to
    compile on a CPU, and Keras's "auto" rule turns it off under
    tf.distribute on GPUs too.

    Args:
        precision: "auto" or one of `PRECISIONS`.
        jit_compile: "auto" or a bool; "auto" follows the rules above for the
            chosen precision.
        strategy: one of `STRATEGIES`, recorded in the plan.

    Returns:
        A `TrainingPlan`.

    Example:

    >>> select_plan("float32").jit_compile
    True
    """
    _check_plan_options(precision, jit_compile, strategy)
    gpus = tf.config.list_physical_devices("GPU")
    if strategy == "tpu":
        precision = "mixed_bfloat16" if precision == "auto" else precision
        return TrainingPlan(precision, False, f"TPU: {precision}; TPUStrategy compiles every step with XLA itself",
                            strategy=strategy)
    distributed = strategy != "default"
    if gpus:
        if precision == "auto":
            capability = tf.config.experimental.get_device_details(gpus[0]).get("compute_capability")
            precision = "mixed_bfloat16" if capability and capability >= (8, 0) else "mixed_float16"
        jit = (True if jit_compile == "auto" else jit_compile) and not distributed
        return TrainingPlan(precision, jit, f"GPU ({len(gpus)}): {precision}, jit_compile={jit}"
                            + (f"; {_NO_XLA_UNDER_STRATEGY}" if distributed else ""), strategy=strategy)
    reason = "CPU: default" if precision == "auto" else f"CPU: precision {precision} requested"
    precision = "float32" if precision == "auto" else precision
    jit = (precision == "float32") if jit_compile == "auto" else jit_compile
    if distributed:
        jit, reason = False, f"{reason}; {_NO_XLA_UNDER_STRATEGY}"
    wants_fusion = not jit and precision == "mixed_bfloat16" and not distributed
    fusion = wants_fusion and fusible_clustering_available()
    why_not = (f" (needs TF_XLA_FLAGS={_FUSIBLE_FLAG} before TensorFlow starts)"
               if wants_fusion and not fusion else "")
    return TrainingPlan(precision, jit, f"{reason} -> {precision}, jit_compile={jit}, "
                        f"xla_fusion={fusion}{why_not}", xla_fusion=fusion, strategy=strategy)


def candidate_plans(precision="auto", jit_compile="auto", strategy="default"):
    """The plans `choose_plan` times: those the options allow on this device.

    On a GPU (or with the precision pinned) there is a single candidate, the
    rule of `select_plan`. On a CPU, "auto" precision tries float32 and
    mixed_bfloat16, each with its own jit rule unless `jit_compile` is pinned,
    and with "auto" jit float32 without XLA too (TensorFlow's oneDNN
    kernels beat XLA's for some models, e.g. BERT pretraining here); no
    mixed_bfloat16 where the CPU has no bfloat16 instructions
    (`cpu_bfloat16_instructions`).
    Under `multi-worker` and `tpu` there is a single candidate too: every
    worker must run the same plan, and each would time its own.

    Args:
        precision: "auto" or one of `PRECISIONS`.
        jit_compile: "auto" or a bool.
        strategy: one of `STRATEGIES`.

    Returns:
        A list of `TrainingPlan`s.
    """
    _check_plan_options(precision, jit_compile, strategy)
    if strategy in ("multi-worker", "tpu"):
        plan = select_plan(precision, jit_compile, strategy)
        return [dataclasses.replace(plan, reason=f"{plan.reason} (not timed under {strategy}: every worker "
                                                 "must run the same plan)")]
    if precision != "auto" or tf.config.list_physical_devices("GPU"):
        return [select_plan(precision, jit_compile, strategy)]
    no_bfloat16 = cpu_bfloat16_instructions() is False
    precisions = ("float32",) if no_bfloat16 else ("float32", "mixed_bfloat16")
    plans = [select_plan(p, jit_compile, strategy) for p in precisions]
    if jit_compile == "auto" and plans[0].jit_compile:
        plans.insert(1, select_plan("float32", False, strategy))
    note = _NO_BF16_NOTE if no_bfloat16 else ""
    return [dataclasses.replace(plan, reason=plan.reason + note) for plan in plans]


def cpu_bfloat16_instructions():
    """Whether this CPU computes in bfloat16 natively (AVX512_BF16, AMX or Arm's BF16), read from /proc/cpuinfo.

    Without them oneDNN converts bfloat16 to float32 around every kernel, so
    mixed_bfloat16 is slower than float32 (a 1024x1024 matmul: 0.74x on an
    AMD EPYC Zen 2), and `candidate_plans` does not time it.

    Returns:
        True or False; None where /proc/cpuinfo cannot tell (then both
        precisions are timed).

    Example:

    >>> cpu_bfloat16_instructions() in (True, False, None)
    True
    """
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = set()
            for line in f:
                if line.split(":", 1)[0].strip() in ("flags", "Features"):
                    flags.update(line.split(":", 1)[1].split())
    except OSError:
        return None
    if not flags:
        return None
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def choose_plan(build, batch, precision="auto", jit_compile="auto", steps=4, cache_path=None,
                step_time=None, print_fn=print, strategy="default"):
    """Picks the plan for this model by timing a few real training steps under each candidate.

    Each candidate (`candidate_plans`) builds and compiles the model with
    `build(plan)` inside `plan.scope()`, runs one step (the compile) and then
    `steps` timed steps on `batch`. The fastest wins; what was tried is
    printed and the choice is cached by model signature and machine in a
    JSON file, so later runs reuse it without timing (and a rerun on a loaded
    machine cannot silently switch numerics). Edit or ship that file to pin a
    plan; `--precision`/`--jit-compile` pin it too.

    Every candidate starts from the same initial weights, and the winner's
    model is returned with its weights, optimizer state and metrics reset to
    before the timed steps, its compiled train step kept (no second compile).

    Args:
        build: `build(plan) -> keras.Model`, built and compiled for the plan
            (called inside `plan.scope()`).
        batch: an `(inputs, targets)` training batch of the real shape.
        precision, jit_compile: as for `select_plan`; pinned values shrink
            the candidates.
        steps: timed steps per candidate.
        cache_path: the JSON cache (default: `$KERAZOO_PLAN`, else
            `~/.cache/kerazoo/plans.json`); False: no cache.
        step_time: `step_time(model, plan, batch, steps) -> seconds per step`;
            default times steps of `model.fit` with `time.perf_counter`.
            Tests inject a fake here.
        print_fn: where the summary line goes.
        strategy: one of `STRATEGIES`: candidates are built and timed under
            it (`batch` is then the global batch).

    Returns:
        `(plan, model)`.
    """
    candidates = candidate_plans(precision, jit_compile, strategy)
    step_time = step_time or _time_train_steps
    if cache_path is None:
        cache_path = plan_cache_path()
    models = {}
    first = candidates[0]
    with first.scope():
        models[first] = build(first)
    if len(candidates) == 1:
        print_fn(f"plan: {first.reason}")
        return first, models[first]
    initial_weights = models[first].get_weights()
    key = f"{machine_signature()}|{model_signature(models[first], batch)}"
    if strategy != "default":
        key += f"|{strategy} x{_strategies[strategy].num_replicas_in_sync}"
    cached = _read_plan_cache(cache_path, key) if cache_path else None
    if cached is not None:
        plan = TrainingPlan(cached["precision"], cached["jit_compile"],
                            f"cached in {cache_path}: {cached['reason']}",
                            xla_fusion=cached["xla_fusion"] and fusible_clustering_available(),
                            strategy=strategy)
        print_fn(f"plan: {plan.reason}")
        if (plan.precision, plan.jit_compile, plan.xla_fusion) == (
                first.precision, first.jit_compile, first.xla_fusion):
            return plan, models[first]
        with plan.scope():
            model = build(plan)
        model.set_weights(initial_weights)
        return plan, model
    seconds = {}
    for plan in candidates:
        with plan.scope():
            if plan not in models:
                models[plan] = build(plan)
                models[plan].set_weights(initial_weights)
            seconds[plan] = _timed_and_reset(models[plan], plan, batch, steps, step_time)
    best = min(candidates, key=seconds.get)
    tried = ", ".join(f"{_plan_label(p)} {seconds[p] * 1e3:.1f} ms/step" for p in candidates)
    untimed = "" if any(p.precision == "mixed_bfloat16" for p in candidates) else _NO_BF16_NOTE
    plan = dataclasses.replace(best, reason=f"timed {steps} steps of this model: {tried} -> {_plan_label(best)}"
                                            + untimed)
    print_fn(f"plan: {plan.reason}")
    if cache_path:
        _write_plan_cache(cache_path, key, plan)
    return plan, models[best]


def plan_cache_path():
    """Where `choose_plan` caches its choices: `$KERAZOO_PLAN`, else `~/.cache/kerazoo/plans.json`."""
    if os.environ.get("KERAZOO_PLAN"):
        return os.environ["KERAZOO_PLAN"]
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "kerazoo", "plans.json")


def machine_signature():
    """CPU model, core count, GPUs and TensorFlow/Keras versions: what a timed plan depends on besides the model."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    gpus = [tf.config.experimental.get_device_details(g).get("device_name", "GPU")
            for g in tf.config.list_physical_devices("GPU")]
    return f"{cpu}; {os.cpu_count()} cores; {','.join(gpus) or 'no GPU'}; TF {tf.__version__}; Keras {keras.__version__}"


def model_signature(model, batch):
    """A short hash of the model's layers and weight shapes, its optimizer and the batch shapes.

    Example:

    >>> inputs = keras.Input((3,))
    >>> model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    >>> len(model_signature(model, (np.zeros((4, 3)), np.zeros((4, 2)))))
    16
    """
    parts = [type(layer).__name__ for layer in model._flatten_layers()]
    parts += [tuple(w.shape) for w in model.weights]
    parts += [type(getattr(model, "optimizer", None)).__name__]
    parts += [(tuple(np.shape(t)), str(getattr(t, "dtype", ""))) for t in tf.nest.flatten(batch)]
    return hashlib.sha256(repr(parts).encode()).hexdigest()[:16]


def fusible_clustering_available():
    """Whether XLA auto-clustering can be restricted to element-wise ops in this process.

    TensorFlow reads TF_XLA_FLAGS once, when it first traces a function. If
    that has not happened yet, this parses them now with
    `--tf_xla_ops_to_cluster=FUSIBLE` added (only auto-clustering turned on
    later is affected: off by default) and restores `TF_XLA_FLAGS`. If it has,
    the restriction is available only when the user's TF_XLA_FLAGS had it.

    Returns:
        bool.
    """
    global _fusible_parsed_here
    user_flags = os.environ.get("TF_XLA_FLAGS", "")
    if _fusible_parsed_here or "tf_xla_ops_to_cluster=FUSIBLE" in user_flags:
        return True
    if "tf_xla_cpu_global_jit" in user_flags or "tf_xla_ops_to_cluster" in user_flags:
        return False  # the user's own clustering flags: leave them alone
    os.environ["TF_XLA_FLAGS"] = f"{user_flags} --tf_xla_cpu_global_jit {_FUSIBLE_FLAG}".strip()
    try:
        # Returns the previous value: True only if the flags were parsed just now, from our string.
        parsed_now = bool(_set_cpu_global_jit(False))
    finally:
        if user_flags:
            os.environ["TF_XLA_FLAGS"] = user_flags
        else:
            del os.environ["TF_XLA_FLAGS"]
    if parsed_now:
        _fusible_parsed_here = True
    return _fusible_parsed_here


@contextlib.contextmanager
def _fusible_auto_clustering():
    previous_jit = tf.config.optimizer.get_jit()
    previous_global = _set_cpu_global_jit(True)
    tf.config.optimizer.set_jit("autoclustering")
    try:
        yield
    finally:
        tf.config.optimizer.set_jit(previous_jit or False)
        _set_cpu_global_jit(previous_global)


def _set_cpu_global_jit(enabled):
    from tensorflow.python.client import _pywrap_tf_session  # the only handle on this XLA flag

    return _pywrap_tf_session.TF_SetTfXlaCpuGlobalJit(int(bool(enabled)))


def _check_plan_options(precision, jit_compile, strategy="default"):
    if strategy not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES}; received {strategy!r}.")
    if precision != "auto" and precision not in PRECISIONS:
        raise ValueError(f"`precision` must be 'auto' or one of {PRECISIONS}; received {precision!r}.")
    if jit_compile != "auto" and not isinstance(jit_compile, bool):
        raise ValueError(f"`jit_compile` must be 'auto', True or False; received {jit_compile!r}.")


def _plan_label(plan):
    return plan.precision + (" + XLA" if plan.jit_compile else " + XLA fusion" if plan.xla_fusion else "")


def _time_train_steps(model, plan, batch, steps):
    """Median seconds of `steps` training steps through `fit` (its first step, the compile, is not counted).

    `fit` traces the same functions the real training will call, so the
    winner's real `fit` on batches of this shape starts without a new compile.
    """
    timer = StepTimer()
    model.fit(prefetched(tf.data.Dataset.from_tensors(batch).repeat()), steps_per_epoch=steps + 1, epochs=1, verbose=0,
              callbacks=[timer], shuffle=False)
    return statistics.median(timer.seconds[1:])


class StepTimer(keras.callbacks.Callback):
    """Wall time of every training batch, in `seconds` (the first one holds the compile).

    Example:

    >>> timer = StepTimer()
    >>> model.fit(x, y, callbacks=[timer])  # doctest: +SKIP
    >>> statistics.median(timer.seconds[1:])  # doctest: +SKIP
    """

    def __init__(self):
        super().__init__()
        self.seconds = []

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def _timed_and_reset(model, plan, batch, steps, step_time):
    """Seconds per step; the model's weights, optimizer state and metrics are put back afterwards."""
    weights = model.get_weights()
    optimizer = model.optimizer
    if optimizer is not None and not optimizer.built:
        optimizer.build(model.trainable_variables)
    optimizer_state = [v.numpy() for v in optimizer.variables] if optimizer is not None else []
    seconds = step_time(model, plan, batch, steps)
    model.set_weights(weights)
    if optimizer is not None:
        for variable, value in zip(optimizer.variables, optimizer_state):
            variable.assign(value)
    model.reset_metrics()
    return seconds


def _read_plan_cache(path, key):
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise ValueError(f"plan cache {path!r} is not valid JSON ({error}); fix or delete it.") from None
    entry = entries.get(key) if isinstance(entries, dict) else None
    if entry is None:
        return None
    if (entry.get("precision") not in PRECISIONS or not isinstance(entry.get("jit_compile"), bool)
            or not isinstance(entry.get("xla_fusion", False), bool)):
        raise ValueError(f"plan cache {path!r}: entry {key!r} must have precision in {PRECISIONS}, "
                         f"boolean jit_compile and xla_fusion; received {entry!r}.")
    return dict(entry, reason=entry.get("reason", ""), xla_fusion=entry.get("xla_fusion", False))


def _write_plan_cache(path, key, plan):
    try:
        with open(path, encoding="utf-8") as f:
            entries = json.load(f)
    except (OSError, ValueError):
        entries = {}
    entries[key] = plan.to_dict()
    write_json_atomically(path, entries)


def write_json_atomically(path, value):
    """Writes `value` as JSON to `path` through a temporary file and a rename (never half-written).

    Args:
        path: destination file.
        value: JSON-serialisable value.
    """
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(value, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


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
    # Under a strategy, Keras clips each replica's share before the all-reduce:
    # not the gradient one device would clip. ReplicatedAdamW clips the sum.
    replicated = tf.distribute.has_strategy() and tf.distribute.get_strategy().num_replicas_in_sync > 1
    return (ReplicatedAdamW if replicated else keras.optimizers.AdamW)(
        learning_rate=learning_rate, weight_decay=weight_decay, beta_1=beta_1, beta_2=beta_2,
        global_clipnorm=global_clipnorm)


@keras.saving.register_keras_serializable(package="kerazoo")
class ReplicatedAdamW(keras.optimizers.AdamW):
    """AdamW for several replicas: gradients are clipped after the all-reduce, as one device would clip them.

    Keras's optimizers clip (`global_clipnorm`, `clipnorm`, `clipvalue`) each
    replica's gradients before they are summed across replicas; each share
    is 1/replicas of a different gradient, so the clipped sum differs from
    the clipped full-batch gradient whenever clipping is active. This one
    sums first, then clips: the same update as one device on the global
    batch (tested). `adamw()` returns it when built under a strategy with
    more than one replica; with one replica it is plain AdamW.
    """

    def _clip_gradients(self, grads):
        return grads if _replicated() else super()._clip_gradients(grads)

    def _all_reduce_sum_gradients(self, grads_and_vars):
        reduced = super()._all_reduce_sum_gradients(grads_and_vars)
        if not _replicated() or not reduced:
            return reduced
        grads, variables = zip(*reduced)
        return list(zip(super()._clip_gradients(list(grads)), variables))


def _replicated():
    context = tf.distribute.get_replica_context()
    return context is not None and context.num_replicas_in_sync > 1


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
    >>> round(float(schedule(2000)), 8)
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


@keras.saving.register_keras_serializable(package="kerazoo")
class WarmupLinear(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up from 0 to `learning_rate`, then linear decay to 0 at `total_steps` (BERT's schedule).

    Args:
        learning_rate: the peak rate, reached after `warmup_steps`.
        warmup_steps: steps of linear warm-up (>= 0, < `total_steps`).
        total_steps: the step at which the rate reaches 0 (and stays).

    Example:

    >>> schedule = WarmupLinear(1e-4, 10, 110)
    >>> [round(float(schedule(step)), 8) for step in (0, 5, 10, 60, 110, 200)]
    [0.0, 5e-05, 0.0001, 5e-05, 0.0, 0.0]
    """

    def __init__(self, learning_rate, warmup_steps, total_steps):
        if not 0 <= warmup_steps < total_steps:
            raise ValueError(f"need 0 <= warmup_steps < total_steps; received warmup_steps={warmup_steps}, "
                             f"total_steps={total_steps}.")
        if not learning_rate > 0:
            raise ValueError(f"`learning_rate` must be > 0; received {learning_rate!r}.")
        self.learning_rate, self.warmup_steps, self.total_steps = learning_rate, warmup_steps, total_steps

    def __call__(self, step):
        step = keras.ops.cast(step, "float32")
        warmup = step / self.warmup_steps if self.warmup_steps else 1.0
        decay = (self.total_steps - step) / (self.total_steps - self.warmup_steps)
        return self.learning_rate * keras.ops.clip(keras.ops.minimum(warmup, decay), 0.0, 1.0)

    def get_config(self):
        return dict(learning_rate=self.learning_rate, warmup_steps=self.warmup_steps,
                    total_steps=self.total_steps)


def compile_model(model, plan, optimizer=None, loss=None, metrics=None, **compile_kwargs):
    """Compiles `model` following `plan`.

    Vectors (biases, layer-norm scales and offsets) are excluded from AdamW's
    weight decay, as in GPT-2/nanoGPT: decaying them only pulls them to zero.

    Args:
        model: a built `keras.Model` (build it inside `plan.scope()`, and
            train it there too when the plan has `xla_fusion`).
        plan: a `TrainingPlan` from `select_plan`.
        optimizer: an optimizer; defaults to `adamw()`.
        loss: the loss; defaults to sparse categorical cross-entropy on logits,
            averaged over the weighted positions: with 0/1 sample weights
            (padding) it is the mean over real tokens, where Keras's default
            reduction divides by every position, padding included.
        metrics: optional metrics.
        **compile_kwargs: passed on to `model.compile`.

    Returns:
        The model, compiled.
    """
    if not isinstance(plan, TrainingPlan):
        raise TypeError(f"`plan` must be a TrainingPlan from select_plan(); received {type(plan).__name__}.")
    optimizer = optimizer or adamw()
    if isinstance(optimizer, keras.optimizers.AdamW):
        optimizer.exclude_from_weight_decay(
            var_list=[v for v in model.trainable_variables if len(v.shape) < 2])
    loss = loss or keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="mean_with_sample_weight")
    model.compile(optimizer=optimizer, loss=loss, metrics=metrics,
                  jit_compile=plan.jit_compile, **compile_kwargs)
    return model


def with_precision(model, precision):
    """`model` with every layer in the dtype policy `precision`: itself if already so, else a rebuilt copy.

    A `.keras` file keeps the dtype policy its model was built with, so a
    backbone pretrained in mixed_bfloat16 would load, and fine-tune, in
    bfloat16 whatever the fine-tuning plan says. The copy is built from the
    model's config with each float policy replaced (quantized ones are left
    alone) and given the same weights (variables are float32 under every
    float policy).

    Args:
        model: a functional `keras.Model` (e.g. a loaded backbone).
        precision: a float dtype policy name: "float32", "mixed_bfloat16", ...

    Returns:
        A model computing in `precision`, with `model`'s weights.

    Example:

    >>> dense = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2, dtype="mixed_bfloat16")])
    >>> with_precision(dense, "float32").layers[0].dtype_policy.name
    'float32'
    """
    float_policies = ("DTypePolicy", "FloatDTypePolicy")
    layers = model._flatten_layers(include_self=False, recursive=True)
    if all(layer.dtype_policy.name == precision for layer in layers
           if type(layer.dtype_policy).__name__ in float_policies):
        return model

    def swap(node):
        if isinstance(node, dict):
            if node.get("class_name") in float_policies and isinstance(node.get("config"), dict):
                return dict(node, config=dict(node["config"], name=precision))
            return {key: swap(value) for key, value in node.items()}
        if isinstance(node, list):
            return [swap(value) for value in node]
        return node

    rebuilt = model.__class__.from_config(swap(model.get_config()))
    rebuilt.set_weights(model.get_weights())
    return rebuilt


def plan_from_flags(args, build=None, batch=None, print_fn=print):
    """The training plan the runtime flags ask for (see `recipe_flags.add_runtime_flags`).

    A checkpoint directory that already holds a plan (a resumed run) pins it,
    unless the flags pin another or ask for another strategy. Otherwise, with
    `build` and `batch`, the plan is timed per model by `choose_plan`; without
    them it follows `select_plan`. The plan carries `--strategy`: build,
    compile and fit inside `plan.scope()`.

    Args:
        args: parsed flags with `precision`, `jit_compile`, `checkpoint_dir`
            and (optionally) `strategy`.
        build: optional `build(plan) -> compiled keras.Model`.
        batch: a training batch (the global batch under a strategy), with `build`.
        print_fn: where the plan line goes.

    Returns:
        `(plan, model)`; model is None when `build` is not given.
    """
    jit = {"on": True, "off": False, "auto": "auto"}[args.jit_compile]
    strategy_name = getattr(args, "strategy", "default")
    saved = Checkpoint.saved_plan(args.checkpoint_dir) if getattr(args, "checkpoint_dir", None) else None
    if saved and saved.strategy == strategy_name and args.precision == "auto" and jit == "auto":
        plan = dataclasses.replace(saved, reason=f"from the checkpoint in {args.checkpoint_dir}: {saved.reason}",
                                   xla_fusion=saved.xla_fusion and fusible_clustering_available())
    elif build is not None:
        plan, model = choose_plan(build, batch, args.precision, jit, print_fn=print_fn, strategy=strategy_name)
        return plan, model
    else:
        plan = select_plan(args.precision, jit, strategy_name)
    print_fn(f"plan: {plan.reason}")
    if build is None:
        return plan, None
    with plan.scope():
        return plan, build(plan)


def strategy(name="default", logical_devices=2):
    """This process's `tf.distribute.Strategy` for `name`, made at the first call and reused after.

    - "default": no distribution (one device).
    - "mirrored": synchronous data parallelism over this machine's GPUs
      (all-reduce with NCCL); on a machine without GPUs, over
      `logical_devices` logical CPU devices, which TensorFlow can only set up
      before it initialises its devices: call this first thing in the process.
    - "multi-worker": `MultiWorkerMirroredStrategy`, the cluster read from
      `TF_CONFIG` (collective all-reduce over gRPC; NCCL between GPUs); make
      it at program start, on every worker (`kerazoo launch` sets TF_CONFIG).
    - "tpu": `TPUStrategy` on the TPU named by `TPU_NAME` (or this TPU VM's).

    Args:
        name: one of `STRATEGIES`.
        logical_devices: replicas of "mirrored" on a CPU-only machine (>= 1).

    Returns:
        A `tf.distribute.Strategy`; `num_replicas_in_sync` is its replica count.

    Example:

    >>> strategy("default").num_replicas_in_sync
    1
    """
    if name not in STRATEGIES:
        raise ValueError(f"`strategy` must be one of {STRATEGIES}; received {name!r}.")
    if name not in _strategies:
        make = {"default": tf.distribute.get_strategy, "mirrored": lambda: _mirrored(logical_devices),
                "multi-worker": _multi_worker, "tpu": _tpu}[name]
        _strategies[name] = make()
    return _strategies[name]


def strategy_from_flags(args, print_fn=print):
    """The strategy `--strategy` (and `--logical-devices`) ask for, with a line saying where replicas run.

    Call it first in a recipe's `run`, before any data or model: logical CPU
    devices and collective ops can only be set up before TensorFlow
    initialises its devices.

    Args:
        args: parsed flags from `recipe_flags.add_runtime_flags`.
        print_fn: where the line goes.

    Returns:
        The `tf.distribute.Strategy` (the one `plan.scope()` then enters).

    Raises:
        SystemExit: with a one-line `error: ...` when the strategy cannot be
            made (no TF_CONFIG, no TPU, devices already initialised).
    """
    try:
        made = strategy(args.strategy, args.logical_devices)
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    if args.strategy != "default":
        devices = ", ".join(d.split("/", 3)[-1].replace("device:", "") for d in made.extended.worker_devices)
        where = "" if is_chief(args.strategy) else (", not the chief: it saves like the chief, into a scratch "
                                                    "directory removed at exit")
        resolver = made.cluster_resolver
        if args.strategy == "multi-worker":
            workers = len(resolver.cluster_spec().as_dict().get("worker", [])) + len(
                resolver.cluster_spec().as_dict().get("chief", []))
            where = f"; this is {resolver.task_type} {resolver.task_id} of {workers} workers{where}"
        print_fn(f"strategy: {args.strategy}, {made.num_replicas_in_sync} replicas in sync "
                 f"(here: {devices}){where}")
    return made


def start_run(args, print_fn=print):
    """A recipe's first step: the strategy (`strategy_from_flags`), the global batch, then the seed.

    The strategy comes first: logical devices and collectives can only be
    set up before any tensor exists.

    Args:
        args: parsed flags with the runtime flags, `batch_size` (per replica)
            and `seed`.
        print_fn: where the strategy and batch lines go.

    Returns:
        The global batch size, `args.batch_size` x replicas (`plan.scope()`
        enters the strategy itself).
    """
    batch_size = global_batch_size(args.batch_size, strategy_from_flags(args, print_fn=print_fn), print_fn=print_fn)
    keras.utils.set_random_seed(args.seed)
    return batch_size


def global_batch_size(per_replica, made_strategy, print_fn=print):
    """The batch a strategy's datasets must yield: `per_replica` x replicas in sync (printed when > 1 replica).

    Keras splits each global batch across the replicas and averages the
    gradients, so one step of N replicas on a global batch matches one step
    of one device on that batch. The learning rate is not scaled: that
    choice stays with the user.

    Args:
        per_replica: examples per replica per step (a recipe's `--batch-size`).
        made_strategy: a `tf.distribute.Strategy`.
        print_fn: where the line goes.

    Returns:
        int.

    Example:

    >>> global_batch_size(16, strategy("default"))
    16
    """
    replicas = made_strategy.num_replicas_in_sync
    if replicas > 1:
        print_fn(f"batch: {per_replica} per replica x {replicas} replicas = global batch {per_replica * replicas} "
                 "(the learning rate is not scaled with it)")
    return per_replica * replicas


def is_chief(strategy_name="multi-worker"):
    """Whether this process's checkpoints, logs and models are the ones kept.

    True except for a multi-worker task other than the chief: the "chief"
    task, or worker 0 when the cluster has none (TensorFlow's convention),
    read from `TF_CONFIG`.

    Args:
        strategy_name: the strategy in use; only "multi-worker" has tasks.

    Returns:
        bool.
    """
    config = _tf_config() if strategy_name == "multi-worker" else None
    if config is None:
        return True
    cluster, task = config
    return task["type"] == "chief" or (task["type"] == "worker" and task["index"] == 0 and "chief" not in cluster)


def _tf_config():
    """`(cluster, task)` from TF_CONFIG, None when it is not set; a malformed one is a ValueError."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return None
    try:
        parsed = json.loads(raw)
        cluster, task = parsed["cluster"], parsed["task"]
        task["type"], task["index"]
    except (ValueError, KeyError, TypeError):
        raise ValueError(f"TF_CONFIG must be JSON with 'cluster' and 'task' {{'type', 'index'}}; "
                         f"received {raw!r}") from None
    return cluster, task


def _mirrored(logical_devices):
    if tf.config.list_physical_devices("GPU"):
        return tf.distribute.MirroredStrategy()  # every GPU, NCCL all-reduce
    if isinstance(logical_devices, bool) or not isinstance(logical_devices, int) or logical_devices < 1:
        raise ValueError(f"`logical_devices` must be an integer >= 1; received {logical_devices!r}.")
    cpu = tf.config.list_physical_devices("CPU")[0]
    if len(tf.config.get_logical_device_configuration(cpu) or []) != logical_devices:
        try:
            tf.config.set_logical_device_configuration(
                cpu, [tf.config.LogicalDeviceConfiguration()] * logical_devices)
        except RuntimeError:
            raise ValueError(
                f"--strategy mirrored on a machine without GPUs needs {logical_devices} logical CPU devices, "
                "which TensorFlow sets up only before it initialises its devices, and it already has in this "
                "process: make the strategy first (training.start_run at the start of the "
                "recipe's run), before any tensor is created") from None
    devices = [d.name for d in tf.config.list_logical_devices("CPU")][:logical_devices]
    return tf.distribute.MirroredStrategy(devices)


def _multi_worker():
    if _tf_config() is None:
        raise ValueError("--strategy multi-worker reads its cluster from the TF_CONFIG environment variable, "
                         "which is not set: start the workers with `kerazoo launch --workers N SCRIPT ...` "
                         "(one machine) or set TF_CONFIG on each machine (README: distributed training)")
    try:
        return _MultiWorkerMirroredStrategy()
    except RuntimeError as error:
        raise ValueError(f"--strategy multi-worker must be set up before TensorFlow initialises its devices "
                         f"(make it first in the process): {error}") from None


class _MultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """`MultiWorkerMirroredStrategy` whose `reduce` takes what Keras 3's `fit` gives it (keras#20585).

    Keras reduces a whole (nested) batch at once, and scalar logs with
    `axis=0`; the strategy's own `reduce` rejects both. This one reduces
    each element, over the replicas only when it is a scalar.
    """

    def reduce(self, reduce_op, value, axis=None):
        def reduce_one(element):
            rank = self.experimental_local_results(element)[0].shape.rank
            return super(_MultiWorkerMirroredStrategy, self).reduce(reduce_op, element,
                                                                    None if rank == 0 else axis)

        return tf.nest.map_structure(reduce_one, value)


def _tpu():
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver()  # TPU_NAME, or this TPU VM's TPU
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as error:
        message = str(error).strip().splitlines()
        raise ValueError(f"--strategy tpu: no TPU found ({message[0] if message else type(error).__name__}); "
                         "run on a TPU VM or set TPU_NAME") from None
    return tf.distribute.TPUStrategy(resolver)


def runtime_callbacks(args, plan):
    """The callbacks the runtime flags ask for: `Checkpoint` (`--checkpoint-dir`) and `TensorBoard` (`--logdir`).

    Put them after callbacks that add to the epoch logs (e.g.
    `LanguageModelProgress`), so that TensorBoard and the checkpoint see those.
    Under `multi-worker` every task restores from the same checkpoint
    directory (one every worker can read), and only the chief writes there.

    Args:
        args: parsed flags from `recipe_flags.add_runtime_flags`.
        plan: the `TrainingPlan`, recorded in the checkpoint and in TensorBoard.

    Returns:
        A list of `keras.callbacks.Callback`.
    """
    callbacks = []
    if args.logdir:
        callbacks.append(TensorBoard(args.logdir, plan))
    if args.checkpoint_dir:
        callbacks.append(Checkpoint(args.checkpoint_dir, plan, write=is_chief(plan.strategy)))
    return callbacks


def quiet_logs(args):
    """A context manager hiding TensorFlow's C++ log lines unless `--verbose` or `TF_CPP_MIN_LOG_LEVEL` is set.

    Example:

    >>> import argparse
    >>> with quiet_logs(argparse.Namespace(verbose=0)):
    ...     pass
    """
    return quiet_native_logs(enabled=not args.verbose and "TF_CPP_MIN_LOG_LEVEL" not in os.environ)


class TensorBoard(keras.callbacks.TensorBoard):
    """Keras's `TensorBoard` callback that also records the training plan as text.

    Args:
        log_dir: where event files go.
        plan: a `TrainingPlan` (or None).
        **kwargs: passed on to `keras.callbacks.TensorBoard`.
    """

    def __init__(self, log_dir, plan=None, **kwargs):
        super().__init__(log_dir, **kwargs)
        self.plan = plan

    def on_train_begin(self, logs=None):
        super().on_train_begin(logs)
        if self.plan is not None:
            writer = tf.summary.create_file_writer(os.path.join(self.log_dir, "plan"))
            with writer.as_default():
                tf.summary.text("plan", json.dumps(self.plan.to_dict()), step=0)
            writer.close()


class Checkpoint(keras.callbacks.Callback):
    """Resumable training: saves weights and optimizer state after every epoch, restores them at the start.

    Each save writes `epoch-NNNNN.weights.h5` through a temporary file and a
    rename, then points `checkpoint.json` at it the same way, so a process
    killed at any moment (SIGKILL included) leaves the previous complete
    checkpoint in place; older files are removed afterwards. The plan is
    saved in `plan.json` next to them. Starting `fit` again with the same
    directory loads the last checkpoint and continues at the next epoch
    (`initial_epoch` is set), printing from which one. Weights holding a NaN
    or infinity (a diverged run) are not saved: the last good checkpoint stays.

    Args:
        directory: the checkpoint directory (created).
        plan: optional `TrainingPlan`, saved as `plan.json`.
        print_fn: where the "resumed" line goes.
        write: False for a multi-worker task other than the chief: it
            restores from `directory` and saves like the chief (the save
            may run collective ops that need every worker), into a scratch
            directory it deletes.

    Attributes:
        initial_epoch: epochs already done according to the checkpoint (0 if none).
    """

    def __init__(self, directory, plan=None, print_fn=print, write=True):
        super().__init__()
        self.directory, self.plan, self.print_fn, self.write = os.fspath(directory), plan, print_fn, write
        state = self._state()
        self.initial_epoch = state["epoch"] if state else 0

    @staticmethod
    def saved_plan(directory):
        """The `TrainingPlan` saved in `directory` (None if there is none)."""
        path = os.path.join(directory, "plan.json")
        if not os.path.exists(path):
            return None
        with open(path, encoding="utf-8") as f:
            return TrainingPlan(**json.load(f))

    def _state(self):
        path = os.path.join(self.directory, "checkpoint.json")
        if not os.path.exists(path):
            return None
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        if not os.path.exists(os.path.join(self.directory, state["weights"])):
            raise ValueError(f"checkpoint {path!r} names {state['weights']!r}, which is missing.")
        return state

    def on_train_begin(self, logs=None):
        if self.write:
            self._prepare_directory()
        state = self._state()
        if state is None:
            return
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(os.path.join(self.directory, state["weights"]))
        self.initial_epoch = self.model._initial_epoch = state["epoch"]
        self.print_fn(f"resumed from {self.directory}: {state['epoch']} epochs done "
                      f"(optimizer step {int(self.model.optimizer.iterations.numpy())})")

    def _prepare_directory(self):
        os.makedirs(self.directory, exist_ok=True)
        for name in os.listdir(self.directory):
            if name.startswith(".tmp-"):  # left by a process killed while writing
                os.remove(os.path.join(self.directory, name))
        if self.plan is not None:
            write_json_atomically(os.path.join(self.directory, "plan.json"), self.plan.to_dict())

    def on_epoch_end(self, epoch, logs=None):
        try:  # a diverged model never replaces the last good checkpoint
            nonfinite.check_finite_weights(self.model)
        except FloatingPointError as error:
            self.print_fn(f"checkpoint of epoch {epoch + 1} not saved: {error}; {self.directory} keeps "
                          "the last good one")
            return
        if not self.write:
            with tempfile.TemporaryDirectory() as scratch:
                self.model.save_weights(os.path.join(scratch, "scratch.weights.h5"))
            return
        name = f"epoch-{epoch + 1:05d}.weights.h5"
        tmp = os.path.join(self.directory, f".tmp-{os.getpid()}-{name}")
        self.model.save_weights(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, os.path.join(self.directory, name))
        write_json_atomically(os.path.join(self.directory, "checkpoint.json"),
                              {"epoch": epoch + 1, "weights": name})
        for old in os.listdir(self.directory):
            if old.startswith("epoch-") and old.endswith(".weights.h5") and old != name:
                os.remove(os.path.join(self.directory, old))


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
    nanoGPT's `estimate_loss`, so they are comparable with each other; each
    estimate reads the next batches of the two streams (fresh random windows
    from `lm_dataset`), not the same first ones again. The figures are added
    to the epoch logs as `train_loss`, `val_loss`, `val_perplexity` and
    `tokens_per_second`, so `History`, `EarlyStopping`, `TensorBoard` and
    checkpoints placed after this callback see them. With `total_steps`,
    training stops there even inside an epoch (a last, shorter interval).

    Args:
        train_data, validation_data: datasets of (inputs, targets) batches,
            sampled for the estimates (keep `train_data` separate from the
            stream `fit` reads).
        steps_per_epoch: training steps between evaluations.
        tokens_per_step: batch size x sequence length.
        eval_batches: batches per loss estimate.
        total_steps: stop after this many steps (default: run all epochs).
        print_fn: where lines go.

    Attributes:
        history: list of dicts (step, train_loss, val_loss, seconds).
        first_step_seconds: wall time of the first training step (tracing
            and compiling included).
    """

    def __init__(self, train_data, validation_data, steps_per_epoch, tokens_per_step, eval_batches=20,
                 total_steps=None, print_fn=print):
        super().__init__()
        self.train_data, self.validation_data = train_data, validation_data
        self.steps_per_epoch, self.tokens_per_step = steps_per_epoch, tokens_per_step
        self.eval_batches, self.total_steps, self.print_fn = eval_batches, total_steps, print_fn
        self.history = []
        self.first_step_seconds = None
        self._step = self._resumed_at = None

    def estimate(self, step):
        """Train and validation loss at `step`, each on the next `eval_batches` batches of its stream."""
        skip = (self._resumed_at or 0) + len(self.history)
        losses = [float(np.ravel(self.model.evaluate(ds.skip(skip * self.eval_batches), steps=self.eval_batches,
                                                     verbose=0))[0])
                  for ds in (self.train_data, self.validation_data)]
        self.history.append(dict(step=step, train_loss=losses[0], val_loss=losses[1],
                                 seconds=time.perf_counter() - self._start))
        return losses

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()
        self._step, self._resumed_at = None, None

    def on_epoch_begin(self, epoch, logs=None):
        if self._step is None:  # the first epoch of this run: epoch > 0 when resumed
            self._step = epoch * self.steps_per_epoch
            self._resumed_at = epoch
            train_loss, val_loss = self.estimate(self._step)
            self.print_fn(f"step {self._step:5d}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, "
                          f"val perplexity {np.exp(val_loss):.2f}")
        self._epoch_start, self._epoch_first_step = time.perf_counter(), self._step

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1
        if self.first_step_seconds is None:
            self.first_step_seconds = time.perf_counter() - self._epoch_start
            self.print_fn(f"first step: {self.first_step_seconds:.1f}s (tracing and compiling)")
        if self.total_steps is not None and self._step >= self.total_steps:
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        elapsed = time.perf_counter() - self._epoch_start
        tokens_per_second = (self._step - self._epoch_first_step) * self.tokens_per_step / elapsed
        train_loss, val_loss = self.estimate(self._step)
        self.print_fn(f"step {self._step:5d}: train loss {train_loss:.4f}, val loss {val_loss:.4f}, "
                      f"val perplexity {np.exp(val_loss):.2f}, {tokens_per_second:,.0f} tokens/s")
        if logs is not None:
            logs.update(train_loss=train_loss, val_loss=val_loss, val_perplexity=float(np.exp(val_loss)),
                        tokens_per_second=tokens_per_second)

    def on_train_end(self, logs=None):
        if self._step is None:  # resumed from a checkpoint that had every epoch done
            self._resumed_at = int(self.model.optimizer.iterations.numpy()) // self.steps_per_epoch
            train_loss, val_loss = self.estimate(int(self.model.optimizer.iterations.numpy()))
            self.print_fn(f"nothing left to train: train loss {train_loss:.4f}, val loss {val_loss:.4f}")


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


class TimeBudget(keras.callbacks.Callback):
    """Stops training once `seconds` of wall time have passed (checked after every batch).

    For comparisons at equal wall-clock time. `elapsed` holds the training
    time when `fit` returns, `stopped_early` whether the budget ended it.

    Example:

    >>> model.fit(data, epochs=100, callbacks=[TimeBudget(600)])  # doctest: +SKIP
    """

    def __init__(self, seconds):
        super().__init__()
        if not seconds > 0:
            raise ValueError(f"`seconds` must be > 0; received {seconds!r}.")
        self.seconds = seconds
        self.elapsed = 0.0
        self.stopped_early = False

    def on_train_begin(self, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.elapsed = time.perf_counter() - self._start
        if self.elapsed >= self.seconds:
            self.stopped_early = self.model.stop_training = True
