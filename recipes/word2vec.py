"""Learn word vectors with word2vec (skip-gram, negative sampling), show neighbours and analogies, export them.

Runs offline on the embedded sample corpus by default (a few seconds; 5 KB of text only shows the
mechanics, use --data for real vectors):

    python recipes/word2vec.py
    python recipes/word2vec.py --data corpus.txt --analogies questions-words.txt --epochs 5

Text files are read line by line (a line is a sentence: windows never cross lines), lower-cased and
split into words (letters, digits, apostrophes). Writes EXPORT_DIR/NAME.vectors.tsv and
EXPORT_DIR/NAME.metadata.tsv (load both in TensorBoard's embedding projector, projector.tensorflow.org)
and EXPORT_DIR/NAME.keras (the trained model; its "target_embedding" layer holds the vectors).
"""

import argparse
import os
import sys
import time

import kerazoo  # noqa: F401 (before TensorFlow: its import notices stay hidden)
import keras

from kerazoo import data, models, nonfinite, recipe_flags, training


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    source = parser.add_argument_group("data")
    source.add_argument("--data", nargs="+", metavar="PATH", help="UTF-8 text file(s) (default: the embedded sample)")
    source.add_argument("--min-count", type=int, default=5,
                        help="words seen fewer times are dropped (default: 5; 2 for the sample)")
    source.add_argument("--max-vocab", type=int, help="keep at most this many words")
    model = parser.add_argument_group("word2vec")
    model.add_argument("--embedding-dim", type=int, default=100, help="(default: 100)")
    model.add_argument("--window", type=int, default=5, help="largest target-context distance (default: 5)")
    model.add_argument("--negatives", type=int, default=5, help="negatives per pair (default: 5)")
    model.add_argument("--sample", type=float, default=1e-3,
                       help="sub-sampling threshold of frequent words, 0 = off (default: 1e-3)")
    fit = parser.add_argument_group("training")
    fit.add_argument("--epochs", type=int, default=5, help="(default: 5)")
    fit.add_argument("--batch-size", type=int, default=1024,
                     help="words per SGD update, each with its window (about window + 1 pairs a word; "
                          "16 updates per compiled step) (default: 1024; 128 for the sample)")
    fit.add_argument("--learning-rate", type=float, default=0.025,
                     help="word2vec's SGD rate, decayed linearly to 1/250 of it (word2vec's 0.025 -> "
                          "0.0001) (default: 0.025)")
    fit.add_argument("--seed", type=int, default=0, help="(default: 0)")
    out = parser.add_argument_group("evaluation and output")
    out.add_argument("--analogies", metavar="PATH",
                     help="analogy questions (word2vec's questions-words.txt format); only in-vocabulary "
                          "questions are asked")
    out.add_argument("--probe", nargs="+", help="words whose nearest neighbours are printed "
                                                "(default: some frequent words)")
    out.add_argument("--neighbours", type=int, default=8, help="(default: 8)")
    recipe_flags.add_export_flags(out, "word2vec")
    out.add_argument("--no-export", action="store_true", help="write nothing")
    recipe_flags.add_runtime_flags(parser)
    return recipe_flags.parse_args(parser, argv, check_flags)


def check_flags(args):
    """Everything the flags alone decide, checked before any data is read (see `kerazoo.recipe_flags`)."""
    recipe_flags.positive(args, "min_count", "embedding_dim", "window", "negatives", "epochs", "batch_size",
                          "neighbours")
    if args.max_vocab is not None:
        recipe_flags.positive(args, "max_vocab")
    recipe_flags.in_range(args, "sample", 0, 1)
    recipe_flags.in_range(args, "learning_rate", low=0, low_open=True)
    recipe_flags.in_range(args, "seed", 0, 2 ** 31 - 1 - args.epochs)
    args.outputs = None if args.no_export else recipe_flags.export_destination(
        args.export_dir, args.name, suffixes=(".keras", ".vectors.tsv", ".metadata.tsv"))


def write_projector_files(vectors, words, vectors_path, metadata_path):
    """TensorBoard projector files: one tab-separated vector per line, one word per line (written atomically)."""
    for path, lines in ((vectors_path, ("\t".join(f"{x:.6g}" for x in row) for row in vectors)),
                        (metadata_path, words)):
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.writelines(f"{line}\n" for line in lines)
        os.replace(tmp, path)


def train(args, sentences, batch_size):
    """Vocabulary, model and training at the global `batch_size`; returns `(model, words, seconds)`."""
    words, counts = data.build_vocabulary(sentences, args.min_count, args.max_vocab)
    ids, sentence_of = data.encode_words(sentences, words)
    print(f"vocabulary: {len(words):,} words (min count {args.min_count}); {ids.size:,} tokens in "
          f"{len(sentences):,} sentences")
    dataset = data.skipgram_dataset(ids, sentence_of, counts, args.window, args.sample, batch_size, seed=args.seed)
    total_steps = max(2, args.epochs * int(dataset.cardinality()))
    schedule = keras.optimizers.schedules.PolynomialDecay(args.learning_rate, total_steps,
                                                          args.learning_rate / 250)

    def build(plan):
        model = models.word2vec(len(words), args.embedding_dim, args.negatives)  # SGD: word2vec's sparse update
        return training.compile_model(model, plan, optimizer=keras.optimizers.SGD(schedule),
                                      loss=keras.losses.BinaryCrossentropy(from_logits=True))

    plan, model = training.plan_from_flags(args, build, dataset.take(1).get_single_element())
    guard = nonfinite.NonFiniteGuard()
    started = time.perf_counter()
    with plan.scope():
        model.fit(dataset, epochs=args.epochs, callbacks=[guard, *training.runtime_callbacks(args, plan)],
                  verbose=recipe_flags.fit_verbosity(args), shuffle=False)  # the dataset shuffles
    seconds = time.perf_counter() - started
    with recipe_flags.exit_on(FloatingPointError):
        guard.check(model)
    return model, words, seconds


def default_probes(words):
    """A few frequent content words (skipping the 30 most frequent, mostly function words)."""
    return [w for w in words[30:200] if len(w) > 3][:5] or words[:5]


def main(argv=None):
    args = parse_args(argv)
    with training.quiet_logs(args):
        return run(args)


def run(args):
    if not args.data:  # the 5 KB sample has few repeated words and few pairs
        args.min_count = 2 if args.min_count == 5 else args.min_count
        args.batch_size = 128 if args.batch_size == 1024 else args.batch_size
    batch_size = training.start_run(args)
    with recipe_flags.exit_on(ValueError, FileNotFoundError):
        corpus = data.read_text(args.data) if args.data else data.sample_corpus()
        questions = models.read_analogies(args.analogies) if args.analogies else None
    sentences = data.tokenize_words(corpus.splitlines())
    with recipe_flags.exit_on(ValueError):
        model, words, seconds = train(args, sentences, batch_size)
    vectors = model.get_layer("target_embedding").embeddings.numpy()
    print(f"done: {args.epochs} epochs in {seconds:.1f}s")

    index = {w: i for i, w in enumerate(words)}
    probes = [w.lower() for w in args.probe] if args.probe else default_probes(words)
    missing = [w for w in probes if w not in index]
    if missing:
        print(f"not in the vocabulary (skipped): {', '.join(missing)}")
    probes = [w for w in probes if w in index]
    if probes:
        neighbours, similarities = models.nearest_neighbours(
            vectors, vectors[[index[w] for w in probes]], args.neighbours, exclude=[[index[w]] for w in probes])
        for word, row, sims in zip(probes, neighbours, similarities):
            print(f"{word}: " + ", ".join(f"{words[i]} ({s:.2f})" for i, s in zip(row, sims)))
    if questions is not None:
        accuracy, correct, asked, total = models.analogy_accuracy(vectors, words, questions)
        print(f"analogies: {accuracy:.2%} ({correct:,} of {asked:,} in-vocabulary questions; {total:,} in the file)")

    if args.no_export:
        return 0
    os.makedirs(args.export_dir, exist_ok=True)
    write_projector_files(vectors, words, args.outputs[".vectors.tsv"], args.outputs[".metadata.tsv"])
    training.save_keras_atomically(model, args.outputs[".keras"])
    print(f"wrote {args.outputs['.vectors.tsv']}, {args.outputs['.metadata.tsv']} and {args.outputs['.keras']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
