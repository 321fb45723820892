"""Serving latency of an exported classifier in a TF-only process: kerazoo's export vs a plain Keras export.

Builds the documents' LSTM classifier (vocab 10000, embedding 16, LSTM 32, length 100) with a vectorizer
adapted on --data, exports it twice — with `kerazoo.export.export_saved_model` and with Keras's own
`model.export` of the string-input model (an ExportArchive with default names) — then times
`serving_default` / `serve` in a subprocess where keras and kerazoo cannot be imported, interleaving the
two, for batches of 1 and 64 texts. Prints p50 / p99 in milliseconds and the ratio to the Keras export.

    python bench/serving_latency.py --data ../shared/data/sst2/dev.tsv
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

from kerazoo import data, export, models, text  # noqa: E402

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests"))
from tf_only import PRELUDE  # noqa: E402

TIMING = """
import json, statistics, time
texts = json.load(open({texts!r}))
ours = tf.saved_model.load(newest_version({ours!r})).signatures["serving_default"]
theirs = tf.saved_model.load({theirs!r}).signatures["serve"]
calls = {{"kerazoo": lambda x: ours(text=x), "keras_export": lambda x: theirs(x)}}
results = {{}}
for batch in (1, 64):
    inputs = [tf.constant(texts[i:i + batch]) for i in range(0, {requests} * batch, batch)]
    for call in calls.values():
        for x in inputs[:20]:
            call(x)  # warm up
    samples = {{name: [] for name in calls}}
    for round_ in range({rounds}):
        for name, call in (list(calls.items())[::-1] if round_ % 2 else calls.items()):
            for x in inputs[round_::{rounds}]:
                start = time.perf_counter()
                call(x)
                samples[name].append((time.perf_counter() - start) * 1000)
    for name, values in samples.items():
        values.sort()
        results[f"{{name}} {{batch}}"] = [statistics.median(values), values[int(0.99 * (len(values) - 1))],
                                          len(values)]
print(json.dumps(results))
"""


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="labeled text file whose texts are the requests (default: sample)")
    parser.add_argument("--requests", type=int, default=400, help="requests per batch size and export")
    parser.add_argument("--rounds", type=int, default=8, help="interleaved rounds (default: 8)")
    args = parser.parse_args()
    corpus = data.load_labeled_text(args.data) if args.data else data.sample_sentiment()
    texts = (corpus.texts * (1 + 64 * args.requests // len(corpus)))[:64 * args.requests]
    vectorizer = text.word_vectorizer()
    vectorizer.adapt(tf.data.Dataset.from_tensor_slices(corpus.texts).batch(512))
    model = models.lstm_classifier()
    with tempfile.TemporaryDirectory() as tmp:
        export.export_saved_model(model, tmp, "kerazoo", preprocessor=vectorizer)
        models.with_preprocessor(model, vectorizer).export(os.path.join(tmp, "keras"), verbose=False)
        json.dump(texts, open(os.path.join(tmp, "texts.json"), "w"))
        script = PRELUDE + TIMING.format(texts=os.path.join(tmp, "texts.json"), ours=os.path.join(tmp, "kerazoo"),
                                         theirs=os.path.join(tmp, "keras"), requests=args.requests,
                                         rounds=args.rounds)
        result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp)
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])
    timings = json.loads(result.stdout.splitlines()[-1])
    print(f"requests: {args.requests} per batch size and export, from {corpus.source}; TF-only process")
    print(f"{'export':14s} {'batch':>5s} {'p50 ms':>8s} {'p99 ms':>8s} {'p50 vs keras':>12s}")
    for batch in (1, 64):
        base = timings[f"keras_export {batch}"][0]
        for name in ("kerazoo", "keras_export"):
            p50, p99, _ = timings[f"{name} {batch}"]
            print(f"{name:14s} {batch:5d} {p50:8.2f} {p99:8.2f} {p50 / base:12.2f}")


if __name__ == "__main__":
    main()
