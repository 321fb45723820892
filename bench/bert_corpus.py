"""Writes the BERT pretraining corpus for the SST-2 measurement: all English text in shared/data but SST-2 dev.

Output: plain text, documents separated by blank lines (what `recipes/bert_pretrain.py --data` reads).
Sources and how they become documents:
- tinyshakespeare: its blank-line-separated speeches;
- icl/rte, icl/cb (train and val): premise sentences followed by the hypothesis;
- sst2/train.tsv sentences (labels dropped), sarcasm headlines, TREC questions (labels dropped),
  the English side of spa-eng (duplicates dropped), the analogy questions: groups of `--group`
  consecutive records (these have no document structure, so their next-sentence pairs are weak).
SST-2 dev is never read.

    python bench/bert_corpus.py --data-dir ../shared/data --out /tmp/bert_corpus.txt
"""

import argparse
import csv
import json
import os
import sys


def groups(records, size):
    records = [r.strip() for r in records if r.strip()]
    return ["\n".join(records[i:i + size]) for i in range(0, len(records), size)]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="../shared/data", help="(default: ../shared/data)")
    parser.add_argument("--out", required=True, help="output text file")
    parser.add_argument("--group", type=int, default=5, help="records per pseudo-document (default: 5)")
    args = parser.parse_args(argv)
    d = lambda *p: os.path.join(args.data_dir, *p)  # noqa: E731
    documents = {}
    documents["tinyshakespeare"] = open(d("tinyshakespeare", "input.txt"), encoding="utf-8").read().split("\n\n")
    nli = []
    for task in ("rte", "cb"):
        for split in ("train", "val"):
            for line in open(d("icl", task, f"{split}.jsonl"), encoding="utf-8"):
                record = json.loads(line)
                nli.append(f"{record['premise'].strip()}\n{record['hypothesis'].strip()}")
    documents["rte+cb"] = nli
    with open(d("sst2", "train.tsv"), encoding="utf-8", newline="") as f:
        documents["sst2 train"] = groups([row["sentence"] for row in csv.DictReader(f, delimiter="\t",
                                                                                    quoting=csv.QUOTE_NONE)],
                                         args.group)
    documents["sarcasm"] = groups([json.loads(line)["headline"] for line in
                                   open(d("sarcasm", "Sarcasm_Headlines_Dataset.json"), encoding="utf-8")],
                                  args.group)
    documents["trec"] = groups([line.split(" ", 1)[1] for split in ("train", "test")
                                for line in open(d("icl", "trec", f"{split}.txt"), encoding="utf-8")],
                               args.group)
    english = dict.fromkeys(line.split("\t")[0] for line in open(d("spa-eng", "spa.txt"), encoding="utf-8"))
    documents["spa-eng (English)"] = groups(list(english), args.group)
    documents["analogy"] = groups([line for line in open(d("analogy", "questions-words.txt"), encoding="utf-8")
                                   if not line.startswith((":", "//"))], args.group)
    all_documents = [doc.strip() for docs in documents.values() for doc in docs if doc.strip()]
    tmp = f"{args.out}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write("\n\n".join(all_documents) + "\n")
    os.replace(tmp, args.out)
    for name, docs in documents.items():
        print(f"{name:>20s}: {len(docs):7d} documents, {sum(map(len, docs)):10,d} characters")
    print(f"wrote {args.out}: {len(all_documents)} documents, {os.path.getsize(args.out):,d} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
