"""Compare lightweight fine-tuning methods on one BERT encoder, task and step budget: a table and a bar chart.

Each method fine-tunes a fresh copy of the encoder from recipes/bert_pretrain.py
(by default saved_models/bert_pretrained) for the same number of steps, in its
own process (so that its peak memory is its own), and is scored on the
validation set and on a copy of it with character typos in 10% of the words:

    python recipes/bert_pretrain.py && python recipes/lightweight_finetune.py
    python recipes/lightweight_finetune.py --pretrained DIR --data train.tsv --val-data dev.tsv --steps 600 \\
        --methods full,head,top-2,lora-8,adapters-16,prompt-20,full+fgm,lora-8+fgm

Methods (combine a base method with +fgm or +pgd: "mixed methods"):
  full          every weight trains                      head         only the pooler and classifier
  top-K         the last K blocks and the head           lora-R       LoRA of rank R on QKV and attention output
  adapters-D    bottleneck adapters of width D           prompt-N     N soft-prompt vectors after [CLS]
  ...+fgm       adversarial training, FGM on the token embeddings (--epsilon); +pgd: PGD (--pgd-steps)
LoRA, adapters and prompts train the head too (a new classifier must). full, top-K use --learning-rate;
the others --adapter-learning-rate (prompts: --prompt-learning-rate). Writes OUT_DIR/results.md,
results.csv, results.png (matplotlib: pip install kerazoo[plots]) and each method's shipped file
(OUT_DIR/<method>.npz: only what the method changed, from kerazoo.finetune.save_adapters).
"""

import argparse
import csv
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bert_finetune  # noqa: E402  (its encoder and data flags and loaders)

from kerazoo import evaluation, finetune, models, recipe_flags, text, training, visualize  # noqa: E402

DEFAULT_METHODS = "full,head,top-2,lora-4,lora-8,lora-16,adapters-16,prompt-20,full+fgm"
COLUMNS = ("method", "trainable", "trainable_percent", "accuracy", "f1", "typo_accuracy", "seconds_per_step",
           "peak_memory_mb", "shipped_bytes", "shipped_percent")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    bert_finetune.add_encoder_flags(parser)
    bert_finetune.add_data_flags(parser)
    fit = parser.add_argument_group("fine-tuning (the same budget for every method)")
    fit.add_argument("--methods", default=DEFAULT_METHODS, help=f"comma-separated (default: {DEFAULT_METHODS})")
    fit.add_argument("--steps", type=int, default=60, help="training steps per method (default: 60)")
    fit.add_argument("--batch-size", type=int, default=32, help="(default: 32)")
    fit.add_argument("--max-length", type=int,
                     help="tokens per text, [CLS] and [SEP] included (default: the encoder's maximum)")
    fit.add_argument("--learning-rate", type=float, default=1e-4,
                     help="peak AdamW rate of full and top-K (default: 1e-4)")
    fit.add_argument("--adapter-learning-rate", type=float, default=1e-3,
                     help="peak AdamW rate of head, lora-R and adapters-D (default: 1e-3)")
    fit.add_argument("--prompt-learning-rate", type=float, default=1e-2,
                     help="peak AdamW rate of prompt-N (default: 1e-2)")
    fit.add_argument("--warmup-fraction", type=float, default=0.1, help="(default: 0.1)")
    fit.add_argument("--weight-decay", type=float, default=0.01, help="(default: 0.01)")
    fit.add_argument("--dropout", type=float, default=0.1, help="before the classifier (default: 0.1)")
    fit.add_argument("--epsilon", type=float, default=1.0, help="L2 norm of the FGM/PGD perturbation (default: 1)")
    fit.add_argument("--pgd-steps", type=int, default=3, help="steps of +pgd (default: 3)")
    fit.add_argument("--typo-rate", type=float, default=0.1,
                     help="share of validation words given a typo for the robustness column (default: 0.1)")
    fit.add_argument("--seed", type=int, default=0, help="(default: 0)")
    out = parser.add_argument_group("output")
    out.add_argument("--out-dir", default="saved_models/lightweight_finetune",
                     help="table, chart and shipped files (default: saved_models/lightweight_finetune)")
    out.add_argument("--only", help=argparse.SUPPRESS)  # internal: run one method, write its result JSON
    out.add_argument("--result", help=argparse.SUPPRESS)
    recipe_flags.add_runtime_flags(parser)
    args = recipe_flags.parse_args(parser, argv, check_flags)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # each method's process gets the same flags
    return args


def check_flags(args):
    """Everything the flags alone decide, checked before any data is read (see `kerazoo.recipe_flags`)."""
    bert_finetune.check_encoder_and_data_flags(args)
    recipe_flags.positive(args, "steps", "batch_size", "pgd_steps")
    for name in ("learning_rate", "adapter_learning_rate", "prompt_learning_rate", "epsilon"):
        recipe_flags.in_range(args, name, low=0, low_open=True)
    for name in ("dropout", "warmup_fraction"):
        recipe_flags.in_range(args, name, 0, 1, high_open=True)
    recipe_flags.in_range(args, "typo_rate", 0, 1)
    recipe_flags.in_range(args, "weight_decay", low=0)
    recipe_flags.in_range(args, "seed", 0, 2 ** 32 - 1)
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not args.method_list:
        raise ValueError("--methods is empty")
    for method in args.method_list:
        parse_method(method)
    recipe_flags.export_destination(os.path.dirname(os.path.normpath(args.out_dir)) or ".",
                                    os.path.basename(os.path.normpath(args.out_dir)), suffixes=(),
                                    dir_flag="--out-dir", name_flag="--out-dir")


def parse_method(method):
    """`"lora-8+fgm"` → `("lora", 8, "fgm")`; ValueError naming the method when it is not one of the docstring's."""
    base, _, adversarial = method.partition("+")
    name, _, size = base.partition("-")
    sized = {"top": "K", "lora": "R", "adapters": "D", "prompt": "N"}
    valid = ((name in ("full", "head") and not size) or (name in sized and size.isdigit() and int(size) > 0)) \
        and adversarial in ("", "fgm", "pgd")
    if not valid:
        raise ValueError(f"--methods: unknown method {method!r}; use full, head, top-K, lora-R, adapters-D or "
                         "prompt-N, optionally with +fgm or +pgd (e.g. lora-8+fgm)")
    return name, int(size) if size else None, adversarial or None


def prepare(classifier, method):
    """Applies `method` to a fresh classifier; returns the model to train and its learning-rate flag."""
    name, size, _ = parse_method(method)
    if name == "full":
        finetune.freeze(classifier, "full")
        return classifier, "learning_rate"
    if name == "head":
        finetune.freeze(classifier, "head")
        return classifier, "adapter_learning_rate"
    if name == "top":
        finetune.freeze(classifier, "top_k", k=size)
        return classifier, "learning_rate"
    if name == "lora":
        finetune.apply_lora(classifier, size)
        return classifier, "adapter_learning_rate"
    if name == "adapters":
        finetune.apply_adapters(classifier, size)
        return classifier, "adapter_learning_rate"
    return finetune.prompt_tune(classifier, size), "prompt_learning_rate"


def run_method(args, method, print_fn=print):
    """Fine-tunes one method as the flags say and scores it.

    Returns:
        A dict with the `COLUMNS` (and the full model's size, `model_bytes`).
    """
    batch_size = training.start_run(args)
    train, val = bert_finetune.load_data(args, print_fn=lambda line: None)
    plan = training.select_plan(args.precision, {"on": True, "off": False, "auto": "auto"}[args.jit_compile],
                                args.strategy)
    backbone, tokenizer, lower_case = bert_finetune.load_encoder(args, train.texts, plan)
    preprocessor = text.BertPreprocessor(tokenizer, args.max_length or backbone.get_layer("embedding").max_length,
                                         lower_case=lower_case)
    with plan.scope():
        classifier = models.bert_classifier(backbone, len(train.label_names), dropout=args.dropout)
        model, rate_flag = prepare(classifier, method)
    report = finetune.trainable_report(model, print_fn=None)
    schedule = training.WarmupLinear(getattr(args, rate_flag), int(args.warmup_fraction * args.steps), args.steps)
    adversarial = parse_method(method)[2]
    trained = model
    with plan.scope():  # the optimizer's variables too belong to the strategy
        optimizer = training.adamw(schedule, weight_decay=args.weight_decay)
        if adversarial:
            trained = finetune.AdversarialModel(model, epsilon=args.epsilon,
                                                pgd_steps=args.pgd_steps if adversarial == "pgd" else 1)
        training.compile_model(trained, plan, optimizer=optimizer, loss="sparse_categorical_crossentropy")
    train_ds = text.classification_dataset(train.texts, train.labels, preprocessor, batch_size, shuffle=True,
                                           seed=args.seed).repeat()
    timer = training.StepTimer()
    with plan.scope():
        trained.fit(train_ds, steps_per_epoch=args.steps, epochs=1, verbose=0, callbacks=[timer], shuffle=False)

    def score(texts):
        ds = text.classification_dataset(texts, val.labels, preprocessor, batch_size)
        return evaluation.classification_report(val.labels, model.predict(ds, verbose=0).argmax(-1),
                                                train.label_names)

    dev, typos = score(val.texts), score(evaluation.add_typos(val.texts, args.typo_rate, seed=args.seed))
    shipped = finetune.save_adapters(model, os.path.join(args.out_dir, f"{method}.npz"))
    with tempfile.TemporaryDirectory() as tmp:  # the whole model, as save_adapters would write it
        full = os.path.join(tmp, "all.npz")
        np.savez(full, **{v.path: v.numpy() for v in classifier.weights if "lora" not in v.path})
        model_bytes = os.path.getsize(full)
    result = dict(method=method, trainable=report.trainable, trainable_percent=100 * report.trainable / report.total,
                  accuracy=dev.accuracy, f1=dev.f1, typo_accuracy=typos.accuracy,
                  # the first steps trace and compile
                  seconds_per_step=statistics.median(timer.seconds[min(3, len(timer.seconds) - 1):]),
                  peak_memory_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  shipped_bytes=shipped, shipped_percent=100 * shipped / model_bytes, model_bytes=model_bytes,
                  total=report.total, plan=plan.reason)
    if print_fn:
        print_fn(f"{method}: {report.trainable:,d} of {report.total:,d} parameters train "
                 f"({result['trainable_percent']:.2f}%); accuracy {dev.accuracy:.4f}, F1 {dev.f1:.4f}, with typos "
                 f"{typos.accuracy:.4f}; {result['seconds_per_step'] * 1000:.0f} ms/step; shipped "
                 f"{shipped / 1024:,.0f} KiB", flush=True)
    return result


def write_outputs(results, out_dir, title):
    """results.md (Markdown table), results.csv and results.png (bar chart) in `out_dir`; returns the Markdown."""
    model_bytes = max(r["model_bytes"] for r in results)
    lines = [f"# {title}", "",
             "| method | trainable params | trainable % | dev accuracy | dev F1 | typo accuracy | s/step | "
             "peak memory (MiB) | shipped file (KiB) | shipped % of full |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['method']} | {r['trainable']:,d} | {r['trainable_percent']:.2f} | {r['accuracy']:.4f} | "
                     f"{r['f1']:.4f} | {r['typo_accuracy']:.4f} | {r['seconds_per_step']:.3f} | "
                     f"{r['peak_memory_mb']:,.0f} | {r['shipped_bytes'] / 1024:,.1f} | {r['shipped_percent']:.2f} |")
    lines += ["", f"Full model weights: {model_bytes / 1024:,.0f} KiB."]
    markdown = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write(markdown)
    with open(os.path.join(out_dir, "results.csv"), "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(results)
    methods = [r["method"] for r in results]
    panels = {"accuracy": {"dev": [r["accuracy"] for r in results],
                           "dev with typos": [r["typo_accuracy"] for r in results]},
              "trainable parameters (%)": {"trainable": [r["trainable_percent"] for r in results]},
              "shipped file (% of full)": {"shipped": [r["shipped_percent"] for r in results]}}
    try:
        visualize.bar_chart(methods, panels, os.path.join(out_dir, "results.png"), title=title,
                            log_panels=("trainable parameters (%)", "shipped file (% of full)"))
    except ImportError:
        print("no chart: matplotlib is not installed (pip install kerazoo[plots])")
    return markdown


def main(argv=None):
    args = parse_args(argv)
    with training.quiet_logs(args):
        return run(args)


def run(args):
    with recipe_flags.exit_on(OSError):
        os.makedirs(args.out_dir, exist_ok=True)
    if args.only:
        with recipe_flags.exit_on(OSError, ValueError):
            result = run_method(args, args.only)
        training.write_json_atomically(args.result, result)
        return 0
    bert_finetune.load_data(args)  # errors and sizes once, before any method runs
    results = []
    for method in args.method_list:
        print(f"--- {method}", flush=True)
        result_path = os.path.join(args.out_dir, f"{method}.json")
        child = subprocess.run([sys.executable, os.path.abspath(__file__), *args.argv, "--only", method,
                                "--result", result_path])
        if child.returncode:
            raise SystemExit(f"error: method {method} failed (exit status {child.returncode})")
        results.append(json.load(open(result_path, encoding="utf-8")))
    title = f"{len(results)} methods, {args.steps} steps of {args.batch_size} examples each"
    print(write_outputs(results, args.out_dir, title))
    print(f"plan: {results[0]['plan']}")
    print(f"wrote {args.out_dir}/results.md, results.csv, results.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
