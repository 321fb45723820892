"""Train an encoder–decoder translator (Transformer, or RNN with attention), score it with BLEU, and export it.

Runs offline on an embedded English→Spanish sample (sentences from a small bilingual grammar, about a
minute on 2 cores); --data takes tab-separated sentence pairs such as the Tatoeba/Anki export spa.txt:

    python recipes/translate.py
    python recipes/translate.py --data spa.txt --model transformer --epochs 10
    python recipes/translate.py --data spa.txt --model rnn --cell gru --time-budget 600

The pairs are split at random (fixed --seed) into train/validation/test (90/5/5 by default). Both sides
get a WordPiece vocabulary learned from the training part. Reported: validation loss and token accuracy,
corpus BLEU (sacrebleu) of greedy and beam-search translations on --bleu-split, sample translations.
The export (EXPORT_DIR/NAME/<version>/) maps a batch of source strings to translations (beam search).
"""

import argparse
import re
import sys
import time

import kerazoo  # noqa: F401 (before TensorFlow: its import notices stay hidden)
import numpy as np
import sacrebleu
import tensorflow as tf

from kerazoo import data, export, models, nonfinite, recipe_flags, seq2seq_decoding, text, training


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    source = parser.add_argument_group("data")
    source.add_argument("--data", metavar="PATH",
                        help="tab-separated sentence pairs, no header (default: the embedded sample)")
    source.add_argument("--source-column", type=int, default=0, help="0-based (default: 0)")
    source.add_argument("--target-column", type=int, default=1, help="0-based (default: 1)")
    source.add_argument("--max-pairs", type=int, help="use a random subset of this many pairs")
    source.add_argument("--validation-fraction", type=float, default=0.05, help="(default: 0.05)")
    source.add_argument("--test-fraction", type=float, default=0.05, help="(default: 0.05)")
    source.add_argument("--vocab-size", type=int, default=8000,
                        help="WordPiece vocabulary size of each side (default: 8000)")
    model = parser.add_argument_group("model")
    model.add_argument("--model", choices=("transformer", "rnn"), default="transformer", help="(default: transformer)")
    model.add_argument("--max-length", type=int, default=24,
                       help="tokens per source and per target; longer ones are cut (default: 24)")
    model.add_argument("--length-buckets", type=int, default=4,
                       help="training batches are grouped by length into this many buckets and cut to their "
                            "bucket's length, about half the cost of padding all to --max-length (default: 4)")
    model.add_argument("--d-model", type=int, default=64, help="transformer width (default: 64)")
    model.add_argument("--num-heads", type=int, default=4, help="(default: 4)")
    model.add_argument("--num-layers", type=int, default=2, help="encoder and decoder blocks (default: 2)")
    model.add_argument("--ff-dim", type=int, default=256, help="(default: 256)")
    model.add_argument("--cell", choices=tuple(models.seq2seq.CELLS), default="gru", help="rnn cell (default: gru)")
    model.add_argument("--embedding-dim", type=int, default=64, help="rnn embeddings (default: 64)")
    model.add_argument("--units", type=int, default=128, help="rnn state size (default: 128)")
    model.add_argument("--dropout", type=float, default=0.0, help="(default: 0)")
    fit = parser.add_argument_group("training")
    fit.add_argument("--batch-size", type=int, default=64, help="(default: 64)")
    fit.add_argument("--epochs", type=int, default=8, help="(default: 8)")
    fit.add_argument("--time-budget", type=float,
                     help="stop training after this many seconds (for comparisons at equal wall time)")
    fit.add_argument("--learning-rate", type=float, default=1e-3, help="peak rate (default: 1e-3)")
    fit.add_argument("--warmup-steps", type=int, default=50, help="(default: 50)")
    fit.add_argument("--weight-decay", type=float, default=0.01, help="(default: 0.01)")
    fit.add_argument("--seed", type=int, default=0, help="split, shuffling and initialisation (default: 0)")
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--bleu-split", choices=("validation", "test"), default="validation",
                            help="(default: validation)")
    evaluation.add_argument("--bleu-sentences", type=int, default=1000,
                            help="translate at most this many sentences of it for BLEU (default: 1000)")
    evaluation.add_argument("--beam-width", type=int, default=4, help="(default: 4)")
    evaluation.add_argument("--length-penalty", type=float, default=0.6, help="GNMT alpha (default: 0.6)")
    evaluation.add_argument("--samples", type=int, default=5, help="translations printed (default: 5)")
    out = parser.add_argument_group("output")
    recipe_flags.add_export_flags(out, "translator")
    out.add_argument("--no-export", action="store_true", help="skip saving and exporting")
    recipe_flags.add_runtime_flags(parser)
    return recipe_flags.parse_args(parser, argv, check_flags)


def check_flags(args):
    """Everything the flags alone decide, checked before any data is read (see `kerazoo.recipe_flags`)."""
    recipe_flags.positive(args, "vocab_size", "max_length", "length_buckets", "d_model", "num_heads", "num_layers", "ff_dim",
                          "embedding_dim", "units", "batch_size", "epochs", "bleu_sentences", "beam_width")
    if args.max_pairs is not None:
        recipe_flags.positive(args, "max_pairs")
    recipe_flags.in_range(args, "source_column", low=0)
    recipe_flags.in_range(args, "target_column", low=0)
    recipe_flags.in_range(args, "validation_fraction", 0, 0.5, low_open=True)
    recipe_flags.in_range(args, "test_fraction", 0, 0.5, low_open=True)
    recipe_flags.in_range(args, "dropout", 0, 1, high_open=True)
    recipe_flags.in_range(args, "learning_rate", low=0, low_open=True)
    recipe_flags.in_range(args, "warmup_steps", low=0)
    recipe_flags.in_range(args, "weight_decay", low=0)
    recipe_flags.in_range(args, "length_penalty", low=0)
    recipe_flags.in_range(args, "samples", low=0)
    recipe_flags.in_range(args, "seed", 0, 2 ** 31 - 1)
    if args.time_budget is not None:
        recipe_flags.in_range(args, "time_budget", low=0, low_open=True)
    if args.max_length < 2:
        raise ValueError(f"--max-length must be >= 2 (a start or end token and a word); received {args.max_length}")
    if args.model == "transformer" and args.d_model % args.num_heads:
        raise ValueError(f"--d-model {args.d_model} is not divisible by --num-heads {args.num_heads}")
    args.outputs = None if args.no_export else recipe_flags.export_destination(
        args.export_dir, args.name, suffixes=(".keras", ".source.vocabulary.json", ".target.vocabulary.json"))


def split(sources, targets, validation_fraction, test_fraction, max_pairs, seed):
    """Random train/validation/test parts (lists of (source, target))."""
    order = np.random.default_rng(seed).permutation(len(sources))[:max_pairs]
    pairs = [(sources[i], targets[i]) for i in order]
    n_val, n_test = int(len(pairs) * validation_fraction), int(len(pairs) * test_fraction)
    if min(n_val, n_test, len(pairs) - n_val - n_test) < 1:
        raise SystemExit(f"error: {len(pairs)} pairs are too few for the validation and test fractions")
    return pairs[n_val + n_test:], pairs[:n_val], pairs[n_val:n_val + n_test]


def translate(model, sentences, source_tokenizer, target_tokenizer, args, strategy):
    """Translations of `sentences` (str), decoded in batches."""
    start, end = (target_tokenizer.vocabulary.index(token) for token in (text.START, text.END))
    out = []
    for i in range(0, len(sentences), 256):
        ids = source_tokenizer(tf.constant(sentences[i:i + 256]))[:, :args.max_length].to_tensor().numpy()
        tokens = seq2seq_decoding.translate(model, ids, args.max_length, start, end, strategy=strategy,
                                            beam_width=args.beam_width, length_penalty=args.length_penalty)
        tokens = np.where(tokens == end, 0, tokens)
        out += [tidy(t.decode("utf-8", "replace")) for t in target_tokenizer.detokenize(tokens).numpy()]
    return out


def tidy(sentence):
    """Undoes WordPiece's spaces around punctuation: "¿ Dónde está ?" -> "¿Dónde está?"."""
    sentence = re.sub(r" ([.,!?;:%)»])", r"\1", sentence)
    return re.sub(r"([¿¡(«]) ", r"\1", sentence).replace(" ' ", "'")


def main(argv=None):
    args = parse_args(argv)
    with training.quiet_logs(args):
        return run(args)


def run(args):
    batch_size = training.start_run(args)
    with recipe_flags.exit_on(ValueError, FileNotFoundError):
        sources, targets = (data.read_pairs(args.data, args.source_column, args.target_column) if args.data
                            else data.sample_pairs())
    train, val, test = split(sources, targets, args.validation_fraction, args.test_fraction, args.max_pairs,
                             args.seed)
    print(f"pairs: {len(sources):,} from {args.data or 'the embedded sample'}; "
          f"train {len(train):,} / validation {len(val):,} / test {len(test):,}")
    started = time.perf_counter()
    source_tokenizer = text.WordPieceTokenizer.learn([s for s, _ in train], vocab_size=args.vocab_size)
    target_tokenizer = text.WordPieceTokenizer.learn([t for _, t in train], vocab_size=args.vocab_size,
                                                     reserved_tokens=(text.START, text.END))
    start, end = (target_tokenizer.vocabulary.index(token) for token in (text.START, text.END))

    def encode(pairs):
        return data.encode_pairs([s for s, _ in pairs], [t for _, t in pairs], source_tokenizer,
                                 target_tokenizer, args.max_length, start, end)

    train_ids, val_ids = encode(train), encode(val)
    print(f"WordPiece: source {source_tokenizer.vocabulary_size:,} / target {target_tokenizer.vocabulary_size:,} "
          f"tokens ({time.perf_counter() - started:.0f}s)")

    train_ds = data.pairs_dataset(train_ids, batch_size, seed=args.seed, length_buckets=args.length_buckets)
    val_ds = data.pairs_dataset(val_ids, 256, shuffle=False)
    steps = args.epochs * -(-len(train) // batch_size)

    def build(plan):
        if args.model == "transformer":
            model = models.transformer_seq2seq(
                source_tokenizer.vocabulary_size, target_tokenizer.vocabulary_size, args.max_length,
                args.d_model, args.num_heads, args.num_layers, args.ff_dim, args.dropout)
        else:
            model = models.rnn_seq2seq(source_tokenizer.vocabulary_size, target_tokenizer.vocabulary_size,
                                       args.embedding_dim, args.units, args.cell, args.dropout)
        schedule = training.warmup_cosine(args.learning_rate, min(args.warmup_steps, steps - 1), steps,
                                          args.learning_rate / 10)
        optimizer = training.adamw(schedule, weight_decay=args.weight_decay, global_clipnorm=1.0)
        return training.compile_model(model, plan, optimizer=optimizer,
                                      weighted_metrics=["sparse_categorical_accuracy"])

    plan, model = training.plan_from_flags(args, build, train_ds.take(1).get_single_element())
    print(f"model: {args.model}, {model.count_params():,} parameters")

    guard = nonfinite.NonFiniteGuard()
    callbacks = [guard] + ([training.TimeBudget(args.time_budget)] if args.time_budget else [])
    started = time.perf_counter()
    with plan.scope():
        model.fit(train_ds, epochs=args.epochs, validation_data=val_ds,
                  callbacks=[*callbacks, *training.runtime_callbacks(args, plan)],
                  verbose=recipe_flags.fit_verbosity(args), shuffle=False)  # the dataset shuffles
        train_seconds = time.perf_counter() - started
        with recipe_flags.exit_on(FloatingPointError):
            guard.check(model)
        val_loss, val_accuracy = model.evaluate(val_ds, verbose=0)
    print(f"done: {train_seconds:.0f}s of training; validation loss {val_loss:.4f}, "
          f"token accuracy {val_accuracy:.4f}")

    bleu_pairs = (val if args.bleu_split == "validation" else test)[:args.bleu_sentences]
    sentences, references = [s for s, _ in bleu_pairs], [t for _, t in bleu_pairs]
    hypotheses = {}
    for strategy in ("greedy", "beam"):
        decode_start = time.perf_counter()
        hypotheses[strategy] = translate(model, sentences, source_tokenizer, target_tokenizer, args, strategy)
        bleu = sacrebleu.corpus_bleu(hypotheses[strategy], [references])
        label = "greedy" if strategy == "greedy" else f"beam {args.beam_width}"
        print(f"BLEU ({args.bleu_split}, {len(sentences)} sentences, {label}): {bleu.score:.2f} "
              f"[{time.perf_counter() - decode_start:.0f}s]")
    for i in range(min(args.samples, len(sentences))):
        print(f"--- {sentences[i]}\n    reference: {references[i]}\n    beam:      {hypotheses['beam'][i]}")

    if args.no_export:
        return 0
    training.save_keras_atomically(model, args.outputs[".keras"])
    source_tokenizer.save_vocabulary(args.outputs[".source.vocabulary.json"])
    target_tokenizer.save_vocabulary(args.outputs[".target.vocabulary.json"])
    version_path = export.export_translator(model, source_tokenizer, target_tokenizer, args.export_dir, args.name,
                                            max_new_tokens=args.max_length, beam_width=args.beam_width,
                                            length_penalty=args.length_penalty)
    print(f"saved {args.outputs['.keras']} and the vocabularies; exported {version_path}")
    serving = tf.saved_model.load(version_path).signatures["serving_default"]
    served = serving(text=tf.constant(sentences[:2]))["translation"].numpy()
    for sentence, translation in zip(sentences[:2], served):
        print(f"exported translator: {sentence!r} -> {tidy(translation.decode('utf-8', 'replace'))!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
