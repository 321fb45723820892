"""English→Spanish translation at equal wall-clock training time: kerazoo Transformer and RNN vs the keras.io reference.

The reference is keras.io's `neural_machine_translation_with_transformer` (word-level TextVectorization,
vocab 15,000, sequence length 20, embed 256, latent 2048, 8 heads, one encoder and one decoder layer,
rmsprop, batch 64), built from KerasHub's TransformerEncoder/TransformerDecoder (pip install keras-hub:
benchmark environment only). Every system trains for --budget seconds on the same random 90/5/5 split,
in turns of --slice seconds (round robin, so a shared machine's load falls on all alike), then translates the same --test-sentences test sentences.
Before the budgets start, each system's train step is compiled for every batch shape it will see (the
reference: one; kerazoo: one per length bucket) and those steps are undone, so no compile is in any budget.
kerazoo's systems use the recipe's defaults (learning rate, warm-up, weight decay, no dropout, length buckets)
at the widths given in `kerazoo_system`. BLEU is computed twice with sacrebleu: on the
reference's normalisation (lower case, punctuation removed, as its TextVectorization sees text), the
same for every system, and cased on raw text for kerazoo. Greedy decoding for every system, beam 4 for kerazoo.

    python bench/translation_spa_eng.py --data ../shared/data/spa-eng/spa.txt --budget 420
"""

import argparse
import contextlib
import fcntl
import importlib.util
import pathlib
import re
import string
import time

import keras
import numpy as np
import sacrebleu
import tensorflow as tf

from kerazoo import data, models, text, training

RECIPE = pathlib.Path(__file__).resolve().parent.parent / "recipes" / "translate.py"
STRIP = re.escape(string.punctuation.replace("[", "").replace("]", "") + "¿¡")


def normalise(sentence):
    """The reference's view of a sentence: lower case, no punctuation, single spaces."""
    return " ".join(re.sub(f"[{STRIP}]", "", sentence.lower()).split())


def keras_io_reference(train, batch_size=64):
    """The keras.io example's vectorizers, dataset and model, compiled as the example does."""
    import keras_hub

    vocab, length, embed, latent, heads = 15000, 20, 256, 2048, 8
    source_vectorizer = keras.layers.TextVectorization(vocab, output_sequence_length=length)
    target_vectorizer = keras.layers.TextVectorization(
        vocab, output_sequence_length=length + 1,
        standardize=lambda s: tf.strings.regex_replace(tf.strings.lower(s), f"[{STRIP}]", ""))
    source_vectorizer.adapt([s for s, _ in train])
    target_vectorizer.adapt([f"[start] {t} [end]" for _, t in train])
    source = source_vectorizer(tf.constant([s for s, _ in train]))
    target = target_vectorizer(tf.constant([f"[start] {t} [end]" for _, t in train]))
    dataset = tf.data.Dataset.from_tensor_slices(((source, target[:, :-1]), target[:, 1:]))
    dataset = dataset.shuffle(len(train), seed=0).batch(batch_size).prefetch(tf.data.AUTOTUNE)

    encoder_inputs = keras.Input((None,), dtype="int64", name="encoder_inputs")
    x = keras_hub.layers.TokenAndPositionEmbedding(vocab, length, embed, mask_zero=True)(encoder_inputs)
    encoded = keras_hub.layers.TransformerEncoder(latent, heads)(x)
    decoder_inputs = keras.Input((None,), dtype="int64", name="decoder_inputs")
    y = keras_hub.layers.TokenAndPositionEmbedding(vocab, length, embed, mask_zero=True)(decoder_inputs)
    y = keras_hub.layers.TransformerDecoder(latent, heads)(y, encoded)
    y = keras.layers.Dropout(0.5)(y)
    outputs = keras.layers.Dense(vocab, activation="softmax")(y)
    model = keras.Model([encoder_inputs, decoder_inputs], outputs, name="keras_io_transformer")
    model.compile("rmsprop", loss="sparse_categorical_crossentropy", metrics=["accuracy"])

    def decode(test):
        """The example's greedy decode_sequence (full recomputation each step), batched."""
        words = target_vectorizer.get_vocabulary()
        start, end = words.index("[start]"), words.index("[end]")
        hypotheses = []
        for i in range(0, len(test), 256):
            batch = test[i:i + 256]
            src = source_vectorizer(tf.constant([s for s, _ in batch]))
            tgt = np.zeros((len(batch), length + 1), np.int64)
            tgt[:, 0] = start
            for t in range(length):
                tgt[:, t + 1] = np.argmax(model.predict_on_batch([src, tgt[:, :-1]])[:, t], axis=-1)
            for row in tgt[:, 1:]:
                row = list(row)
                row = row[:row.index(end)] if end in row else row
                hypotheses.append(" ".join(words[j] for j in row if j))
        return {"greedy": hypotheses}

    return dict(model=model, dataset=dataset, decode=decode)


def kerazoo_system(kind, recipe, train, tokenizers, args):
    """A kerazoo translator built as `recipes/translate.py` builds it (its flags, its plan), and its decoder."""
    flags = ["--model", kind, "--max-length", "24", "--vocab-size", "8000", "--no-export"]
    if kind == "transformer":
        flags += ["--d-model", "256", "--num-heads", "4", "--num-layers", "2", "--ff-dim", "1024"]
    else:
        flags += ["--embedding-dim", "128", "--units", "256"]
    options = recipe.parse_args(flags)
    source_tokenizer, target_tokenizer = tokenizers
    start, end = (target_tokenizer.vocabulary.index(token) for token in (text.START, text.END))
    encoded = data.encode_pairs([s for s, _ in train], [t for _, t in train], source_tokenizer, target_tokenizer,
                                options.max_length, start, end)
    dataset = data.pairs_dataset(encoded, 64, seed=0, length_buckets=options.length_buckets)

    def build(plan):
        if kind == "transformer":
            model = models.transformer_seq2seq(source_tokenizer.vocabulary_size, target_tokenizer.vocabulary_size,
                                               options.max_length, options.d_model, options.num_heads,
                                               options.num_layers, options.ff_dim, options.dropout)
        else:
            model = models.rnn_seq2seq(source_tokenizer.vocabulary_size, target_tokenizer.vocabulary_size,
                                       options.embedding_dim, options.units, options.cell, options.dropout)
        # The recipe's rate, warm-up and decay, the cosine over about the steps the budget allows (--kerazoo-steps).
        schedule = training.warmup_cosine(options.learning_rate, options.warmup_steps, args.kerazoo_steps,
                                          options.learning_rate / 10)
        optimizer = training.adamw(schedule, weight_decay=options.weight_decay, global_clipnorm=1.0)
        return training.compile_model(model, plan, optimizer=optimizer,
                                      weighted_metrics=["sparse_categorical_accuracy"])

    plan, model = training.plan_from_flags(options, build, dataset.take(1).get_single_element())

    def decode(test):
        sentences, out = [s for s, _ in test], {}
        for strategy in ("greedy", "beam"):
            out[strategy] = recipe.translate(model, sentences, source_tokenizer, target_tokenizer, options, strategy)
        return out

    return dict(model=model, dataset=dataset, decode=decode, plan=plan)


def warm_up(system):
    """Compiles `system`'s train step for every batch shape it trains on, then undoes those steps.

    One step per shape (the reference: one; kerazoo: one per length bucket) on batches of the real
    dataset (same element spec, so `fit` reuses the compiled step), then the weights, optimizer state
    and metrics are put back. Compiles are then outside every system's budget alike.
    """
    model, dataset = system["model"], system["dataset"]
    widths = sorted({int(labels.shape[1]) for _, labels, *_ in dataset.take(200)})
    batches = None
    for width in widths:
        one = dataset.filter(lambda inputs, labels, *rest, w=width: tf.shape(labels)[1] == w).take(1)
        batches = one if batches is None else batches.concatenate(one)
    weights = model.get_weights()
    with system["plan"].scope() if "plan" in system else contextlib.nullcontext():
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)
        state = [v.numpy() for v in model.optimizer.variables]
        started = time.perf_counter()
        model.fit(batches, epochs=1, verbose=0, shuffle=False)
    model.set_weights(weights)
    for variable, value in zip(model.optimizer.variables, state):
        variable.assign(value)
    model.reset_metrics()
    return widths, time.perf_counter() - started


def train_slice(system, seconds):
    """Trains `system` for about `seconds` more (to the end of the step in progress)."""
    budget = training.TimeBudget(seconds)
    with system["plan"].scope() if "plan" in system else contextlib.nullcontext():
        system["model"].fit(system["dataset"], epochs=1000, callbacks=[budget], verbose=0, shuffle=False)
    system["train_seconds"] = system.get("train_seconds", 0.0) + budget.elapsed


@contextlib.contextmanager
def locked(path):
    """Holds an exclusive flock on `path` (waiting for it) inside the block; no lock when `path` is None."""
    if path is None:
        yield
        return
    with open(path, "a") as f:
        waited = time.perf_counter()
        fcntl.flock(f, fcntl.LOCK_EX)
        print(f"lock {path} held (waited {time.perf_counter() - waited:.0f}s)", flush=True)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="spa.txt (English<TAB>Spanish)")
    parser.add_argument("--budget", type=float, default=420, help="training seconds per system (default: 420)")
    parser.add_argument("--test-sentences", type=int, default=1000, help="(default: 1000)")
    parser.add_argument("--kerazoo-steps", type=int, default=3000,
                        help="length of kerazoo's cosine schedule, about the steps done in the budget")
    parser.add_argument("--systems", default="keras_io,transformer,rnn")
    parser.add_argument("--slice", type=float, default=60,
                        help="systems train in turn, this many seconds at a time (default: 60)")
    parser.add_argument("--lock", metavar="PATH",
                        help="hold an flock on PATH while the systems train (the timed part only; setup, "
                             "compiles and decoding run outside it), e.g. /tmp/kerazoo-bench.lock")
    args = parser.parse_args()
    spec = importlib.util.spec_from_file_location("translate", RECIPE)
    recipe = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(recipe)
    sources, targets = data.read_pairs(args.data)
    train, _, test = recipe.split(sources, targets, 0.05, 0.05, None, seed=0)
    test = test[:args.test_sentences]
    references = [t for _, t in test]
    print(f"train {len(train):,} pairs, test {len(test):,} sentences, budget {args.budget:.0f}s per system")
    systems = {}
    for name in args.systems.split(","):
        keras.utils.set_random_seed(0)
        started = time.perf_counter()
        if name == "keras_io":
            systems[name] = keras_io_reference(train)
        else:
            if "tokenizers" not in systems:  # both kerazoo systems share the WordPiece vocabularies
                systems["tokenizers"] = (
                    text.WordPieceTokenizer.learn([s for s, _ in train], vocab_size=8000),
                    text.WordPieceTokenizer.learn([t for _, t in train], vocab_size=8000,
                                                  reserved_tokens=(text.START, text.END)))
            systems[name] = kerazoo_system(name, recipe, train, systems["tokenizers"], args)
        print(f"[{name}] set up in {time.perf_counter() - started:.0f}s, "
              f"{systems[name]['model'].count_params():,} parameters", flush=True)
    systems.pop("tokenizers", None)
    for name, system in systems.items():
        widths, seconds = warm_up(system)
        print(f"[{name}] train step compiled for batch widths {widths} in {seconds:.0f}s (outside the budget)",
              flush=True)
    # Round robin in slices, so that the load of a shared machine falls on every system alike.
    with locked(args.lock):
        while any(r.get("train_seconds", 0.0) < args.budget for r in systems.values()):
            for name, r in systems.items():
                left = args.budget - r.get("train_seconds", 0.0)
                if left > 0:
                    train_slice(r, min(args.slice, left))
                    r["steps"] = int(r["model"].optimizer.iterations.numpy())
                    print(f"[{name}] {r['train_seconds']:.0f}s trained, {r['steps']} steps", flush=True)
    results = {}
    for name, r in systems.items():
        started = time.perf_counter()
        results[name] = dict(r["decode"](test), steps=r["steps"], train_seconds=r["train_seconds"],
                             params=r["model"].count_params(), decode_seconds=time.perf_counter() - started)
        scores = {strategy: round(sacrebleu.corpus_bleu([normalise(h) for h in results[name][strategy]],
                                                        [[normalise(t) for t in references]]).score, 2)
                  for strategy in ("greedy", "beam") if strategy in results[name]}
        print(f"[{name}] steps {r['steps']}, train {r['train_seconds']:.0f}s, decoding "
              f"{results[name]['decode_seconds']:.0f}s, normalised BLEU {scores}", flush=True)

    print("\n| system | params | train s | steps | BLEU greedy (normalised) | BLEU beam 4 (normalised) "
          "| BLEU greedy (cased) | BLEU beam 4 (cased) |")
    print("|---|---|---|---|---|---|---|---|")
    normalised_refs = [normalise(t) for t in references]
    for system, r in results.items():
        cells = []
        for strategy in ("greedy", "beam"):
            cells.append(f"{sacrebleu.corpus_bleu([normalise(h) for h in r[strategy]], [normalised_refs]).score:.2f}"
                         if strategy in r else "n/a")
        for strategy in ("greedy", "beam"):
            cells.append(f"{sacrebleu.corpus_bleu(r[strategy], [references]).score:.2f}"
                         if strategy in r and system != "keras_io" else "n/a")
        print(f"| {system} | {r['params']:,} | {r['train_seconds']:.0f} | {r['steps']} | " + " | ".join(cells) + " |")
    if "keras_io" in results:
        ref = sacrebleu.corpus_bleu([normalise(h) for h in results["keras_io"]["greedy"]], [normalised_refs]).score
        for system, r in results.items():
            if system != "keras_io":
                ours = sacrebleu.corpus_bleu([normalise(h) for h in r["greedy"]], [normalised_refs]).score
                print(f"BLEU ratio {system} / keras_io (greedy, normalised): {ours / max(ref, 1e-9):.2f}")
    for i in range(3):
        print(f"--- {test[i][0]}\n    reference: {references[i]}")
        for system, r in results.items():
            print(f"    {system}: {r['greedy'][i]}")


if __name__ == "__main__":
    main()
