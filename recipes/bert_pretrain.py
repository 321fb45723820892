"""Pretrain a BERT encoder with masked-LM + next-sentence prediction on plain text; save the backbone.

Runs offline on the embedded sample corpus by default (about a minute):

    python recipes/bert_pretrain.py
    python recipes/bert_pretrain.py --data corpus.txt --max-steps 20000 --time-limit 30

Text files hold documents separated by blank lines; a sentence ends at a line
break or after . ! ? . Consecutive sentences of a document are joined into
segments of up to --segment-words words, as BERT fills its segments. Each
training example is a segment pair (half the time the true next segment, half
a segment of another document), packed as [CLS] A [SEP] B [SEP] and 15% of
its tokens masked (80% [MASK], 10% random, 10% unchanged). Loss = MLM + NSP
cross-entropy, AdamW with linear warm-up and linear decay. Writes
OUTPUT_DIR/backbone.keras, OUTPUT_DIR/vocabulary.json and
OUTPUT_DIR/pretraining.json (settings and final metrics), each atomically;
recipes/bert_finetune.py --pretrained OUTPUT_DIR fine-tunes it.
"""

import argparse
import json
import os
import sys
import time

import kerazoo  # noqa: F401 (before TensorFlow: its import notices stay hidden)
import keras
import numpy as np

from kerazoo import data, models, nonfinite, recipe_flags, text, training


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    source = parser.add_argument_group("data")
    source.add_argument("--data", nargs="+", metavar="PATH",
                        help="plain-text files, documents separated by blank lines (default: the embedded sample)")
    source.add_argument("--vocab-size", type=int, default=8192, help="WordPiece vocabulary (default: 8192)")
    source.add_argument("--keep-case", action="store_true", help="do not lower-case the text")
    source.add_argument("--validation-fraction", type=float, default=0.02,
                        help="segment pairs held out for validation (default: 0.02)")
    source.add_argument("--segment-words", type=int,
                        help="join consecutive sentences of a document into segments of up to this many words, "
                             "as BERT fills its segments; 0: one sentence per segment (default: (--max-length - "
                             "3) // 3, so that a pair of segments, at about 1.3 WordPiece tokens per word, fills "
                             "most of the packed length)")
    model = parser.add_argument_group("model")
    model.add_argument("--max-length", type=int, default=64, help="tokens per packed pair (default: 64)")
    model.add_argument("--d-model", type=int, default=256, help="(default: 256)")
    model.add_argument("--num-heads", type=int, default=4, help="(default: 4)")
    model.add_argument("--num-layers", type=int, default=4, help="(default: 4)")
    model.add_argument("--ff-dim", type=int, default=1024, help="(default: 1024)")
    model.add_argument("--dropout", type=float, default=0.0,
                       help="dropout in the encoder (default: 0: in a pretraining run of minutes or hours the model "
                            "underfits, and dropout only slows it; BERT's own value is 0.1)")
    fit = parser.add_argument_group("training")
    fit.add_argument("--max-predictions", type=int, default=10,
                     help="most masked tokens per sequence (default: 10, 15%% of 64 rounded up)")
    fit.add_argument("--batch-size", type=int, default=16, help="(default: 16)")
    fit.add_argument("--max-steps", type=int, default=200, help="training steps (default: 200)")
    fit.add_argument("--log-every", type=int, default=50, help="steps between progress lines (default: 50)")
    fit.add_argument("--learning-rate", type=float, default=5e-4, help="peak AdamW rate (default: 5e-4)")
    fit.add_argument("--warmup-steps", type=int, help="linear warm-up steps (default: 10%% of --max-steps)")
    fit.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (default: 0.01)")
    fit.add_argument("--time-limit", type=float, metavar="MINUTES",
                     help="stop training after this many minutes (the schedule still assumes --max-steps)")
    fit.add_argument("--seed", type=int, default=0, help="(default: 0)")
    out = parser.add_argument_group("output")
    out.add_argument("--output-dir", default="saved_models/bert_pretrained",
                     help="where the backbone and vocabulary go (default: saved_models/bert_pretrained)")
    recipe_flags.add_runtime_flags(parser)
    return recipe_flags.parse_args(parser, argv, check_flags)


def check_flags(args):
    """Everything the flags alone decide, checked before any text is read (see `kerazoo.recipe_flags`)."""
    recipe_flags.positive(args, "vocab_size", "max_length", "d_model", "num_heads", "num_layers", "ff_dim",
                          "max_predictions", "batch_size", "max_steps", "log_every")
    recipe_flags.in_range(args, "max_length", low=4)  # [CLS] A [SEP] B [SEP]
    if args.segment_words is None:
        args.segment_words = max(1, (args.max_length - 3) // 3)
    recipe_flags.in_range(args, "segment_words", low=0)
    recipe_flags.in_range(args, "vocab_size", low=6)  # 5 special tokens and one piece
    recipe_flags.in_range(args, "dropout", 0, 1, high_open=True)
    recipe_flags.in_range(args, "validation_fraction", 0, 1, low_open=True, high_open=True)
    recipe_flags.in_range(args, "learning_rate", low=0, low_open=True)
    recipe_flags.in_range(args, "weight_decay", low=0)
    recipe_flags.in_range(args, "seed", 0, 2 ** 32 - 1)
    if args.warmup_steps is None:
        args.warmup_steps = args.max_steps // 10
    recipe_flags.in_range(args, "warmup_steps", 0, args.max_steps, high_open=True)
    if args.time_limit is not None:
        recipe_flags.in_range(args, "time_limit", low=0, low_open=True)
    if args.d_model % args.num_heads:
        raise ValueError(f"--d-model {args.d_model} is not divisible by --num-heads {args.num_heads}")
    output_dir = os.path.normpath(args.output_dir)
    recipe_flags.export_destination(os.path.dirname(output_dir) or ".", os.path.basename(output_dir), suffixes=(),
                                    dir_flag="--output-dir", name_flag="--output-dir")


class Progress(keras.callbacks.Callback):
    """One line per log interval: losses, MLM/NSP accuracy (train and validation), tokens/s, elapsed time.

    Stops training after `max_steps` in all (the last interval may be shorter
    than `log_every`; a run resumed from a checkpoint counts the steps done
    before) or once `time_limit` minutes of this run have passed.
    """

    def __init__(self, log_every, tokens_per_step, max_steps, time_limit=None):
        super().__init__()
        self.log_every, self.tokens_per_step, self.time_limit = log_every, tokens_per_step, time_limit
        self.max_steps = max_steps
        self.steps, self.interval_first_step, self.last = None, 0, {}

    def on_train_begin(self, logs=None):
        self.start = self.interval_start = time.perf_counter()

    def on_epoch_begin(self, epoch, logs=None):
        if self.steps is None:  # epoch > 0 when resumed from a checkpoint
            self.steps = self.interval_first_step = epoch * self.log_every

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps >= self.max_steps:
            self.model.stop_training = True
        elif self.time_limit and time.perf_counter() - self.start > self.time_limit * 60:
            print(f"time limit of {self.time_limit:g} minutes reached after {self.steps} steps")
            self.model.stop_training = True

    def on_epoch_end(self, epoch, logs=None):
        now = time.perf_counter()
        self.last = dict(logs or {}, step=self.steps, seconds=now - self.start)
        steps = self.steps - self.interval_first_step
        print(f"step {self.steps:6d}: loss {logs['loss']:.3f} (mlm {logs['mlm_loss']:.3f}, nsp "
              f"{logs['nsp_loss']:.3f}), mlm acc {logs['mlm_accuracy']:.3f}, nsp acc {logs['nsp_accuracy']:.3f}"
              f" | val mlm acc {logs.get('val_mlm_accuracy', float('nan')):.3f}, val nsp acc "
              f"{logs.get('val_nsp_accuracy', float('nan')):.3f} | "
              f"{steps * self.tokens_per_step / (now - self.interval_start):,.0f} tokens/s, "
              f"{now - self.start:,.0f} s", flush=True)
        self.interval_start, self.interval_first_step = now, self.steps


def save_json(obj, path):
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def main(argv=None):
    args = parse_args(argv)
    with training.quiet_logs(args):
        return run(args)


def run(args):
    batch_size = training.start_run(args)
    with recipe_flags.exit_on(OSError):
        os.makedirs(args.output_dir, exist_ok=True)
    start = time.perf_counter()
    try:
        corpus = data.read_text(args.data) if args.data else data.sample_corpus()
        documents = text.split_documents(corpus)
        first, second, is_next = text.nsp_pairs(documents, seed=args.seed, segment_words=args.segment_words or None)
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    source = ", ".join(args.data) if args.data else "the embedded sample corpus"
    unit = f"segment (up to {args.segment_words} words)" if args.segment_words else "sentence"
    print(f"{source}: {len(documents):,d} documents, {sum(map(len, documents)):,d} sentences, "
          f"{len(first):,d} {unit} pairs ({is_next.mean():.1%} true next)")

    order = np.random.default_rng(args.seed).permutation(len(first))
    held = max(batch_size, round(len(first) * args.validation_fraction))
    if len(first) - held < batch_size:
        raise SystemExit(f"error: {len(first)} sentence pairs are too few for a batch of {batch_size} "
                         f"and a validation batch; give more text or a smaller --batch-size")
    pick = lambda items, idx: [items[i] for i in idx]  # noqa: E731
    val_idx, train_idx = order[:held], order[held:]

    sentences = [s for document in documents for s in document]
    tokenizer = text.learn_bert_vocabulary(sentences, args.vocab_size, lower_case=not args.keep_case)
    preprocessor = text.BertPreprocessor(tokenizer, args.max_length, lower_case=not args.keep_case)
    print(f"vocabulary: {tokenizer.vocabulary_size} WordPiece tokens ({time.perf_counter() - start:.0f} s)")
    train_ds = text.pretraining_dataset(pick(first, train_idx), pick(second, train_idx), is_next[train_idx],
                                        preprocessor, args.max_predictions, batch_size, seed=args.seed)
    val_ds = text.pretraining_dataset(pick(first, val_idx), pick(second, val_idx), is_next[val_idx],
                                      preprocessor, args.max_predictions, batch_size, shuffle=False,
                                      repeat=False)

    backbones = {}  # pretrainer -> its backbone, for each plan choose_plan builds

    def build(plan):
        backbone = models.bert_backbone(tokenizer.vocabulary_size, args.max_length, args.d_model,
                                        args.num_heads, args.num_layers, args.ff_dim, args.dropout)
        pretrainer = models.bert_pretrainer(backbone)
        backbones[pretrainer] = backbone
        schedule = training.WarmupLinear(args.learning_rate, args.warmup_steps, args.max_steps)
        optimizer = training.adamw(schedule, weight_decay=args.weight_decay, global_clipnorm=1.0)
        return training.compile_model(pretrainer, plan, optimizer=optimizer, **models.pretraining_compile_args())

    plan, pretrainer = training.plan_from_flags(args, build, train_ds.take(1).get_single_element())
    backbone = backbones[pretrainer]
    print(f"backbone: {backbone.count_params():,d} parameters; pretrainer: {pretrainer.count_params():,d}")

    progress = Progress(args.log_every, batch_size * args.max_length, args.max_steps, args.time_limit)
    guard = nonfinite.NonFiniteGuard()
    epochs = -(-args.max_steps // args.log_every)  # Progress stops the last one at --max-steps
    validation_steps = min(20, (len(val_idx)) // batch_size)
    fit_start = time.perf_counter()
    with plan.scope():
        pretrainer.fit(train_ds, steps_per_epoch=args.log_every, epochs=epochs, validation_data=val_ds,
                       validation_steps=validation_steps, verbose=0, shuffle=False,  # the data reshuffles itself
                       callbacks=[guard, progress, *training.runtime_callbacks(args, plan)])
        fit_seconds = time.perf_counter() - fit_start
        with recipe_flags.exit_on(FloatingPointError):
            guard.check(pretrainer)
        final = pretrainer.evaluate(val_ds, verbose=0, return_dict=True)
    steps = int(pretrainer.optimizer.iterations.numpy())  # a resumed run's earlier steps included
    print(f"trained {steps} steps in {fit_seconds:,.0f} s; held-out pairs ({len(val_idx):,d}): "
          f"mlm accuracy {final['mlm_accuracy']:.4f}, nsp accuracy {final['nsp_accuracy']:.4f}, "
          f"loss {final['loss']:.3f}")

    training.save_keras_atomically(backbone, os.path.join(args.output_dir, "backbone.keras"))
    tokenizer.save_vocabulary(os.path.join(args.output_dir, "vocabulary.json"))
    save_json(dict(settings=vars(args), plan=plan.reason, steps=steps, fit_seconds=fit_seconds,
                   lower_case=not args.keep_case, max_length=args.max_length, validation=final,
                   last_training_logs=progress.last),
              os.path.join(args.output_dir, "pretraining.json"))
    print(f"saved {args.output_dir}/backbone.keras, vocabulary.json, pretraining.json "
          f"({time.perf_counter() - start:,.0f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
