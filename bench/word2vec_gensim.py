"""word2vec: kerazoo (skip-gram, negative sampling, Keras/TF) vs gensim's Word2Vec on the same corpus and settings.

Builds one English corpus (a sentence or line per line) from the shared data folder: Tiny Shakespeare,
SST-2 sentences, sarcasm headlines, the English side of spa-eng, RTE/CB premises and hypotheses and
TREC questions. Both systems get the same tokenised sentences, vocabulary cut (min count), dimension,
window, negatives, sub-sampling threshold and epochs; gensim uses --workers threads (pip install gensim:
benchmark environment only; the same --learning-rate, gensim's alpha). Reported: wall time of
training (for kerazoo all of `recipes/word2vec.py`'s `train`: vocabulary, windows, plan, compile, fit; for
gensim the `Word2Vec` constructor, which also builds its vocabulary) and the process's CPU time, analogy accuracy on the in-vocabulary
questions (the same evaluation code for both), nearest neighbours of probe words. Runs are interleaved
(kerazoo, gensim, kerazoo, ...) and medians reported.

    python bench/word2vec_gensim.py --shared ../shared/data --repeats 1
"""

import argparse
import csv
import importlib.util
import json
import os
import pathlib
import resource
import statistics
import time


from kerazoo import data, models

RECIPE = pathlib.Path(__file__).resolve().parent.parent / "recipes" / "word2vec.py"
PROBES = ["king", "film", "france", "good", "love", "money"]


def english_lines(shared):
    """Every English text of the shared data folder, one sentence or line per entry."""
    lines = open(os.path.join(shared, "tinyshakespeare/input.txt"), encoding="utf-8").read().splitlines()
    for name in ("train.tsv", "dev.tsv"):
        with open(os.path.join(shared, "sst2", name), encoding="utf-8") as f:
            lines += [row["sentence"] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    with open(os.path.join(shared, "sarcasm/Sarcasm_Headlines_Dataset.json"), encoding="utf-8") as f:
        lines += [json.loads(line)["headline"] for line in f if line.strip()]
    lines += data.read_pairs(os.path.join(shared, "spa-eng/spa.txt"))[0]
    for task in ("rte", "cb"):
        for split in ("train", "val"):
            with open(os.path.join(shared, "icl", task, f"{split}.jsonl"), encoding="utf-8") as f:
                for line in f:
                    record = json.loads(line)
                    lines += [record["premise"], record["hypothesis"]]
    for split in ("train", "test"):
        with open(os.path.join(shared, "icl/trec", f"{split}.txt"), encoding="latin-1") as f:
            lines += [line.split(" ", 1)[1] for line in f if " " in line]
    return lines


def cpu_seconds():
    """User + system CPU time of this process, all threads (less sensitive than wall time to a shared machine)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_kerazoo(recipe, args, sentences):
    options = recipe.parse_args(["--min-count", str(args.min_count), "--embedding-dim", str(args.dim),
                                 "--window", str(args.window), "--negatives", str(args.negatives),
                                 "--epochs", str(args.epochs), "--no-export", "--seed", str(args.seed),
                                 "--batch-size", str(args.batch_size), "--learning-rate", str(args.learning_rate)])
    started = time.perf_counter()  # all of it, as gensim's: vocabulary, windows, plan, compile, training
    model, words, _ = recipe.train(options, sentences, options.batch_size)
    return model.get_layer("target_embedding").embeddings.numpy(), words, time.perf_counter() - started


def run_gensim(args, sentences):
    from gensim.models import Word2Vec

    started = time.perf_counter()
    model = Word2Vec(sentences, vector_size=args.dim, window=args.window, negative=args.negatives, sg=1,
                     min_count=args.min_count, sample=1e-3, epochs=args.epochs, workers=args.workers,
                     alpha=args.learning_rate, seed=args.seed)
    return model.wv.vectors, list(model.wv.index_to_key), time.perf_counter() - started


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", required=True, help="the shared data folder")
    parser.add_argument("--analogies", help="default: SHARED/analogy/questions-words.txt")
    parser.add_argument("--dim", type=int, default=100)
    parser.add_argument("--window", type=int, default=5)
    parser.add_argument("--negatives", type=int, default=5)
    parser.add_argument("--min-count", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2, help="gensim threads (default: 2)")
    parser.add_argument("--batch-size", type=int, default=1024, help="kerazoo words per SGD update (default: 1024)")
    parser.add_argument("--learning-rate", type=float, default=0.025,
                        help="kerazoo SGD rate, gensim's alpha (default: 0.025)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location("word2vec_recipe", RECIPE)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    sentences = data.tokenize_words(english_lines(args.shared))
    questions = models.read_analogies(args.analogies or os.path.join(args.shared, "analogy/questions-words.txt"))
    print(f"corpus: {len(sentences):,} sentences, {sum(map(len, sentences)):,} words; "
          f"dim {args.dim}, window {args.window}, negatives {args.negatives}, min count {args.min_count}, "
          f"epochs {args.epochs}")
    results = {"kerazoo": [], "gensim": []}
    for _ in range(args.repeats):
        for system, run in (("kerazoo", run_kerazoo), ("gensim", run_gensim)):
            cpu = cpu_seconds()
            vectors, words, seconds = run(recipe, args, sentences) if system == "kerazoo" else run(args, sentences)
            cpu = cpu_seconds() - cpu
            accuracy, correct, asked, total = models.analogy_accuracy(vectors, words, questions)
            results[system].append(dict(seconds=seconds, cpu=cpu, accuracy=accuracy, vectors=vectors, words=words))
            print(f"[{system}] {seconds:.1f}s ({cpu:.1f} CPU s), analogies {accuracy:.2%} ({correct}/{asked} "
                  f"in-vocabulary of {total}), vocabulary {len(words):,}")
    print("\n| system | train wall s (median) | CPU s (median) | analogy accuracy (median) |\n|---|---|---|---|")
    for system, runs in results.items():
        print(f"| {system} | {statistics.median(r['seconds'] for r in runs):.1f} | "
              f"{statistics.median(r['cpu'] for r in runs):.1f} | "
              f"{100 * statistics.median(r['accuracy'] for r in runs):.2f}% |")
    k, g = ({key: statistics.median(r[key] for r in results[name]) for key in ("seconds", "cpu", "accuracy")}
            for name in ("kerazoo", "gensim"))
    print(f"wall-time ratio kerazoo / gensim: {k['seconds'] / g['seconds']:.2f}; CPU-time ratio: "
          f"{k['cpu'] / g['cpu']:.2f}; accuracy difference: {100 * (k['accuracy'] - g['accuracy']):+.2f} points")
    for system, runs in results.items():
        vectors, words = runs[-1]["vectors"], runs[-1]["words"]
        index = {w: i for i, w in enumerate(words)}
        probes = [p for p in PROBES if p in index]
        ids, _ = models.nearest_neighbours(vectors, vectors[[index[p] for p in probes]], 6,
                                           exclude=[[index[p]] for p in probes])
        for probe, row in zip(probes, ids):
            print(f"  {system} {probe}: {', '.join(words[i] for i in row)}")


if __name__ == "__main__":
    main()
