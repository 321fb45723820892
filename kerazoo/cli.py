"""The `kerazoo` command: list recipes, launch local multi-worker runs, inspect exported SavedModels, predict with them."""

import argparse
import ast
import json
import os
import pathlib
import sys

from kerazoo.native_logs import quiet_native_logs

RECIPES = pathlib.Path(__file__).resolve().parent.parent / "recipes"


def main(argv=None):
    """Entry point of the `kerazoo` console script.

    Args:
        argv: arguments (default: `sys.argv[1:]`).

    Returns:
        The exit status: 0, or 2 after a one-line error on stderr.
    """
    parser = argparse.ArgumentParser(prog="kerazoo", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    predict = commands.add_parser("predict", help="run an exported model's serving_default on texts",
                                  description="Run serving_default of a SavedModel on texts and print "
                                              "a table (or JSON).")
    predict.add_argument("path", help="a model folder (EXPORT_DIR/NAME: its newest version) or a version folder")
    predict.add_argument("texts", nargs="+", help="input strings; '-' reads one per line from stdin")
    predict.add_argument("--json", action="store_true", help="print one JSON object per input")
    inspect = commands.add_parser("inspect", help="show versions, signatures, inputs and outputs",
                                  description="Show an export's versions and its signatures.")
    inspect.add_argument("path", help="a model folder or a version folder")
    commands.add_parser("recipes", help="list the runnable recipes", description="List the recipes.")
    _add_attention_parser(commands)
    _add_launch_parser(commands)
    parser.add_argument("--verbose", action="store_true", help="show TensorFlow's C++ log lines")
    args = parser.parse_args(argv)
    try:
        with quiet_native_logs(enabled=not args.verbose and "TF_CPP_MIN_LOG_LEVEL" not in os.environ):
            if args.command == "recipes":
                return _list_recipes()
            if args.command == "inspect":
                return _inspect(args.path)
            if args.command == "attention":
                return _attention(args)
            if args.command == "launch":
                return _launch(args)
            return _predict(args.path, args.texts, args.json)
    except (FileNotFoundError, ValueError) as error:
        print(f"kerazoo {args.command}: error: {error}", file=sys.stderr)
        return 2


def _list_recipes():
    if not RECIPES.is_dir():
        print(f"no recipes folder at {RECIPES} (recipes ship with the source checkout, not the wheel)")
        return 0
    for script in sorted(RECIPES.glob("*.py")):
        docstring = ast.get_docstring(ast.parse(script.read_text(encoding="utf-8"))) or ""
        print(f"{script.stem:20s} {docstring.splitlines()[0] if docstring else ''}")
    print(f"\nrun one with: python {RECIPES.name}/<name>.py --help")
    return 0


def _version_path(path):
    """(version folder, all versions) for a model folder or a version folder."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path!r} does not exist")
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return path, None
    versions = sorted(int(v) for v in os.listdir(path) if v.isdigit()) if os.path.isdir(path) else []
    if not versions:
        raise FileNotFoundError(f"{path!r} holds no saved_model.pb and no integer version folders")
    return os.path.join(path, str(versions[-1])), versions


def _load(path):
    """Loads a SavedModel, its tensorflow-text kernels registered; a failure is one ValueError line."""
    import tensorflow as tf
    import tensorflow_text  # noqa: F401  (registers FastWordpieceTokenizeWithOffsets & co. for WordPiece exports)

    try:
        return tf.saved_model.load(path)
    except Exception as error:  # noqa: BLE001  (TF raises many types; the CLI prints one line)
        message = str(error).strip().splitlines()
        raise ValueError(f"{path!r} could not be loaded as a SavedModel: {type(error).__name__}: "
                         f"{message[0] if message else ''}") from None


def _string_signature(loaded, path, name="serving_default"):
    """The signature `name` and its single string input's name (else a one-line ValueError)."""
    if name not in loaded.signatures:
        raise ValueError(f"{path!r} has no {name!r} signature (it has: {', '.join(loaded.signatures) or 'none'})")
    function = loaded.signatures[name]
    inputs = function.structured_input_signature[1]
    if len(inputs) != 1 or next(iter(inputs.values())).dtype.name != "string":
        found = ", ".join(f"{k}: {v.dtype.name}" for k, v in inputs.items())
        raise ValueError(f"signature {name!r} of {path!r} does not take one string input (it takes {found}); "
                         "kerazoo predict needs a string-in export")
    return function, next(iter(inputs))


def _inspect(path):
    version_path, versions = _version_path(path)
    if versions is not None:
        print(f"versions: {', '.join(map(str, versions))} (TF Serving serves {versions[-1]})")
    print(f"version folder: {version_path}")
    loaded = _load(version_path)
    for name, function in loaded.signatures.items():
        print(f"signature {name!r}:")
        for key, spec in function.structured_input_signature[1].items():
            print(f"  input  {key}: {spec.dtype.name} {spec.shape.as_list()}")
        for key, spec in function.structured_outputs.items():
            print(f"  output {key}: {spec.dtype.name} {spec.shape.as_list()}")
    return 0


def _predict(path, texts, as_json):
    import numpy as np
    import tensorflow as tf

    if texts == ["-"]:
        # One text per line; CRLF line ends and blank lines (e.g. a trailing one) are not texts.
        texts = [line.rstrip("\r\n") for line in sys.stdin if line.strip()]
    if not texts:
        raise ValueError("no texts given")
    version_path, _ = _version_path(path)
    serving, input_name = _string_signature(_load(version_path), version_path)
    outputs = {k: v.numpy() for k, v in serving(**{input_name: tf.constant(texts)}).items()}

    def cell(value):
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        value = np.asarray(value)
        return value.item() if value.ndim == 0 else value.tolist()

    rows = [{key: cell(outputs[key][i]) for key in sorted(outputs)} for i in range(len(texts))]
    if as_json:
        for text, row in zip(texts, rows):
            print(json.dumps({input_name: text, **row}, ensure_ascii=False))
        return 0
    shown = [t if len(t) <= 50 else t[:47] + "..." for t in texts]
    width = max(len(input_name), *(len(t) for t in shown))
    print(f"{input_name:<{width}}  " + "  ".join(sorted(outputs)))
    for text, row in zip(shown, rows):
        print(f"{text:<{width}}  " + "  ".join(_format(row[key]) for key in sorted(outputs)))
    return 0


def _add_attention_parser(commands):
    attention = commands.add_parser(
        "attention", help="draw a model's attention for a text as a heat map",
        description="Attention probabilities of one layer of a .keras model built from MultiHeadSelfAttention "
                    "(a transformer_lm, or a BERT backbone/classifier from bert_pretrain/bert_finetune) for a text: a labelled heat-map PNG, and where each head's last "
                    "position attends most.")
    attention.add_argument("model", help="a .keras model")
    attention.add_argument("vocabulary", help="its tokenizer's vocabulary file (save_vocabulary)")
    attention.add_argument("text", help="the input text")
    attention.add_argument("--layer", type=int, default=0, help="attention layer index, negative from the end "
                                                                 "(default: 0)")
    attention.add_argument("--head", type=int, help="one head (default: all)")
    attention.add_argument("--output", default="attention.png", help="the PNG (default: attention.png)")
    attention.add_argument("--keep-case", action="store_true",
                           help="BERT models: do not lower-case the text (as bert_pretrain --keep-case)")


def _attention(args):
    import keras

    from kerazoo import text, visualize

    if not os.path.isfile(args.model):
        raise FileNotFoundError(f"model file not found: {args.model!r}")
    tokenizer = text.load_tokenizer(args.vocabulary)
    model = keras.models.load_model(args.model)
    if isinstance(model.input, dict):  # a BERT backbone, classifier or pretrainer: pack as it was trained
        max_length = model.get_layer("embedding").max_length
        tokenizer = text.BertPreprocessor(tokenizer, max_length, lower_case=not args.keep_case)
    maps = visualize.attention_maps(model, tokenizer, args.text, args.layer, args.head, path=args.output)
    heads = [maps.scores] if maps.head is not None else list(maps.scores)
    print(f"layer {maps.layer}: {len(maps.tokens)} tokens; heat map written to {args.output}")
    for head, scores in zip([maps.head] if maps.head is not None else range(len(heads)), heads):
        key = int(scores[-1].argmax())
        print(f"  head {head}: the last token {maps.tokens[-1]!r} attends most to token {key} "
              f"{maps.tokens[key]!r} ({scores[-1, key]:.0%})")
    return 0


def _add_launch_parser(commands):
    launch = commands.add_parser(
        "launch", help="run a recipe as N local workers of a multi-worker cluster",
        description="Start N processes of SCRIPT, each with the TF_CONFIG of one worker of a cluster on free "
                    "loopback ports (worker 0 is the chief), print their output prefixed with [worker i], and "
                    "stop every worker if one fails. Pass --strategy multi-worker to the recipe; its "
                    "--batch-size is per worker.",
        epilog="example: kerazoo launch --workers 2 recipes/transformer_lm.py --strategy multi-worker "
               "--batch-size 8")
    launch.add_argument("--workers", type=int, default=2, help="processes to start (default: 2)")
    launch.add_argument("--pin-cores", action="store_true",
                        help="pin worker i to CPU core i, as taskset -c i would")
    launch.add_argument("script", help="a Python script (e.g. recipes/transformer_lm.py) or a recipe name")
    launch.add_argument("script_args", nargs=argparse.REMAINDER, help="arguments for the script")


def _launch(args):
    from kerazoo import launch

    script = args.script
    if not os.path.isfile(script) and (RECIPES / f"{script}.py").is_file():
        script = str(RECIPES / f"{script}.py")
    if not os.path.isfile(script):
        raise FileNotFoundError(f"script not found: {args.script!r} (a .py file, or one of `kerazoo recipes`)")
    if args.workers < 1:
        raise ValueError(f"--workers must be an integer >= 1; received {args.workers}")
    return launch.launch([sys.executable, script, *args.script_args], args.workers, pin_cores=args.pin_cores)


def _format(value):
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, list) and value and isinstance(value[0], float):
        return "[" + ", ".join(f"{v:.4f}" for v in value) + "]"
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
