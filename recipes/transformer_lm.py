"""Train a GPT-style Transformer language model on text, sample from it, and export a text generator.

Runs offline on the embedded sample corpus by default (about a minute on 2 cores; the sample is
only 5 KB, so use --data for real training):

    python recipes/transformer_lm.py
    python recipes/transformer_lm.py --data input.txt --tokenizer char --max-length 64 \\
        --d-model 128 --num-heads 4 --num-layers 4 --ff-dim 512 --batch-size 12 --max-steps 2000

The model defaults are the documents' configuration (d_model 512, 8 heads, 4 layers,
ff 2048, context 128). The learning rate warms up linearly, then decays with a cosine
to --min-learning-rate; AdamW with weight decay on matrices only and global gradient
clipping, as nanoGPT.
"""

import argparse
import json
import sys
import time

import kerazoo  # noqa: F401 (before TensorFlow: its import notices stay hidden)
import numpy as np
import tensorflow as tf

from kerazoo import data, export, generation, models, nonfinite, recipe_flags, text, training


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    source = parser.add_argument_group("data")
    source.add_argument("--data", nargs="+", metavar="PATH",
                        help="UTF-8 text file(s) (default: the embedded sample corpus)")
    source.add_argument("--validation-fraction", type=float, default=0.1,
                        help="last fraction of the text held out (default: 0.1)")
    source.add_argument("--tokenizer", choices=("char", "wordpiece"), default="char",
                        help="(default: char)")
    source.add_argument("--vocab-size", type=int, default=10000,
                        help="WordPiece vocabulary size (default: 10000; char learns its own)")
    model = parser.add_argument_group("model")
    model.add_argument("--max-length", type=int, default=128, help="context length (default: 128)")
    model.add_argument("--d-model", type=int, default=512, help="(default: 512)")
    model.add_argument("--num-heads", type=int, default=8, help="(default: 8)")
    model.add_argument("--num-layers", type=int, default=4, help="(default: 4)")
    model.add_argument("--ff-dim", type=int, default=2048, help="(default: 2048)")
    model.add_argument("--dropout", type=float, default=0.0, help="(default: 0)")
    fit = parser.add_argument_group("training")
    fit.add_argument("--batch-size", type=int, default=16, help="(default: 16)")
    fit.add_argument("--max-steps", type=int, default=100,
                     help="(default: 100, about where the 5 KB sample corpus starts to be memorised)")
    fit.add_argument("--learning-rate", type=float, default=1e-3, help="peak rate (default: 1e-3)")
    fit.add_argument("--min-learning-rate", type=float, default=1e-4, help="final rate (default: 1e-4)")
    fit.add_argument("--warmup-steps", type=int, default=20, help="(default: 20)")
    fit.add_argument("--weight-decay", type=float, default=0.1, help="(default: 0.1)")
    fit.add_argument("--grad-clip", type=float, default=1.0, help="global norm; 0 = off (default: 1.0)")
    fit.add_argument("--eval-interval", type=int, default=25, help="steps between evaluations (default: 25)")
    fit.add_argument("--eval-batches", type=int, default=20, help="batches per loss estimate (default: 20)")
    fit.add_argument("--seed", type=int, default=0, help="(default: 0)")
    out = parser.add_argument_group("output")
    out.add_argument("--prompt", default="The ", help="prompt for the samples printed at the end")
    out.add_argument("--sample-tokens", type=int, default=200,
                     help="tokens per sample after training; 0: no samples (default: 200)")
    out.add_argument("--top-k", type=int,
                     help="the second sample draws from the K most likely tokens; at most the "
                          "vocabulary size (default: 10, or the vocabulary size if smaller)")
    out.add_argument("--serve-new-tokens", type=int,
                     help="tokens the exported generator adds to a prompt (default: half the context, "
                          "at most 64)")
    recipe_flags.add_export_flags(out, "transformer_lm")
    out.add_argument("--no-export", action="store_true", help="skip saving and exporting")
    recipe_flags.add_runtime_flags(parser)
    return recipe_flags.parse_args(parser, argv, check_flags)


def check_flags(args):
    """Everything the flags alone decide, checked before any data is read (see `kerazoo.recipe_flags`)."""
    recipe_flags.positive(args, "vocab_size", "max_length", "d_model", "num_heads", "num_layers", "ff_dim",
                          "batch_size", "max_steps", "eval_interval", "eval_batches")
    recipe_flags.in_range(args, "sample_tokens", low=0)
    if args.top_k is not None:
        recipe_flags.positive(args, "top_k")
    recipe_flags.in_range(args, "validation_fraction", 0, 1, low_open=True, high_open=True)
    recipe_flags.in_range(args, "dropout", 0, 1, high_open=True)
    recipe_flags.in_range(args, "learning_rate", low=0, low_open=True)
    recipe_flags.in_range(args, "min_learning_rate", 0, args.learning_rate)
    recipe_flags.in_range(args, "warmup_steps", 0, args.max_steps, high_open=True)
    recipe_flags.in_range(args, "weight_decay", low=0)
    recipe_flags.in_range(args, "grad_clip", low=0)
    recipe_flags.in_range(args, "seed", 0, 2 ** 31 - 2)  # the validation windows use seed + 1
    if args.serve_new_tokens is None:
        args.serve_new_tokens = min(64, args.max_length // 2)
    recipe_flags.in_range(args, "serve_new_tokens", 1, args.max_length, high_open=True)
    if args.d_model % args.num_heads:
        raise ValueError(f"--d-model {args.d_model} is not divisible by --num-heads {args.num_heads}")
    args.outputs = None if args.no_export else recipe_flags.export_destination(
        args.export_dir, args.name, suffixes=(".keras", ".vocabulary.json"))


def build_tokenizer(kind, train_text, vocab_size):
    if kind == "char":
        return text.CharTokenizer.learn([train_text])
    return text.WordPieceTokenizer.learn(train_text.splitlines(), vocab_size=vocab_size)


def encode(tokenizer, corpus):
    """The whole corpus as one 1-D id array (line by line, so WordPiece sees lines)."""
    if isinstance(tokenizer, text.CharTokenizer):
        return tokenizer(tf.constant([corpus])).flat_values.numpy()
    lines = [line for line in corpus.splitlines() if line.strip()]
    return tokenizer(tf.constant(lines)).flat_values.numpy()


def main(argv=None):
    args = parse_args(argv)
    with training.quiet_logs(args):
        return run(args)


def run(args):
    batch_size = training.start_run(args)
    started = time.perf_counter()
    corpus = data.read_text(args.data) if args.data else data.sample_corpus()
    train_text, val_text = data.split_text(corpus, args.validation_fraction)
    tokenizer = build_tokenizer(args.tokenizer, train_text, args.vocab_size)
    train_ids, val_ids = encode(tokenizer, train_text), encode(tokenizer, val_text)
    print(f"corpus: {len(corpus):,} characters from {', '.join(args.data) if args.data else 'the sample'}; "
          f"{args.tokenizer} tokenizer, {tokenizer.vocabulary_size} tokens; "
          f"train {train_ids.size:,} / validation {val_ids.size:,} tokens")
    if val_ids.size <= args.max_length:
        raise SystemExit(f"error: the validation split has {val_ids.size} tokens, fewer than "
                         f"--max-length + 1 = {args.max_length + 1}; use more text or a shorter context")
    # The samples at the end must not fail after a whole run: check their settings now.
    prompt_ids = encode(tokenizer, args.prompt) if args.prompt else np.array([tokenizer.unk_id])
    top_k = args.top_k or min(10, tokenizer.vocabulary_size)
    with recipe_flags.exit_on(ValueError):
        recipe_flags.top_k_within(top_k, tokenizer.vocabulary_size)
        sample_tokens = recipe_flags.room_for_prompt(prompt_ids.size, args.sample_tokens, args.max_length)

    # Three streams of random windows: the one training reads, and fresh ones for the loss estimates.
    train_ds = data.lm_dataset(train_ids, args.max_length, batch_size, seed=args.seed)
    val_ds = data.lm_dataset(val_ids, args.max_length, batch_size, seed=args.seed + 1)
    train_eval_ds = data.lm_dataset(train_ids, args.max_length, batch_size, seed=args.seed + 2)

    def build(plan):
        model = models.transformer_lm(tokenizer.vocabulary_size, args.max_length, args.d_model,
                                      args.num_heads, args.num_layers, args.ff_dim, dropout=args.dropout)
        schedule = training.warmup_cosine(args.learning_rate, args.warmup_steps, args.max_steps,
                                          args.min_learning_rate)
        optimizer = training.adamw(schedule, weight_decay=args.weight_decay,
                                   global_clipnorm=args.grad_clip or None)
        return training.compile_model(model, plan, optimizer=optimizer)

    plan, model = training.plan_from_flags(args, build, train_eval_ds.take(1).get_single_element())
    print(f"model: {model.count_params():,} parameters")

    guard = nonfinite.NonFiniteGuard()
    progress = training.LanguageModelProgress(train_eval_ds, val_ds, args.eval_interval,
                                              batch_size * args.max_length, args.eval_batches,
                                              total_steps=args.max_steps)
    runtime = training.runtime_callbacks(args, plan)
    done = next((c.initial_epoch for c in runtime if isinstance(c, training.Checkpoint)), 0)
    fit_started = time.perf_counter()
    with plan.scope():
        model.fit(train_ds.skip(done * args.eval_interval),  # a resumed run continues the stream
                  epochs=-(-args.max_steps // args.eval_interval),  # the last interval may be shorter
                  steps_per_epoch=args.eval_interval, callbacks=[guard, progress, *runtime], verbose=0,
                  shuffle=False)  # windows are drawn at random offsets
    with recipe_flags.exit_on(FloatingPointError):
        guard.check(model)
    final = progress.history[-1]
    print(f"done: {args.max_steps} steps, val loss {final['val_loss']:.4f} "
          f"(perplexity {np.exp(final['val_loss']):.2f}), {time.perf_counter() - started:.1f}s in total, "
          f"fit {time.perf_counter() - fit_started:.1f}s")

    samples = (("greedy", {}), ("top_k", dict(top_k=top_k, seed=args.seed))) if sample_tokens else ()
    for strategy, options in samples:
        ids = generation.generate(model, [prompt_ids], sample_tokens, strategy, **options)
        print(f"--- sample ({strategy}) ---\n{tokenizer.detokenize(ids).numpy()[0].decode('utf-8', 'replace')}")

    if args.no_export:
        return 0
    keras_path, vocabulary_path = args.outputs[".keras"], args.outputs[".vocabulary.json"]
    training.save_keras_atomically(model, keras_path)
    tokenizer.save_vocabulary(vocabulary_path)
    print(f"saved {keras_path} (load it with keras.models.load_model after `import kerazoo`, which "
          f"registers its layers) and {vocabulary_path}")
    version_path = export.export_text_generator(model, tokenizer, args.export_dir, args.name,
                                                max_new_tokens=args.serve_new_tokens)
    print(f"exported {version_path}")
    serving = tf.saved_model.load(version_path).signatures["serving_default"]
    outputs = serving(prompt=tf.constant([args.prompt]))
    print(f"exported generator, greedy: {json.dumps(outputs['text'].numpy()[0].decode('utf-8', 'replace'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
