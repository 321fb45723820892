"""Reptile on few-shot TREC question classification: meta-learned vs plain pretrained initialisation.

A task is two of TREC's six coarse classes, in a random label order, with `--shots` questions of each
to adapt on. The peer is the plain initialisation: the pretrained BERT encoder from
recipes/bert_pretrain.py with a fresh (zero) classifier. `kerazoo.finetune.reptile` meta-learns an
initialisation of the same classifier on tasks drawn from TREC's training split; both are then adapted
with the same optimizer and `--inner-steps` steps on tasks drawn from the test split, and scored on
`--queries` other test questions per task. Prints the two mean accuracies over the same tasks, their
difference and its 95% interval (paired over tasks):

    python bench/meta_fewshot.py --pretrained saved_models/bert_pretrained --data ../shared/data
"""

import argparse
import json
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from kerazoo import finetune, models, text


def read_trec(path):
    """(questions, coarse labels) of a TREC file (`COARSE:fine question` per line)."""
    questions, labels = [], []
    for line in open(path, encoding="latin-1"):
        if line.strip():
            label, question = line.strip().split(" ", 1)
            labels.append(label.split(":")[0])
            questions.append(question)
    return questions, np.array(labels)


def task_sampler(features, labels, shots, queries):
    """`sample(rng) -> (x, y)`: 2 random classes in random order, `shots + queries` questions of each."""
    classes = sorted(set(labels))
    by_class = {c: np.flatnonzero(labels == c) for c in classes}
    classes = [c for c in classes if len(by_class[c]) >= shots + queries]

    def sample(rng):
        picked = rng.choice(classes, size=2, replace=False)
        support, query = [], []
        for label, c in enumerate(picked):
            index = rng.choice(by_class[c], size=shots + queries, replace=False)
            support += [(i, label) for i in index[:shots]]
            query += [(i, label) for i in index[shots:]]
        order = rng.permutation(len(support))
        rows = [support[i] for i in order] + query
        index, y = np.array([r[0] for r in rows]), np.array([r[1] for r in rows], "int32")
        return {key: value[index] for key, value in features.items()}, y

    return sample


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pretrained", default="saved_models/bert_pretrained",
                        help="output folder of recipes/bert_pretrain.py (default: saved_models/bert_pretrained)")
    parser.add_argument("--data", default="../shared/data", help="folder with icl/trec (default: ../shared/data)")
    parser.add_argument("--shots", type=int, default=8, help="questions per class to adapt on (default: 8)")
    parser.add_argument("--queries", type=int, default=16, help="questions per class to score (default: 16)")
    parser.add_argument("--inner-steps", type=int, default=5, help="adaptation steps (default: 5)")
    parser.add_argument("--inner-learning-rate", type=float, default=1e-3, help="Adam (default: 1e-3)")
    parser.add_argument("--meta-steps", type=int, default=300, help="Reptile tasks (default: 300)")
    parser.add_argument("--meta-learning-rate", type=float, default=0.5, help="(default: 0.5)")
    parser.add_argument("--eval-tasks", type=int, default=100, help="test tasks (default: 100)")
    parser.add_argument("--max-length", type=int, default=32, help="tokens per question (default: 32)")
    parser.add_argument("--seed", type=int, default=0, help="(default: 0)")
    args = parser.parse_args(argv)

    lower_case = json.load(open(os.path.join(args.pretrained, "pretraining.json")))["lower_case"]
    tokenizer = text.WordPieceTokenizer.from_vocabulary_file(os.path.join(args.pretrained, "vocabulary.json"))
    preprocessor = text.BertPreprocessor(tokenizer, args.max_length, lower_case=lower_case)
    splits = {}
    for split in ("train", "test"):
        questions, labels = read_trec(os.path.join(args.data, "icl", "trec", f"{split}.txt"))
        features = {k: v.numpy() for k, v in preprocessor(tf.constant(questions)).items()}
        splits[split] = task_sampler(features, labels, args.shots, args.queries)

    def build():
        backbone = keras.models.load_model(os.path.join(args.pretrained, "backbone.keras"))
        model = models.bert_classifier(backbone, 2, dropout=0.0)
        model.compile(optimizer=keras.optimizers.Adam(args.inner_learning_rate),
                      loss="sparse_categorical_crossentropy")
        return model

    keras.utils.set_random_seed(args.seed)
    model = build()
    plain = [v.numpy() for v in model.weights]
    start = time.perf_counter()
    finetune.reptile(model, lambda rng: _support(splits["train"](rng), args.shots), args.meta_steps,
                     inner_steps=args.inner_steps, meta_learning_rate=args.meta_learning_rate, seed=args.seed,
                     print_fn=print, log_every=50)
    meta = [v.numpy() for v in model.weights]
    print(f"Reptile: {args.meta_steps} tasks x {args.inner_steps} steps in {time.perf_counter() - start:.0f} s")

    def accuracies(weights):
        rng, scores = np.random.default_rng(args.seed + 1), []
        for _ in range(args.eval_tasks):
            x, y = splits["test"](rng)
            for v, value in zip(model.weights, weights):
                v.assign(value)
            support_x, support_y = _support((x, y), args.shots)
            finetune.adapt(model, support_x, support_y, args.inner_steps)
            query = {k: v[2 * args.shots:] for k, v in x.items()}
            scores.append(np.mean(model.predict_on_batch(query).argmax(1) == y[2 * args.shots:]))
        return np.array(scores)

    plain_scores, meta_scores = accuracies(plain), accuracies(meta)
    difference = meta_scores - plain_scores
    half_width = 1.96 * difference.std(ddof=1) / np.sqrt(len(difference))
    print(f"{args.eval_tasks} test tasks, 2-way {args.shots}-shot, {args.inner_steps} Adam steps "
          f"(lr {args.inner_learning_rate}) from each initialisation:")
    print(f"  plain pretrained init: {plain_scores.mean():.4f}")
    print(f"  Reptile init:          {meta_scores.mean():.4f}")
    print(f"  difference (Reptile - plain): {difference.mean():+.4f} +- {half_width:.4f} (95%, paired over tasks)")
    return 0


def _support(task, shots):
    x, y = task
    return {k: v[:2 * shots] for k, v in x.items()}, y[:2 * shots]


if __name__ == "__main__":
    sys.exit(main())
