"""Few-shot accuracy of a saved kerazoo LM on SST-2, RTE, CB and TREC, with and without contextual calibration.

The protocol of Zhao et al. (2021), "Calibrate Before Use" (tonyzhaozh/few-shot-learning): their
prompt formats and label words, 0/1/4/8 shots, 5 seeds of demonstrations drawn from the training
split, a seeded 300-example subsample of the evaluation split, `kerazoo.icl.evaluate` unchanged.
Prints accuracy, the 95% interval and the standard deviation over seeds for each task, and the
majority-class share of the evaluation split and the uniform-guess chance level:

    python bench/icl_real_tasks.py --model lm.keras --vocabulary lm.vocabulary.json \\
        --data ../shared/data
"""

import argparse
import csv
import json
import os
import sys
import time

import keras
import numpy as np

from kerazoo import icl, text
from kerazoo.data import FewShotTask

# Prompt formats and label words of Zhao et al. (2021), Appendix / their code's defaults.
TEMPLATES = {
    "sst2": dict(template="Review: {input}\nSentiment: {output}", labels={"0": "Negative", "1": "Positive"}),
    "rte": dict(template="{premise}\nquestion: {hypothesis} True or False?\nanswer: {output}",
                labels={"entailment": "True", "not_entailment": "False"}),
    "cb": dict(template="{premise}\nquestion: {hypothesis}. true, false, or neither?\nanswer: {output}",
               labels={"entailment": "true", "contradiction": "false", "neutral": "neither"}),
    "trec": dict(template="Question: {input}\nAnswer Type: {output}",
                 instructions="Classify the questions based on whether their answer type is a Number, Location, "
                              "Person, Description, Entity, or Abbreviation.\n\n",
                 labels={"NUM": "Number", "LOC": "Location", "HUM": "Person", "DESC": "Description",
                         "ENTY": "Entity", "ABBR": "Abbreviation"}),
}


def load_tasks(data_dir, names):
    tasks = []
    for name in names:
        spec = TEMPLATES[name]
        if name == "sst2":
            splits = [_read_tsv(os.path.join(data_dir, "sst2", f)) for f in ("train.tsv", "dev.tsv")]
        elif name == "trec":
            splits = [_read_trec(os.path.join(data_dir, "icl", "trec", f)) for f in ("train.txt", "test.txt")]
        else:
            splits = [_read_nli(os.path.join(data_dir, "icl", name, f)) for f in ("train.jsonl", "val.jsonl")]
        train, test = ([(x, spec["labels"][y]) for x, y in split] for split in splits)
        tasks.append(FewShotTask(name, test, train, tuple(spec["labels"].values()), spec["template"], "\n\n",
                                 spec.get("instructions", "")))
    return tasks


def _read_tsv(path):
    with open(path, encoding="utf-8") as f:
        return [(row["sentence"].strip(), row["label"]) for row in csv.DictReader(f, delimiter="\t",
                                                                                  quoting=csv.QUOTE_NONE)]


def _read_trec(path):
    with open(path, encoding="utf-8") as f:
        return [(line.split(" ", 1)[1].strip(), line.split(":", 1)[0]) for line in f if line.strip()]


def _read_nli(path):
    with open(path, encoding="utf-8") as f:
        return [({"premise": r["premise"], "hypothesis": r["hypothesis"]}, r["label"]) for r in map(json.loads, f)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    parser.add_argument("--model", required=True, help="a .keras LM from kerazoo")
    parser.add_argument("--vocabulary", required=True, help="its tokenizer's vocabulary file")
    parser.add_argument("--data", default="../shared/data", help="folder with sst2/ and icl/ (default: ../shared/data)")
    parser.add_argument("--tasks", nargs="+", choices=sorted(TEMPLATES), default=["sst2", "rte", "cb", "trec"])
    parser.add_argument("--shots", type=int, nargs="+", default=[0, 1, 4, 8], help="(default: 0 1 4 8)")
    parser.add_argument("--seeds", type=int, default=5, help="demonstration draws per shot count (default: 5)")
    parser.add_argument("--max-queries", type=int, default=300, help="evaluation subsample (default: 300)")
    parser.add_argument("--batch-size", type=int, default=32, help="(default: 32)")
    parser.add_argument("--output", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    tokenizer = text.load_tokenizer(args.vocabulary)
    model = keras.models.load_model(args.model)
    print(f"model {args.model}: {model.count_params():,} parameters; shots {args.shots}, {args.seeds} seeds, "
          f"up to {args.max_queries} queries")
    report = {}
    for task in load_tasks(args.data, args.tasks):
        started = time.perf_counter()
        results = icl.evaluate(model, tokenizer, task, args.shots, args.seeds, seed=0, calibrate="both",
                               max_queries=args.max_queries, batch_size=args.batch_size)
        outputs = [y for _, y in task.queries]
        majority = max(outputs.count(label) for label in task.labels) / len(outputs)
        print(f"\n{task.name}: {results['plain'][0].answered} of {len(outputs)} queries, {len(task.demonstrations)} demonstrations to draw from; "
              f"{time.perf_counter() - started:.0f}s")
        print(icl.format_results(results, chance=1 / len(task.labels)))
        print(f"majority class of the whole evaluation split: {majority:.3f}")
        report[task.name] = dict(majority=majority, chance=1 / len(task.labels), **{
            mode: [dict(shots=r.shots, accuracy=r.accuracy, interval=r.interval, seed_std=float(np.std(
                r.trial_accuracies)), truncated=r.truncated) for r in rows] for mode, rows in results.items()})
    if args.output:
        with open(args.output, "w") as f:
            json.dump(report, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
