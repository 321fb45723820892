"""Serving an exported classifier in a TF-only process: float32 vs int8 kerazoo exports vs a plain Keras export.

Trains the documents' LSTM classifier (vocab 10000, embedding 16, LSTM 32, length 100) on --data for
--epochs (or loads a string-in classifier saved by a recipe with --model, e.g. bert_finetune's
`<export-dir>/<name>.keras`), then exports it three times: `kerazoo.export.export_saved_model` in float32, the same with
`quantize="int8"` (Keras's own `model.quantize("int8")` weights: int8 embedding tables, and Dense kernels
as int8 graph constants that TensorFlow folds into float32 kernels at the first call), and Keras's own
`model.export` of the string-input model (an ExportArchive with default names). In a subprocess where
keras and kerazoo cannot be imported (as TF Serving runs it) it measures each export's load and first
call, its accuracy on --eval-data and the latency of batches of 1 and 64 texts, interleaving the exports.
Prints each export's size on disk (saved_model.pb, where the int8 kernels are, plus variables/),
accuracy, load + first call, p50 / p99 in milliseconds, and ratios to the float32 kerazoo export
measured in the same run.

    python bench/serving_latency.py --data ../shared/data/sst2/train.tsv --eval-data ../shared/data/sst2/dev.tsv
    python bench/serving_latency.py --model saved_models/bert_classifier.keras --data ../shared/data/sst2/dev.tsv
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kerazoo import data, export, models, text  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from tf_only import PRELUDE, assert_no_xla  # noqa: E402

EXPORTS = ("float32", "int8", "keras_export")

TIMING = """
import json, statistics, time
requests = json.load(open({requests!r}))
evaluation = json.load(open({evaluation!r}))
paths = json.load(open({paths!r}))
calls = {{}}
results = {{}}
for name, path in paths.items():
    start = time.perf_counter()
    signatures = tf.saved_model.load(path).signatures
    if name == "keras_export":  # one unnamed output, (batch, 1)
        calls[name] = (lambda f: lambda x: list(f(x).values())[0])(signatures["serve"])
    else:
        calls[name] = (lambda f: lambda x: f(text=x)["probabilities"])(signatures["serving_default"])
    calls[name](tf.constant(requests[:1]))  # the first call instantiates (and optimizes) the function
    results[f"{{name}} first"] = (time.perf_counter() - start) * 1000
labels = np.array(evaluation["labels"])
for name, call in calls.items():
    probabilities = call(tf.constant(evaluation["texts"])).numpy()
    predicted = probabilities.argmax(-1) if probabilities.ndim == 2 and probabilities.shape[1] > 1 \
        else probabilities.reshape(-1) >= 0.5
    results[f"{{name}} accuracy"] = float(np.mean(predicted == labels))
for batch in (1, 64):
    inputs = [tf.constant(requests[i:i + batch]) for i in range(0, {count} * batch, batch)]
    for call in calls.values():
        for x in inputs[:20]:
            call(x)  # warm up
    samples = {{name: [] for name in calls}}
    for round_ in range({rounds}):
        order = list(calls.items())
        for name, call in order[round_ % len(order):] + order[:round_ % len(order)]:
            for x in inputs[round_::{rounds}]:
                start = time.perf_counter()
                call(x)
                samples[name].append((time.perf_counter() - start) * 1000)
    for name, values in samples.items():
        values.sort()
        results[f"{{name}} {{batch}}"] = [statistics.median(values), values[int(0.99 * (len(values) - 1))]]
print(json.dumps(results))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="labeled training file; its texts are also the requests (default: sample)")
    parser.add_argument("--eval-data", help="labeled file for the accuracy column (default: --data)")
    parser.add_argument("--model", help="a string-in classifier .keras saved by a recipe, instead of training "
                                        "the LSTM (--data then only gives requests)")
    parser.add_argument("--epochs", type=int, default=2, help="training epochs (default: 2)")
    parser.add_argument("--requests", type=int, default=400, help="timed requests per batch size and export")
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds (default: 8)")
    args = parser.parse_args()
    corpus = data.load_labeled_text(args.data, binary=True) if args.data else data.sample_sentiment()
    evaluation = data.load_labeled_text(args.eval_data, binary=True) if args.eval_data else corpus
    if args.model:
        text_model = keras.models.load_model(args.model)
        trained = f"loaded {args.model}"
    else:
        text_model = train_lstm(corpus, args.epochs)
        trained = f"trained {args.epochs} epochs on {corpus.source}"
    _, preprocessor, model = text_model.layers  # models.with_preprocessor: strings -> preprocessor -> id model
    texts = (corpus.texts * (1 + 64 * args.requests // len(corpus)))[:64 * args.requests]
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"float32": export.export_saved_model(model, tmp, "float32", preprocessor=preprocessor),
                 "int8": export.export_saved_model(model, tmp, "int8", preprocessor=preprocessor,
                                                   quantize="int8"),
                 "keras_export": os.path.join(tmp, "keras")}
        text_model.export(paths["keras_export"], verbose=False)
        for name in ("float32", "int8"):
            assert_no_xla(paths[name])
        sizes = {name: _folder_bytes(path) for name, path in paths.items()}
        files = {}
        for name, payload in (("requests", texts), ("paths", paths),
                              ("evaluation", dict(texts=evaluation.texts, labels=list(map(int, evaluation.labels))))):
            files[name] = os.path.join(tmp, f"{name}.json")
            json.dump(payload, open(files[name], "w"))
        script = PRELUDE + TIMING.format(count=args.requests, rounds=args.rounds, **files)
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp)
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])
    timings = json.loads(result.stdout.splitlines()[-1])
    print(f"\n{trained}; accuracy on {evaluation.source} "
          f"({len(evaluation)} texts); {args.requests} requests per batch size and export; TF-only process")
    print(f"{'export':13s} {'size':>10s} {'smaller':>7s} {'accuracy':>8s} {'load+1st':>8s} {'batch':>5s} "
          f"{'p50 ms':>8s} {'p99 ms':>8s} {'p50 vs f32':>10s} {'p99 vs f32':>10s}")
    for batch in (1, 64):
        base_p50, base_p99 = timings[f"float32 {batch}"]
        for name in EXPORTS:
            p50, p99 = timings[f"{name} {batch}"]
            print(f"{name:13s} {sizes[name] / 1024:8.0f}KB {sizes['float32'] / sizes[name]:6.2f}x "
                  f"{timings[f'{name} accuracy']:8.4f} {timings[f'{name} first']:6.0f}ms {batch:5d} {p50:8.2f} "
                  f"{p99:8.2f} {p50 / base_p50:10.2f} {p99 / base_p99:10.2f}")


def train_lstm(corpus, epochs):
    """The documents' LSTM classifier trained on `corpus`, wrapped to take strings."""
    vectorizer = text.word_vectorizer()
    vectorizer.adapt(tf.data.Dataset.from_tensor_slices(corpus.texts).batch(512))
    model = models.lstm_classifier()
    model.compile("adam", "binary_crossentropy", metrics=["accuracy"])
    model.fit(vectorizer(tf.constant(corpus.texts)), np.asarray(corpus.labels), epochs=epochs, batch_size=64,
              verbose=2)
    return models.with_preprocessor(model, vectorizer)


def _folder_bytes(path):
    return sum(os.path.getsize(os.path.join(root, f)) for root, _, names in os.walk(path) for f in names)


if __name__ == "__main__":
    main()
