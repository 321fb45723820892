"""Train the documents' Embedding→LSTM→Dense text classifier, evaluate it, and export it for TF Serving.

Runs offline on the embedded sample corpus by default:

    python recipes/lstm_classifier.py
    python recipes/lstm_classifier.py --data train.tsv --val-data dev.tsv --epochs 10
    python recipes/lstm_classifier.py --dataset imdb        # downloads; needs internet

Data files are csv / tsv (with a header) or JSON Lines; the text column is the
first of text, sentence, headline, review, and the label column the first of
label, is_sarcastic, sentiment (override with --text-column / --label-column).
"""

import argparse
import sys

import kerazoo  # noqa: F401 (before TensorFlow: its import notices stay hidden)
import keras
import numpy as np
import tensorflow as tf

from kerazoo import data, export, models, nonfinite, recipe_flags, text, training
from kerazoo.evaluation import classification_report

EXAMPLES = [
    "a wonderful, moving film with a great cast",
    "the plot was dull and the acting was worse",
    "the ending was not bad at all",
    "i expected the film to be great, but it was dull",
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    source = parser.add_argument_group("data")
    source.add_argument("--dataset", default="sample", choices=("sample", "imdb"),
                        help="named dataset when --data is not given (default: sample, embedded)")
    source.add_argument("--data", metavar="PATH", help="labeled training file (csv/tsv/jsonl)")
    source.add_argument("--val-data", metavar="PATH",
                        help="labeled validation file (default: split off --validation-split)")
    source.add_argument("--validation-split", type=float, default=0.2,
                        help="fraction held out when there is no --val-data (default: 0.2)")
    source.add_argument("--text-column", help="name of the text column/key")
    source.add_argument("--label-column", help="name of the label column/key")
    classes = source.add_mutually_exclusive_group()
    classes.add_argument("--binary", action="store_true",
                         help="insist on binary labels: 0/1 (or true/false, positive/negative)")
    classes.add_argument("--num-classes", type=int, metavar="N",
                         help="insist on N classes: numeric labels must be in [0, N) and are their own ids")
    source.add_argument("--on-decode-error", choices=("fail", "skip"), default="fail",
                        help="records with undecodable bytes: fail, or skip and count (default: fail)")
    model = parser.add_argument_group("model")
    model.add_argument("--vocab-size", type=int, default=10000, help="(default: 10000)")
    model.add_argument("--max-length", type=int, default=100, help="tokens per text (default: 100)")
    model.add_argument("--embedding-dim", type=int, default=16, help="(default: 16)")
    model.add_argument("--lstm-units", type=int, default=32, help="(default: 32)")
    model.add_argument("--bidirectional", action="store_true", help="bidirectional LSTM")
    model.add_argument("--dropout", type=float, default=0.0, help="(default: 0)")
    model.add_argument("--standardize", default="lower_and_strip_punctuation",
                       choices=[s for s in text.STANDARDIZE_OPTIONS if s] + ["none"],
                       help="text standardisation before splitting on whitespace "
                            "(default: lower_and_strip_punctuation)")
    fit = parser.add_argument_group("training")
    fit.add_argument("--epochs", type=int, default=10, help="maximum epochs (default: 10)")
    fit.add_argument("--batch-size", type=int, default=32, help="(default: 32)")
    fit.add_argument("--learning-rate", type=float, default=1e-3, help="Adam (default: 1e-3)")
    fit.add_argument("--patience", type=int, default=2,
                     help="early stopping: epochs without val_loss improvement (default: 2)")
    fit.add_argument("--seed", type=int, default=0, help="(default: 0)")
    out = parser.add_argument_group("output")
    recipe_flags.add_export_flags(out, "lstm_classifier")
    recipe_flags.add_quantize_flag(out, "the LSTM and the biases")
    # --jit-compile auto: XLA on a CPU, off on a GPU, where the cuDNN LSTM kernel cannot be XLA-compiled.
    recipe_flags.add_runtime_flags(parser, precision="float32")
    return recipe_flags.parse_args(parser, argv, check_flags)


def check_flags(args):
    """Everything the flags alone decide, checked before any data is read (see `kerazoo.recipe_flags`)."""
    recipe_flags.positive(args, "vocab_size", "max_length", "embedding_dim", "lstm_units", "epochs",
                          "batch_size")
    if args.num_classes is not None:
        recipe_flags.in_range(args, "num_classes", low=2)
    recipe_flags.in_range(args, "vocab_size", low=3)  # padding, OOV and one word
    recipe_flags.in_range(args, "validation_split", 0, 1, low_open=True, high_open=True)
    recipe_flags.in_range(args, "dropout", 0, 1, high_open=True)
    recipe_flags.in_range(args, "learning_rate", low=0, low_open=True)
    recipe_flags.in_range(args, "patience", low=0)
    recipe_flags.in_range(args, "seed", 0, 2 ** 32 - 1)
    args.outputs = recipe_flags.export_destination(args.export_dir, args.name)


def load_data(args):
    """Returns (train, validation) `LabeledText`s as the flags ask."""
    if args.data:
        options = dict(text_column=args.text_column, label_column=args.label_column, binary=args.binary,
                       num_classes=args.num_classes, on_decode_error=args.on_decode_error)
        train = data.load_labeled_text(args.data, **options)
        if args.val_data:
            return train, data.load_labeled_text(args.val_data, **options)
    else:
        if args.val_data:
            raise SystemExit("error: --val-data needs --data")
        train = data.load_dataset(args.dataset)
    return train.split(args.validation_split, seed=args.seed)


def classes_of(train, val, num_classes=None):
    """The training classes, and the validation split numbered by them.

    Validation may hold a subset of the training classes, never another class.

    Returns:
        `(label_names, val)`.
    """
    names = list(train.label_names)
    val = val.with_label_names(names)
    present = [names[i] for i in np.unique(train.labels)]
    if len(present) < 2:
        raise ValueError(f"the training data has a single class {present}")
    if num_classes is not None and len(names) != num_classes:
        raise ValueError(f"--num-classes {num_classes} was given, but the training labels are {names}")
    return names, val


def dataset(split, vectorizer, batch_size, shuffle_seed=None):
    """A batched tf.data pipeline of (token ids, label); the vectorizer runs here, outside XLA."""
    ds = tf.data.Dataset.from_tensor_slices((tf.constant(split.texts, tf.string), split.labels))
    if shuffle_seed is not None:
        ds = ds.shuffle(len(split), seed=shuffle_seed, reshuffle_each_iteration=True)
    return data.prefetched(ds.batch(batch_size).map(lambda t, y: (vectorizer(t), y)))


def main(argv=None):
    args = parse_args(argv)
    with training.quiet_logs(args):
        return run(args)


def run(args):
    batch_size = training.start_run(args)
    with recipe_flags.exit_on(ValueError, FileNotFoundError):
        train, val = load_data(args)
        label_names, val = classes_of(train, val, 2 if args.binary else args.num_classes)
    binary = len(label_names) == 2
    print(f"classes ({len(label_names)}): {', '.join(label_names)} -> "
          + ("one sigmoid unit" if binary else f"softmax over {len(label_names)}")
          + ("" if args.binary or args.num_classes else "; --binary or --num-classes N insist on a count"))
    for split_name, split in (("train", train), ("validation", val)):
        counts = np.bincount(split.labels, minlength=len(label_names))
        skipped = f", {split.skipped} skipped (undecodable)" if split.skipped else ""
        print(f"{split_name}: {len(split)} texts from {split.source}{skipped}; "
              + ", ".join(f"{n}={c}" for n, c in zip(label_names, counts)))

    vectorizer = text.word_vectorizer(args.vocab_size, args.max_length,
                                      standardize=None if args.standardize == "none" else args.standardize)
    vectorizer.adapt(tf.data.Dataset.from_tensor_slices(train.texts).batch(1024))
    if vectorizer.vocabulary_size() <= 2:
        raise SystemExit(f"error: {train.source}: the training texts contain no words after "
                         f"--standardize {args.standardize} (only empty or punctuation-only texts)")
    print(f"vocabulary: {vectorizer.vocabulary_size()} ids (padding and [UNK] included)")

    if args.jit_compile == "auto" and tf.config.list_physical_devices("GPU"):
        args.jit_compile = "off"
    plan, _ = training.plan_from_flags(args)
    with plan.scope():
        model = models.lstm_classifier(args.vocab_size, args.embedding_dim, args.lstm_units,
                                       args.max_length, num_classes=len(label_names),
                                       bidirectional=args.bidirectional, dropout=args.dropout)
        loss = "binary_crossentropy" if binary else "sparse_categorical_crossentropy"
        training.compile_model(model, plan, optimizer=keras.optimizers.Adam(args.learning_rate), loss=loss,
                               metrics=["accuracy"])
        model.summary(print_fn=lambda line, **_: print(line))

        timer, guard = training.EpochTimer(), nonfinite.NonFiniteGuard()
        stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=args.patience,
                                             restore_best_weights=True, verbose=1)
        val_ds = dataset(val, vectorizer, batch_size)
        model.fit(dataset(train, vectorizer, batch_size, shuffle_seed=args.seed),
                  validation_data=val_ds, epochs=args.epochs,
                  callbacks=[guard, stop, timer, *training.runtime_callbacks(args, plan)],
                  verbose=recipe_flags.fit_verbosity(args),
                  shuffle=False)  # the dataset reshuffles itself every epoch
    with recipe_flags.exit_on(FloatingPointError):
        guard.check(model)
    print(f"trained {len(timer.durations)} epochs, median {np.median(timer.durations):.1f}s per epoch"
          + (f"; best epoch {stop.best_epoch + 1} restored" if stop.stopped_epoch else ""))

    probabilities = model.predict(val_ds, verbose=0)
    predicted = (probabilities[:, 0] >= 0.5).astype(int) if binary else probabilities.argmax(-1)
    print("validation:\n" + str(classification_report(val.labels, predicted, label_names)))

    text_model = models.with_preprocessor(model, vectorizer)
    keras_path = args.outputs[".keras"]
    training.save_keras_atomically(text_model, keras_path)
    print(f"saved {keras_path}")
    quantize = recipe_flags.quantize_mode(args)
    version_path = export.export_saved_model(model, args.export_dir, args.name, preprocessor=vectorizer,
                                             quantize=quantize)
    print(f"exported {version_path}" + (f" ({quantize} weights)" if quantize else ""))

    serving = tf.saved_model.load(version_path).signatures["serving_default"]
    outputs = serving(text=tf.constant(EXAMPLES))
    print("predictions of the exported SavedModel (serving_default):")
    for i, sentence in enumerate(EXAMPLES):
        probability = outputs["probabilities"][i].numpy()
        label = label_names[int(outputs["label"][i])]
        shown = f"{probability:.3f}" if binary else np.array2string(probability, precision=3)
        print(f"  {label:>10s}  {shown}  {sentence}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
