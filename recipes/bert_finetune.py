"""Fine-tune a BERT encoder for text classification, evaluate it, and export it for TF Serving.

Fine-tunes what recipes/bert_pretrain.py saved (by default in
saved_models/bert_pretrained), or trains the same model from scratch:

    python recipes/bert_pretrain.py && python recipes/bert_finetune.py
    python recipes/bert_finetune.py --pretrained DIR --data train.tsv --val-data dev.tsv --mode top-k --top-k 2
    python recipes/bert_finetune.py --from-scratch --vocabulary DIR/vocabulary.json --data train.tsv

--mode full trains every weight; frozen only the classification layer (the
encoder is a fixed feature extractor); top-k the last K Transformer blocks,
the pooler and the classification layer. AdamW (lr 2e-5 by default) with
linear warm-up and decay, early stopping on the validation loss. Data files
are what kerazoo.data.load_labeled_text reads (csv / tsv with a header, JSON
Lines). The export takes raw strings: WordPiece and [CLS] text [SEP] packing
run inside the SavedModel.
"""

import argparse
import dataclasses
import json
import os
import sys
import time

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
    add_encoder_flags(parser)
    add_data_flags(parser)
    fit = parser.add_argument_group("fine-tuning")
    fit.add_argument("--mode", choices=models.FINETUNE_MODES, default="full",
                     help="which weights train (default: full)")
    fit.add_argument("--top-k", type=int, default=2, help="blocks trained with --mode top-k (default: 2)")
    fit.add_argument("--max-length", type=int,
                     help="tokens per text, [CLS] and [SEP] included (default: the encoder's maximum)")
    fit.add_argument("--dropout", type=float, default=0.1, help="before the classifier (default: 0.1)")
    fit.add_argument("--epochs", type=int, default=3, help="maximum epochs (default: 3)")
    fit.add_argument("--batch-size", type=int, default=32, help="(default: 32)")
    fit.add_argument("--learning-rate", type=float, default=2e-5, help="peak AdamW rate (default: 2e-5)")
    fit.add_argument("--warmup-fraction", type=float, default=0.1,
                     help="share of the steps spent warming up (default: 0.1)")
    fit.add_argument("--weight-decay", type=float, default=0.01, help="(default: 0.01)")
    fit.add_argument("--patience", type=int, default=1,
                     help="early stopping: epochs without val_loss improvement (default: 1)")
    fit.add_argument("--seed", type=int, default=0, help="(default: 0)")
    out = parser.add_argument_group("output")
    recipe_flags.add_export_flags(out, "bert_classifier")
    recipe_flags.add_quantize_flag(out, "layer norms and biases")
    out.add_argument("--report", metavar="FILE", help="also write the metrics and timings as JSON here")
    recipe_flags.add_runtime_flags(parser)
    return recipe_flags.parse_args(parser, argv, check_flags)


def add_encoder_flags(parser):
    """The flags choosing the encoder: `--pretrained DIR` or `--from-scratch` and its size (also lightweight_finetune.py)."""
    group = parser.add_argument_group("starting point")
    start = group.add_mutually_exclusive_group()
    start.add_argument("--pretrained", metavar="DIR", default="saved_models/bert_pretrained",
                       help="output of bert_pretrain.py (default: saved_models/bert_pretrained)")
    start.add_argument("--from-scratch", action="store_true",
                       help="a randomly initialised encoder of the size given below")
    group.add_argument("--encoder-dropout", type=float,
                       help="dropout after the embeddings and in every block while fine-tuning (default: 0.1 from "
                            "scratch; a pretrained encoder keeps its own, 0 from bert_pretrain.py)")
    scratch = parser.add_argument_group("from scratch")
    scratch.add_argument("--vocabulary", metavar="FILE",
                         help="vocabulary.json to use (default: learn one from the training texts)")
    scratch.add_argument("--vocab-size", type=int, default=8192, help="when learning one (default: 8192)")
    scratch.add_argument("--d-model", type=int, default=256, help="(default: 256)")
    scratch.add_argument("--num-heads", type=int, default=4, help="(default: 4)")
    scratch.add_argument("--num-layers", type=int, default=4, help="(default: 4)")
    scratch.add_argument("--ff-dim", type=int, default=1024, help="(default: 1024)")
    scratch.add_argument("--keep-case", action="store_true", help="do not lower-case the text")


def add_data_flags(parser):
    """The flags choosing the labeled data (also lightweight_finetune.py)."""
    source = parser.add_argument_group("data")
    source.add_argument("--dataset", default="sample", choices=data.DATASETS,
                        help="named dataset when --data is not given (default: sample, embedded)")
    source.add_argument("--data", metavar="PATH", help="labeled training file (csv/tsv/jsonl)")
    source.add_argument("--val-data", metavar="PATH",
                        help="labeled validation file (default: split off --validation-split)")
    source.add_argument("--validation-split", type=float, default=0.2,
                        help="fraction held out when there is no --val-data (default: 0.2)")
    source.add_argument("--max-train-examples", type=int,
                        help="train on a random subset of this many examples (default: all)")
    source.add_argument("--text-column", help="name of the text column/key")
    source.add_argument("--label-column", help="name of the label column/key")


def check_flags(args):
    """Everything the flags alone decide, checked before any data is read (see `kerazoo.recipe_flags`)."""
    check_encoder_and_data_flags(args)
    recipe_flags.positive(args, "epochs", "batch_size", "top_k")
    for name in ("dropout", "warmup_fraction"):
        recipe_flags.in_range(args, name, 0, 1, high_open=True)
    recipe_flags.in_range(args, "learning_rate", low=0, low_open=True)
    recipe_flags.in_range(args, "weight_decay", low=0)
    recipe_flags.in_range(args, "patience", low=0)
    recipe_flags.in_range(args, "seed", 0, 2 ** 32 - 1)
    args.outputs = recipe_flags.export_destination(args.export_dir, args.name)


def check_encoder_and_data_flags(args):
    """The checks of `add_encoder_flags` and `add_data_flags` (and `--max-length`)."""
    recipe_flags.positive(args, "vocab_size", "d_model", "num_heads", "num_layers", "ff_dim")
    recipe_flags.in_range(args, "vocab_size", low=6)  # 5 special tokens and one piece
    if args.max_length is not None:
        recipe_flags.in_range(args, "max_length", low=4)
    if args.max_train_examples is not None:
        recipe_flags.in_range(args, "max_train_examples", low=2)
    if args.encoder_dropout is not None:
        recipe_flags.in_range(args, "encoder_dropout", 0, 1, high_open=True)
    recipe_flags.in_range(args, "validation_split", 0, 1, low_open=True, high_open=True)
    if args.from_scratch and args.d_model % args.num_heads:
        raise ValueError(f"--d-model {args.d_model} is not divisible by --num-heads {args.num_heads}")


def load_data(args, print_fn=print):
    """(train, validation) `LabeledText`s as the flags ask (a `--max-train-examples` subset); prints their sizes."""
    try:
        train, val = _read_data(args)
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    if list(val.label_names) != list(train.label_names):
        raise SystemExit(f"error: training labels {list(train.label_names)} differ from validation labels "
                         f"{list(val.label_names)}")
    if args.max_train_examples and args.max_train_examples < len(train):
        keep = np.sort(np.random.default_rng(args.seed).permutation(len(train))[:args.max_train_examples])
        train = dataclasses.replace(train, texts=[train.texts[i] for i in keep], labels=train.labels[keep])
    for split_name, split in (("train", train), ("validation", val)):
        counts = np.bincount(split.labels, minlength=len(train.label_names))
        print_fn(f"{split_name}: {len(split)} texts from {split.source}; "
                 + ", ".join(f"{n}={c}" for n, c in zip(train.label_names, counts)))
    return train, val


def _read_data(args):
    if args.data:
        options = dict(text_column=args.text_column, label_column=args.label_column)
        train = data.load_labeled_text(args.data, **options)
        if args.val_data:
            return train, data.load_labeled_text(args.val_data, **options)
    else:
        if args.val_data:
            raise SystemExit("error: --val-data needs --data")
        train = data.load_dataset(args.dataset)
    return train.split(args.validation_split, seed=args.seed)


def load_encoder(args, train_texts, plan):
    """(backbone, tokenizer, lower_case): the pretrained encoder, or a fresh one of the flags' size."""
    tokenizer, lower_case, _ = load_tokenizer(args, train_texts)
    return load_backbone(args, tokenizer, plan), tokenizer, lower_case


def load_tokenizer(args, train_texts):
    """(tokenizer, lower_case, encoder_length): the pretrained encoder's, or one for a fresh encoder."""
    if not args.from_scratch:
        files = _pretrained_files(args)
        with open(files["pretraining.json"], encoding="utf-8") as f:
            settings = json.load(f)
        if not {"lower_case", "max_length"} <= settings.keys():
            raise ValueError(f"{files['pretraining.json']} lacks lower_case or max_length: not written by "
                             "recipes/bert_pretrain.py")
        tokenizer = text.WordPieceTokenizer.from_vocabulary_file(files["vocabulary.json"])
        return tokenizer, settings["lower_case"], settings["max_length"]
    lower_case = not args.keep_case
    if args.vocabulary:
        tokenizer = text.WordPieceTokenizer.from_vocabulary_file(args.vocabulary)
    else:
        tokenizer = text.learn_bert_vocabulary(train_texts, args.vocab_size, lower_case=lower_case)
    return tokenizer, lower_case, args.max_length or 128


def load_backbone(args, tokenizer, plan):
    """The pretrained backbone, or a fresh one of the flags' size, computing in `plan`'s precision.

    A `.keras` file keeps the dtype policy and dropout it was trained with, so a loaded backbone is rebuilt
    with the plan's policy (`training.with_precision`) and any `--encoder-dropout` (`models.with_dropout`).
    """
    with plan.scope():
        if not args.from_scratch:
            backbone = training.with_precision(keras.models.load_model(_pretrained_files(args)["backbone.keras"]),
                                               plan.precision)
            return backbone if args.encoder_dropout is None else models.with_dropout(backbone, args.encoder_dropout)
        dropout = 0.1 if args.encoder_dropout is None else args.encoder_dropout
        return models.bert_backbone(tokenizer.vocabulary_size, args.max_length or 128, args.d_model,
                                    args.num_heads, args.num_layers, args.ff_dim, dropout)


def _pretrained_files(args):
    files = {name: os.path.join(args.pretrained, name)
             for name in ("backbone.keras", "vocabulary.json", "pretraining.json")}
    missing = [path for path in files.values() if not os.path.isfile(path)]
    if missing:
        raise SystemExit(f"error: {missing[0]} not found: run recipes/bert_pretrain.py --output-dir "
                         f"{args.pretrained} first, or pass --from-scratch")
    return files


def main(argv=None):
    args = parse_args(argv)
    with training.quiet_logs(args):
        return run(args)


def run(args):
    batch_size = training.start_run(args)
    train, val = load_data(args)
    label_names = list(train.label_names)

    try:
        tokenizer, lower_case, encoder_length = load_tokenizer(args, train.texts)
        if args.max_length and args.max_length > encoder_length:
            raise ValueError(f"--max-length {args.max_length} exceeds the encoder's maximum {encoder_length}")
        preprocessor = text.BertPreprocessor(tokenizer, args.max_length or encoder_length, lower_case=lower_case)
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    train_ds = text.classification_dataset(train.texts, train.labels, preprocessor, batch_size, shuffle=True,
                                           seed=args.seed)
    val_ds = text.classification_dataset(val.texts, val.labels, preprocessor, batch_size)
    steps = args.epochs * -(-len(train) // batch_size)
    trainable = []

    def build(plan):
        try:
            model = models.bert_classifier(load_backbone(args, tokenizer, plan), len(label_names),
                                           dropout=args.dropout)
            trainable[:] = models.set_finetune_mode(model, args.mode, args.top_k if args.mode == "top-k" else None)
        except (OSError, ValueError) as error:
            raise SystemExit(f"error: {error}") from None
        schedule = training.WarmupLinear(args.learning_rate, int(args.warmup_fraction * steps), steps)
        optimizer = training.adamw(schedule, weight_decay=args.weight_decay)
        return training.compile_model(model, plan, optimizer=optimizer, loss="sparse_categorical_crossentropy",
                                      metrics=["accuracy"])

    plan, model = training.plan_from_flags(args, build, train_ds.take(1).get_single_element())
    start = "from scratch" if args.from_scratch else f"pretrained ({args.pretrained})"
    print(f"encoder: {start}; mode {args.mode}: {sum(int(np.prod(v.shape)) for v in model.trainable_weights):,d}"
          f" of {model.count_params():,d} parameters train ({', '.join(trainable)})")

    timer, guard = training.EpochTimer(), nonfinite.NonFiniteGuard()
    stop = keras.callbacks.EarlyStopping(monitor="val_loss", patience=args.patience, restore_best_weights=True,
                                         verbose=1)
    fit_start = time.perf_counter()
    with plan.scope():
        model.fit(train_ds, validation_data=val_ds, epochs=args.epochs, verbose=recipe_flags.fit_verbosity(args),
                  callbacks=[guard, stop, timer, *training.runtime_callbacks(args, plan)],
                  shuffle=False)  # the dataset reshuffles itself every epoch
    fit_seconds = time.perf_counter() - fit_start
    with recipe_flags.exit_on(FloatingPointError):
        guard.check(model)
    print(f"trained {len(timer.durations)} epochs in {fit_seconds:,.0f} s"
          + (f"; best epoch {stop.best_epoch + 1} restored" if stop.stopped_epoch else ""))

    predicted = model.predict(val_ds, verbose=0).argmax(-1)
    report = classification_report(val.labels, predicted, label_names)
    print("validation:\n" + str(report))

    text_model = models.with_preprocessor(model, preprocessor)
    keras_path = args.outputs[".keras"]
    training.save_keras_atomically(text_model, keras_path)
    print(f"saved {keras_path}")
    quantize = recipe_flags.quantize_mode(args)
    version_path = export.export_saved_model(model, args.export_dir, args.name, preprocessor=preprocessor,
                                             quantize=quantize)
    print(f"exported {version_path}" + (f" ({quantize} weights)" if quantize else ""))
    serving = tf.saved_model.load(version_path).signatures["serving_default"]
    outputs = serving(text=tf.constant(EXAMPLES))
    print("predictions of the exported SavedModel (serving_default):")
    for i, sentence in enumerate(EXAMPLES):
        probabilities = np.array2string(outputs["probabilities"][i].numpy(), precision=3)
        print(f"  {label_names[int(outputs['label'][i])]:>10s}  {probabilities}  {sentence}")
    if args.report:
        with open(args.report, "w", encoding="utf-8") as f:
            json.dump(dict(start=start, mode=args.mode, top_k=args.top_k, accuracy=report.accuracy,
                           precision=report.precision, recall=report.recall, f1=report.f1,
                           epochs=len(timer.durations), fit_seconds=fit_seconds,
                           trainable_parameters=sum(int(np.prod(v.shape)) for v in model.trainable_weights),
                           train_examples=len(train), export=version_path), f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
