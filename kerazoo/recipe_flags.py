"""Recipe flag checks, run before the first training step: numbers in range, a safe export destination.

Every check raises `ValueError` naming the flag (as typed on the command
line, e.g. `--learning-rate`) and the value received. `parse_args` turns those
errors into argparse's one-line `error:` exit, so a recipe validates
everything it can before it loads data or builds a model:

    def check_flags(args):
        recipe_flags.positive(args, "epochs", "batch_size")
        recipe_flags.in_range(args, "learning_rate", low=0, low_open=True)
        recipe_flags.export_destination(args.export_dir, args.name)

    args = recipe_flags.parse_args(parser, argv, check_flags)

Checks that need the data (a sampling `top_k` against the vocabulary, a
prompt against the context) run right after the data is loaded, still before
training, inside `with recipe_flags.exit_on(ValueError):`.
"""

import atexit
import contextlib
import math
import os
import shutil
import tempfile

from kerazoo import export, training

# Flags naming directories a recipe writes. Under multi-worker every worker
# saves (reading or creating mirrored variables can be a collective op that
# needs them all), and each task other than the chief writes into scratch.
OUTPUT_FLAGS = ("export_dir", "output_dir", "out_dir", "logdir")


def parse_args(parser, argv, check):
    """Parses `argv` with `parser`, then runs `check(args)`; a `ValueError` becomes `parser.error`.

    With the runtime flags (`add_runtime_flags`) and `--strategy
    multi-worker`, a task other than the chief gets its `OUTPUT_FLAGS`
    pointed into a scratch directory (removed at exit): it runs the same
    saves as the chief, and only the chief's are kept.

    Args:
        parser: an `argparse.ArgumentParser`.
        argv: the arguments (None: `sys.argv[1:]`).
        check: a function of the parsed namespace raising `ValueError` for
            a bad value; it may also fill in derived defaults.

    Returns:
        The parsed (and checked) namespace.
    """
    args = parser.parse_args(argv)
    try:
        if hasattr(args, "logical_devices"):  # from add_runtime_flags
            positive(args, "logical_devices")
            _scratch_outputs_off_the_chief(args)
        check(args)
    except ValueError as error:
        parser.error(str(error))
    return args


@contextlib.contextmanager
def exit_on(*errors):
    """Turns the given exception types raised inside the block into a one-line `error: ...` exit.

    For checks that run after parsing (against the data, or after training).

    Args:
        *errors: exception types (default: `ValueError`).

    Example:

    >>> with recipe_flags.exit_on(ValueError):
    ...     recipe_flags.top_k_within(args.top_k, tokenizer.vocabulary_size)  # doctest: +SKIP
    """
    try:
        yield
    except errors or (ValueError,) as error:
        raise SystemExit(f"error: {error}") from None


def add_export_flags(group, default_name):
    """Adds `--export-dir` and `--name`, the SavedModel destination every exporting recipe shares.

    Args:
        group: an `argparse` parser or argument group.
        default_name: the model name used when `--name` is not given.

    Example:

    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> add_export_flags(parser, "sentiment")
    >>> parser.parse_args([]).name
    'sentiment'
    """
    group.add_argument("--export-dir", default="saved_models", help="(default: saved_models)")
    group.add_argument("--name", default=default_name,
                       help=f"model name: exports go to EXPORT_DIR/NAME/<version>/ (default: {default_name})")


def add_quantize_flag(group, stays_float):
    """Adds `--quantize none|int8`, the export's post-training weight quantization (`export_saved_model`).

    Read it back with `quantize_mode(args)`.

    Args:
        group: an `argparse` parser or argument group.
        stays_float: what Keras does not quantize in this model, for the help
            text (e.g. "the LSTM").

    Example:

    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> add_quantize_flag(parser, "the LSTM")
    >>> quantize_mode(parser.parse_args(["--quantize", "int8"]))
    'int8'
    """
    group.add_argument("--quantize", choices=("none", "int8"), default="none",
                       help="export with int8 weights (Keras post-training quantization of the Embedding, "
                            f"Dense and EinsumDense kernels; {stays_float} stay float32) (default: none)")


def quantize_mode(args):
    """The `quantize` argument of `export.export_saved_model` for `--quantize`: None or "int8"."""
    return None if args.quantize == "none" else args.quantize


def add_runtime_flags(parser, precision="auto", jit_compile="auto"):
    """Adds the flags every recipe shares, as a "runtime" group of an `argparse` parser.

    `--precision`, `--jit-compile` (the plan), `--strategy` and
    `--logical-devices` (tf.distribute), `--checkpoint-dir` (resume after a
    kill), `--logdir` (TensorBoard) and `--verbose` (TensorFlow's C++ log
    lines and Keras progress bars; quiet by default: `fit_verbosity`).
    Use the parsed flags with `training.quiet_logs`, `training.start_run`,
    `training.plan_from_flags` and `training.runtime_callbacks`, the pattern
    of every recipe:

        recipe_flags.add_runtime_flags(parser)
        args = recipe_flags.parse_args(parser, argv, check_flags)
        with training.quiet_logs(args):
            batch_size = training.start_run(args)  # first: the strategy, before any tensor
            plan, model = training.plan_from_flags(args, build, batch)
            with plan.scope():  # the strategy's scope too
                model.fit(..., callbacks=[..., *training.runtime_callbacks(args, plan)])
            ...  # save and export: under multi-worker, `parse_args` sent a non-chief's outputs to scratch

    Args:
        parser: an `argparse.ArgumentParser`.
        precision: this recipe's default for `--precision`.
        jit_compile: this recipe's default for `--jit-compile` ("auto", "on", "off").

    Returns:
        The argument group.

    Example:

    >>> import argparse
    >>> parser = argparse.ArgumentParser()
    >>> _ = add_runtime_flags(parser)
    >>> args = parser.parse_args(["--checkpoint-dir", "ckpt", "--verbose"])
    >>> args.checkpoint_dir, args.logdir, args.verbose, args.precision, args.strategy
    ('ckpt', None, 1, 'auto', 'default')
    """
    group = parser.add_argument_group("runtime")
    group.add_argument("--precision", choices=("auto",) + training.PRECISIONS, default=precision,
                       help=f"auto: time a few training steps of this model under each candidate and keep "
                            f"the fastest, cached per model and machine in $KERAZOO_PLAN or "
                            f"~/.cache/kerazoo/plans.json (default: {precision})")
    group.add_argument("--jit-compile", choices=("auto", "on", "off"), default=jit_compile,
                       help=f"XLA for the train step (default: {jit_compile}, from the plan)")
    group.add_argument("--strategy", choices=training.STRATEGIES, default="default",
                       help="tf.distribute: default (one device); mirrored (this machine's GPUs, or "
                            "--logical-devices logical CPU devices); multi-worker (the cluster in TF_CONFIG: "
                            "`kerazoo launch --workers N`); tpu. --batch-size is per replica: the global "
                            "batch is it x replicas; the learning rate is not scaled (default: default)")
    group.add_argument("--logical-devices", type=int, default=2, metavar="N",
                       help="replicas of --strategy mirrored on a machine without GPUs (default: 2)")
    group.add_argument("--checkpoint-dir", metavar="DIR",
                       help="save a checkpoint there after every epoch (evaluation interval), atomically; "
                            "the same command run again resumes from the last one")
    group.add_argument("--logdir", metavar="DIR",
                       help="write TensorBoard event files there (losses, metrics, learning rate, "
                            "tokens/s, the plan): tensorboard --logdir DIR")
    group.add_argument("--verbose", type=int, nargs="?", const=1, default=0, choices=(0, 1, 2),
                       help="0: quiet, no TensorFlow C++ log lines (unless TF_CPP_MIN_LOG_LEVEL is set), "
                            "Keras reports one line per epoch; 1 (just --verbose): TensorFlow's log lines "
                            "and Keras progress bars; 2: TensorFlow's log lines, one line per epoch "
                            "(default: 0)")
    return group


def _scratch_outputs_off_the_chief(args):
    if args.strategy != "multi-worker" or training.is_chief("multi-worker"):
        return
    scratch = tempfile.mkdtemp(prefix="kerazoo-worker-")
    atexit.register(shutil.rmtree, scratch, True)
    for name in OUTPUT_FLAGS:
        if getattr(args, name, None):
            setattr(args, name, os.path.join(scratch, name))


def fit_verbosity(args):
    """Keras `fit`'s `verbose` for the `--verbose` flag: progress bars at 1, else one line per epoch."""
    return 1 if args.verbose == 1 else 2


def flag(name):
    """The command-line spelling of an argparse destination: `"batch_size"` -> `"--batch-size"`."""
    return "--" + name.replace("_", "-")


def positive(args, *names):
    """Each named flag must be an integer >= 1.

    Args:
        args: the parsed namespace.
        *names: argparse destinations, e.g. "batch_size".
    """
    for name in names:
        value = getattr(args, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{flag(name)} must be an integer >= 1; received {value!r}")


def in_range(args, name, low=None, high=None, low_open=False, high_open=False):
    """The named flag must be a finite number within the bounds (NaN and infinities never pass).

    Args:
        args: the parsed namespace.
        name: the argparse destination.
        low, high: bounds (None: unbounded on that side).
        low_open, high_open: exclude the bound itself.

    Example:

    >>> in_range(args, "dropout", 0, 1, high_open=True)  # doctest: +SKIP
    """
    value = getattr(args, name)
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if not math.isfinite(value) or below or above:
        interval = (("(" if low_open else "[") + ("-inf" if low is None else f"{low:g}") + ", "
                    + ("inf" if high is None else f"{high:g}") + (")" if high_open else "]"))
        raise ValueError(f"{flag(name)} must be a finite number in {interval}; received {value!r}")


def check_model_name(name, flag_name="--name"):
    """`name` must be a single folder name: letters, digits, '.', '_', '-', starting with a letter or digit.

    Args:
        name: the model name.
        flag_name: the flag it came from, for the message.
    """
    if not isinstance(name, str) or not export.MODEL_NAME.fullmatch(name):
        raise ValueError(f"{flag_name} must be a single folder name (letters, digits, '.', '_', '-', "
                         f"starting with a letter or digit); received {name!r}")


def export_destination(export_dir, name, suffixes=(".keras",), dir_flag="--export-dir",
                       name_flag="--name"):
    """Checks that a recipe can write `EXPORT_DIR/NAME/<version>/` and `EXPORT_DIR/NAME<suffix>` files.

    Nothing is created. `export_dir` must be a writable directory or a path
    whose nearest existing ancestor is a writable directory; `name` a single
    folder name, so every output path stays inside `export_dir`; existing
    outputs must be of the right kind (the model folder a directory, the
    files regular files, none a symbolic link that could lead elsewhere).

    Args:
        export_dir: the base directory.
        name: the model name.
        suffixes: endings of the files written next to the model folder
            (e.g. ".keras", ".vocabulary.json").
        dir_flag, name_flag: flag names for the messages.

    Returns:
        A dict: "model_dir" -> `EXPORT_DIR/NAME`, and each suffix -> its path.
    """
    check_model_name(name, name_flag)
    if not isinstance(export_dir, (str, os.PathLike)) or not os.fspath(export_dir):
        raise ValueError(f"{dir_flag} must be a directory path; received {export_dir!r}")
    export_dir = os.fspath(export_dir)
    existing = export_dir
    while not os.path.exists(existing):
        parent = os.path.dirname(os.path.abspath(existing))
        if parent == os.path.abspath(existing):
            break
        existing = parent
    if not os.path.isdir(existing):
        what = "is" if existing == export_dir else f"is inside {existing!r}, which is"
        raise ValueError(f"{dir_flag} {export_dir!r} {what} not a directory")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ValueError(f"{dir_flag} {export_dir!r}: no permission to write in {existing!r}")
    paths = {"model_dir": os.path.join(export_dir, name)}
    paths.update((suffix, os.path.join(export_dir, name + suffix)) for suffix in suffixes)
    for key, path in paths.items():
        if os.path.islink(path):
            raise ValueError(f"{path!r} is a symbolic link; exports write only inside {dir_flag} "
                             f"{export_dir!r}: remove it or choose another {name_flag}")
        if os.path.exists(path) and (os.path.isdir(path) != (key == "model_dir")):
            kind = "a directory" if key == "model_dir" else "a file"
            raise ValueError(f"{path!r} exists and is not {kind}: remove it or choose another {name_flag}")
    if os.path.isdir(paths["model_dir"]) and not os.access(paths["model_dir"], os.W_OK | os.X_OK):
        raise ValueError(f"{dir_flag} {export_dir!r}: no permission to write in {paths['model_dir']!r}")
    return paths


def top_k_within(top_k, vocab_size, flag_name="--top-k"):
    """A sampling `top_k` must be an integer in [1, vocab_size].

    Args:
        top_k: the setting.
        vocab_size: the tokenizer's vocabulary size.
        flag_name: the flag it came from.
    """
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= vocab_size:
        raise ValueError(f"{flag_name} must be an integer in [1, {vocab_size}] (the vocabulary size); "
                         f"received {top_k!r}")


def room_for_prompt(prompt_tokens, new_tokens, max_length, prompt_flag="--prompt",
                    length_flag="--max-length"):
    """A prompt of `prompt_tokens` tokens must leave room for at least one new token in the context.

    Args:
        prompt_tokens: the prompt's length in tokens.
        new_tokens: tokens to generate (the prompt and them must fit, or at least one new one).
        max_length: the model's context length.
        prompt_flag, length_flag: flag names for the message.

    Returns:
        How many tokens can be generated: `min(new_tokens, max_length - prompt_tokens)`.
    """
    room = max_length - prompt_tokens
    if room < 1:
        raise ValueError(f"{prompt_flag} has {prompt_tokens} tokens, which leaves no room in the "
                         f"{max_length}-token context ({length_flag}); shorten it or raise {length_flag}")
    return min(new_tokens, room)
