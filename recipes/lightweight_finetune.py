"""Compare lightweight fine-tuning methods on one BERT encoder, task and step budget: a table and a bar chart.

Each method fine-tunes a fresh copy of the encoder from recipes/bert_pretrain.py
(by default saved_models/bert_pretrained) for the same number of steps, in its
own process (so that its peak memory is its own), and is scored on the
validation set and on a copy of it with character typos in 10% of the words:

    python recipes/bert_pretrain.py && python recipes/lightweight_finetune.py
    python recipes/lightweight_finetune.py --pretrained DIR --data train.tsv --val-data dev.tsv --steps 600 \\
        --methods full,head,top-2,lora-8,adapters-16,prompt-20,full+fgm,lora-8+fgm
    python recipes/lightweight_finetune.py --pretrained DIR --data train.tsv --val-data dev.tsv --steps 2000 \\
        --methods full,lora-8,lora-4-all --seeds 3 --select-rate-factors 0.3,1,3

Methods (combine a base method with +fgm or +pgd: "mixed methods"):
  full          every weight trains                      head         only the pooler and classifier
  top-K         the last K blocks and the head           lora-R       LoRA of rank R on QKV and attention output
  adapters-D    bottleneck adapters of width D           prompt-N     N soft-prompt vectors after [CLS]
  lora-R-T      LoRA of rank R on the projections T: attn (QKV and attention output, as lora-R), qkv,
                ffn (both feed-forward projections) or all (the four)
  lora-...-embE also LoRA of rank E on the token embedding table (e.g. lora-4-emb2, lora-8-all-emb4)
  ...+fgm       adversarial training, FGM on the token embeddings (--epsilon); +pgd: PGD (--pgd-steps)
LoRA, adapters and prompts train the head too (a new classifier must). full, top-K use --learning-rate;
the others --adapter-learning-rate (prompts: --prompt-learning-rate); --method-learning-rate METHOD=RATE
sets one method's rate. --seeds N runs each method N times (seeds --seed, --seed+1, ...; the data and
its split are the same each time) and reports mean +- sd and each method's paired difference from the
first method. --select-rate-factors picks each method's rate first (its rate times each factor), by
accuracy on a part of the training data held out for it (--selection-fraction; the validation data
is never used to choose).
Writes OUT_DIR/results.md, results.csv (one row per run), results.png (matplotlib: pip install
kerazoo[plots]), selection.csv with --select-rate-factors, and each run's shipped file
(OUT_DIR/<method>.npz, <method>.seed<S>.npz with --seeds: only what the method changed, from
kerazoo.finetune.save_adapters). Each run's result is kept in OUT_DIR/runs/ as soon as it finishes;
the same command run again reuses those and runs only what is missing, so a comparison that was
stopped resumes where it stopped (a run counts as done only for the exact same flags).
"""

import argparse
import collections
import csv
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile

import kerazoo  # noqa: F401 (before TensorFlow: its import notices stay hidden)
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bert_finetune  # noqa: E402  (its encoder and data flags and loaders)

from kerazoo import evaluation, finetune, models, recipe_flags, text, training, visualize  # noqa: E402

DEFAULT_METHODS = "full,head,top-2,lora-4,lora-8,lora-16,lora-4-emb2,adapters-16,prompt-20,full+fgm"
COLUMNS = ("method", "seed", "learning_rate", "trainable", "trainable_percent", "accuracy", "f1", "typo_accuracy",
           "seconds_per_step", "peak_memory_mb", "shipped_bytes", "shipped_percent")
SELECTION_COLUMNS = ("method", "factor", "learning_rate", "seed", "accuracy", "f1", "scored_examples")
# lora-R-T: the projections each target set adapts (kerazoo.finetune.LORA_TARGETS).
LORA_TARGET_SETS = {"attn": ("qkv", "attention_output"), "qkv": ("qkv",), "ffn": ("ff_inner", "ff_output"),
                    "all": ("qkv", "attention_output", "ff_inner", "ff_output")}
Method = collections.namedtuple("Method", "name size targets embedding_rank adversarial")


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
    fit.add_argument("--learning-rate", type=float, default=3e-4,
                     help="peak AdamW rate of full and top-K (default: 3e-4, the best of 3e-5 ... 1e-3 for the "
                          "recipe-size encoders on SST-2, pretrained and from scratch alike)")
    fit.add_argument("--adapter-learning-rate", type=float, default=1e-3,
                     help="peak AdamW rate of head, lora-R and adapters-D (default: 1e-3)")
    fit.add_argument("--prompt-learning-rate", type=float, default=1e-2,
                     help="peak AdamW rate of prompt-N (default: 1e-2)")
    fit.add_argument("--method-learning-rate", action="append", default=[], metavar="METHOD=RATE",
                     help="peak AdamW rate of one method of --methods, over its group's flag (repeatable)")
    fit.add_argument("--select-rate-factors", metavar="FACTORS",
                     help="comma-separated factors: each method first trains at its rate (from the flags above) "
                          "times each factor, once per selection seed, on the training data less "
                          "--selection-fraction, and keeps the rate with the best mean accuracy on that held-out "
                          "part (ties: the smaller rate)")
    fit.add_argument("--selection-fraction", type=float, default=0.1,
                     help="share of the training data held out to choose rates, split by --seed (default: 0.1)")
    fit.add_argument("--selection-seeds", type=int, default=1,
                     help="runs per method and rate when choosing (default: 1)")
    fit.add_argument("--seeds", type=int, default=1,
                     help="runs of each method, with seeds --seed ... --seed + N - 1 (default: 1)")
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
    # internal: run one method (with --seed + --repeat, at --rate, on the held-out part with --holdout),
    # write its result JSON to --result
    out.add_argument("--only", help=argparse.SUPPRESS)
    out.add_argument("--result", help=argparse.SUPPRESS)
    out.add_argument("--repeat", type=int, default=0, help=argparse.SUPPRESS)
    out.add_argument("--rate", type=float, help=argparse.SUPPRESS)
    out.add_argument("--holdout", action="store_true", help=argparse.SUPPRESS)
    recipe_flags.add_runtime_flags(parser)
    args = recipe_flags.parse_args(parser, argv, check_flags)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # each method's process gets the same flags
    return args


def check_flags(args):
    """Everything the flags alone decide, checked before any data is read (see `kerazoo.recipe_flags`)."""
    bert_finetune.check_encoder_and_data_flags(args)
    recipe_flags.positive(args, "steps", "batch_size", "pgd_steps", "seeds", "selection_seeds")
    for name in ("learning_rate", "adapter_learning_rate", "prompt_learning_rate", "epsilon"):
        recipe_flags.in_range(args, name, low=0, low_open=True)
    for name in ("dropout", "warmup_fraction"):
        recipe_flags.in_range(args, name, 0, 1, high_open=True)
    recipe_flags.in_range(args, "selection_fraction", 0, 1, low_open=True, high_open=True)
    recipe_flags.in_range(args, "typo_rate", 0, 1)
    recipe_flags.in_range(args, "weight_decay", low=0)
    recipe_flags.in_range(args, "seed", 0, 2 ** 32 - 1 - args.seeds - args.selection_seeds)
    args.method_list = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not args.method_list:
        raise ValueError("--methods is empty")
    if len(set(args.method_list)) < len(args.method_list):
        raise ValueError(f"--methods names a method twice: {args.methods!r}")
    for method in args.method_list:
        parse_method(method)
    args.method_rates = {}
    for item in args.method_learning_rate:
        method, _, rate = item.partition("=")
        if method.strip() not in args.method_list:
            raise ValueError(f"--method-learning-rate {item!r}: {method.strip()!r} is not one of --methods")
        args.method_rates[method.strip()] = _positive_rate(rate, f"--method-learning-rate {item!r}")
    args.rate_factors = None
    if args.select_rate_factors is not None:
        args.rate_factors = sorted({_positive_rate(f, f"--select-rate-factors {args.select_rate_factors!r}")
                                    for f in args.select_rate_factors.split(",") if f.strip()})
        if not args.rate_factors:
            raise ValueError("--select-rate-factors is empty")
    recipe_flags.export_destination(os.path.dirname(os.path.normpath(args.out_dir)) or ".",
                                    os.path.basename(os.path.normpath(args.out_dir)), suffixes=(),
                                    dir_flag="--out-dir", name_flag="--out-dir")


def _positive_rate(text, where):
    try:
        rate = float(text)
    except ValueError:
        rate = float("nan")
    if not rate > 0 or rate == float("inf"):
        raise ValueError(f"{where}: each must be a positive number; received {text.strip()!r}")
    return rate


def parse_method(method):
    """`"lora-8-all-emb2+fgm"` → `Method("lora", 8, ("qkv", ..., "ff_output"), 2, "fgm")`; ValueError if unknown.

    `targets` is None except for LoRA (`lora-R` is `lora-R-attn`); `embedding_rank`
    is LoRA's `-embE` (rank E on the token embedding table), else None.
    """
    base, _, adversarial = method.partition("+")
    name, _, size = base.partition("-")
    size, *options = size.split("-")
    embedding_rank = None
    if name == "lora" and options and re.fullmatch(r"emb[1-9][0-9]*", options[-1]):
        embedding_rank = int(options.pop()[3:])
    target_set = options.pop() if options else ""
    sized = {"top": "K", "lora": "R", "adapters": "D", "prompt": "N"}
    valid = ((name in ("full", "head") and not size) or (name in sized and size.isdigit() and int(size) > 0)) \
        and adversarial in ("", "fgm", "pgd") and not options \
        and (not target_set or (name == "lora" and target_set in LORA_TARGET_SETS))
    if not valid:
        raise ValueError(f"--methods: unknown method {method!r}; use full, head, top-K, lora-R, lora-R-T (T: "
                         f"{', '.join(LORA_TARGET_SETS)}), either with -embE, adapters-D or prompt-N, optionally "
                         "with +fgm or +pgd (e.g. lora-8+fgm, lora-4-emb2)")
    targets = LORA_TARGET_SETS[target_set or "attn"] if name == "lora" else None
    return Method(name, int(size) if size else None, targets, embedding_rank, adversarial or None)


def learning_rate(args, method):
    """The peak rate `method` trains with: --rate (a chosen one), --method-learning-rate, else its group's flag."""
    if args.rate is not None:
        return args.rate
    if method in args.method_rates:
        return args.method_rates[method]
    name = parse_method(method).name
    return getattr(args, {"full": "learning_rate", "top": "learning_rate",
                          "prompt": "prompt_learning_rate"}.get(name, "adapter_learning_rate"))


def prepare(classifier, method):
    """Applies `method` to a fresh classifier; returns the model to train."""
    name, size, targets, embedding_rank, _ = parse_method(method)
    if name in ("full", "head"):
        finetune.freeze(classifier, name)
    elif name == "top":
        finetune.freeze(classifier, "top_k", k=size)
    elif name == "lora":
        finetune.apply_lora(classifier, size, targets=targets, embedding_rank=embedding_rank)
    elif name == "adapters":
        finetune.apply_adapters(classifier, size)
    else:
        return finetune.prompt_tune(classifier, size)
    return classifier


def run_method(args, method, print_fn=print):
    """Fine-tunes one method as the flags say and scores it.

    The run's seed is `--seed` + `--repeat`; the data, its split and the
    typos are those of `--seed`, the same in every run. With `--holdout`
    it trains on the training data less `--selection-fraction` and is
    scored on that held-out part (no typo column, no shipped file).

    Returns:
        A dict with the `COLUMNS` (and the full model's size, `model_bytes`).
    """
    seed = args.seed + args.repeat
    batch_size = training.start_run(argparse.Namespace(**dict(vars(args), seed=seed)))
    train, val = bert_finetune.load_data(args, print_fn=lambda line: None)
    if args.holdout:
        train, val = train.split(args.selection_fraction, seed=args.seed)
    plan = training.select_plan(args.precision, {"on": True, "off": False, "auto": "auto"}[args.jit_compile],
                                args.strategy)
    backbone, tokenizer, lower_case = bert_finetune.load_encoder(args, train.texts, plan)
    preprocessor = text.BertPreprocessor(tokenizer, args.max_length or backbone.get_layer("embedding").max_length,
                                         lower_case=lower_case)
    with plan.scope():
        classifier = models.bert_classifier(backbone, len(train.label_names), dropout=args.dropout)
        model = prepare(classifier, method)
    report = finetune.trainable_report(model, print_fn=None)
    rate = learning_rate(args, method)
    schedule = training.WarmupLinear(rate, int(args.warmup_fraction * args.steps), args.steps)
    adversarial = parse_method(method).adversarial
    trained = model
    with plan.scope():  # the optimizer's variables too belong to the strategy
        optimizer = training.adamw(schedule, weight_decay=args.weight_decay)
        if adversarial:
            trained = finetune.AdversarialModel(model, epsilon=args.epsilon,
                                                pgd_steps=args.pgd_steps if adversarial == "pgd" else 1)
        training.compile_model(trained, plan, optimizer=optimizer, loss="sparse_categorical_crossentropy")
    train_ds = text.classification_dataset(train.texts, train.labels, preprocessor, batch_size, shuffle=True,
                                           seed=seed).repeat()
    timer = training.StepTimer()
    with plan.scope():
        trained.fit(train_ds, steps_per_epoch=args.steps, epochs=1, verbose=0, callbacks=[timer], shuffle=False)

    def score(texts):
        ds = text.classification_dataset(texts, val.labels, preprocessor, batch_size)
        return evaluation.classification_report(val.labels, model.predict(ds, verbose=0).argmax(-1),
                                                train.label_names)

    dev = score(val.texts)
    typos = None if args.holdout else score(evaluation.add_typos(val.texts, args.typo_rate, seed=args.seed))
    shipped = None if args.holdout else finetune.save_adapters(model, os.path.join(args.out_dir,
                                                                                   run_name(args, method) + ".npz"))
    with tempfile.TemporaryDirectory() as tmp:  # the whole model, as save_adapters would write it
        full = os.path.join(tmp, "all.npz")
        np.savez(full, **{v.path: v.numpy() for v in classifier.weights if "lora" not in v.path})
        model_bytes = os.path.getsize(full)
    result = dict(method=method, seed=seed, learning_rate=rate, trainable=report.trainable,
                  trainable_percent=100 * report.trainable / report.total, accuracy=dev.accuracy, f1=dev.f1,
                  typo_accuracy=typos.accuracy if typos else None,
                  # the first steps trace and compile
                  seconds_per_step=statistics.median(timer.seconds[min(3, len(timer.seconds) - 1):]),
                  peak_memory_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  shipped_bytes=shipped, shipped_percent=None if shipped is None else 100 * shipped / model_bytes,
                  model_bytes=model_bytes, total=report.total, scored_examples=len(val), plan=plan.reason)
    if print_fn:
        scored = (f"held-out accuracy {dev.accuracy:.4f}" if args.holdout else
                  f"accuracy {dev.accuracy:.4f}, F1 {dev.f1:.4f}, with typos {typos.accuracy:.4f}; shipped "
                  f"{shipped / 1024:,.0f} KiB")
        print_fn(f"{method} (seed {seed}, rate {rate:g}): {report.trainable:,d} of {report.total:,d} parameters "
                 f"train ({result['trainable_percent']:.2f}%); {scored}; "
                 f"{result['seconds_per_step'] * 1000:.0f} ms/step", flush=True)
    return result


def run_name(args, method):
    """The file stem of one run's outputs: the method, its seed with --seeds > 1, its rate when choosing."""
    name = f"select.{method}.lr{args.rate:g}" if args.holdout else method
    return name if args.seeds == 1 and not args.holdout else f"{name}.seed{args.seed + args.repeat}"


def summarize(results):
    """Per method (in first-seen order): its runs' mean and sample sd of each score, and the medians of the costs.

    Args:
        results: `run_method` dicts, one per run.

    Returns:
        A list of dicts: method, runs, learning_rate, trainable, trainable_percent, `<score>_mean` and
        `<score>_sd` for accuracy, f1 and typo_accuracy (sd 0 for one run), seconds_per_step (median),
        peak_memory_mb (largest), shipped_bytes and shipped_percent (median).
    """
    by_method = collections.defaultdict(list)
    for r in results:
        by_method[r["method"]].append(r)
    rows = []
    for method, runs in by_method.items():
        row = dict(method=method, runs=len(runs), learning_rate=runs[0]["learning_rate"],
                   trainable=runs[0]["trainable"], trainable_percent=runs[0]["trainable_percent"],
                   seconds_per_step=statistics.median(r["seconds_per_step"] for r in runs),
                   peak_memory_mb=max(r["peak_memory_mb"] for r in runs),
                   shipped_bytes=statistics.median(r["shipped_bytes"] for r in runs),
                   shipped_percent=statistics.median(r["shipped_percent"] for r in runs),
                   model_bytes=runs[0]["model_bytes"])
        for score in ("accuracy", "f1", "typo_accuracy"):
            values = [r[score] for r in runs]
            row[f"{score}_mean"] = statistics.fmean(values)
            row[f"{score}_sd"] = statistics.stdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def paired_differences(results, reference):
    """Each other method's accuracy minus `reference`'s, seed by seed (only the seeds both ran).

    Returns:
        A dict method → (mean, sample sd, the per-seed differences in seed order); sd is 0 for one seed.
    """
    accuracy = collections.defaultdict(dict)
    for r in results:
        accuracy[r["method"]][r["seed"]] = r["accuracy"]
    differences = {}
    for method, by_seed in accuracy.items():
        if method == reference:
            continue
        d = [by_seed[s] - accuracy[reference][s] for s in sorted(by_seed) if s in accuracy[reference]]
        if d:
            differences[method] = (statistics.fmean(d), statistics.stdev(d) if len(d) > 1 else 0.0, d)
    return differences


def choose_rates(selection):
    """method → the rate with the best mean held-out accuracy over its runs (ties: the smaller rate).

    Args:
        selection: `run_method` dicts of `--holdout` runs.
    """
    scores = collections.defaultdict(list)
    for r in selection:
        scores[r["method"], r["learning_rate"]].append(r["accuracy"])
    best = {}
    for (method, rate), values in sorted(scores.items(), key=lambda item: item[0][1]):
        mean = statistics.fmean(values)
        if method not in best or mean > best[method][1]:
            best[method] = (rate, mean)
    return {method: rate for method, (rate, _) in best.items()}


def write_outputs(results, out_dir, title, selection=()):
    """results.md, results.csv (one row per run) and results.png (bar chart) in `out_dir`; returns the Markdown.

    The table has one row per method: mean +- sample sd over its runs. With
    more than one method and seed, a second table gives each method's
    paired accuracy difference from the first method. With `selection`
    (the `--holdout` runs), a third gives each rate's held-out accuracy and
    selection.csv holds those runs.
    """
    rows = summarize(results)
    model_bytes = max(r["model_bytes"] for r in rows)
    runs = max(r["runs"] for r in rows)
    spread = (lambda row, score: f"{row[score + '_mean']:.4f} ± {row[score + '_sd']:.4f}") if runs > 1 else \
        (lambda row, score: f"{row[score + '_mean']:.4f}")
    lines = [f"# {title}", "",
             "| method | learning rate | trainable params | trainable % | dev accuracy | dev F1 | typo accuracy | "
             "s/step | peak memory (MiB) | shipped file (KiB) | shipped % of full |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['method']} | {r['learning_rate']:g} | {r['trainable']:,d} | {r['trainable_percent']:.2f} | "
                     f"{spread(r, 'accuracy')} | {spread(r, 'f1')} | {spread(r, 'typo_accuracy')} | "
                     f"{r['seconds_per_step']:.3f} | {r['peak_memory_mb']:,.0f} | {r['shipped_bytes'] / 1024:,.1f} | "
                     f"{r['shipped_percent']:.2f} |")
    lines += ["", f"Full model weights: {model_bytes / 1024:,.0f} KiB."
              + (f" Scores: mean ± sample sd over {runs} seeds; s/step and shipped size: medians." if runs > 1
                 else "")]
    differences = paired_differences(results, rows[0]["method"])
    if runs > 1 and differences:
        lines += ["", f"## Dev accuracy minus {rows[0]['method']}'s, seed by seed", "",
                  "| method | mean ± sd | per seed |", "|---|---:|---|"]
        for method, (mean, sd, per_seed) in differences.items():
            lines.append(f"| {method} | {mean:+.4f} ± {sd:.4f} | {', '.join(f'{d:+.4f}' for d in per_seed)} |")
    if selection:
        factors = sorted({r["factor"] for r in selection})
        chosen = choose_rates(selection)
        held = collections.defaultdict(list)
        for r in selection:
            held[r["method"], r["factor"]].append(r)
        lines += ["", "## Learning-rate choice: mean accuracy on the held-out part of the training data "
                  "(rate in brackets)", "",
                  "| method | " + " | ".join(f"× {factor:g}" for factor in factors) + " | chosen rate |",
                  "|---|" + "---:|" * (len(factors) + 1)]
        for method in chosen:
            cells = [f"{statistics.fmean(r['accuracy'] for r in held[method, f]):.4f} "
                     f"({held[method, f][0]['learning_rate']:g})" if held[method, f] else "–" for f in factors]
            lines.append(f"| {method} | " + " | ".join(cells) + f" | {chosen[method]:g} |")
        with open(os.path.join(out_dir, "selection.csv"), "w", encoding="utf-8", newline="") as f:
            writer = csv.DictWriter(f, SELECTION_COLUMNS, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(selection)
    markdown = "\n".join(lines) + "\n"
    with open(os.path.join(out_dir, "results.md"), "w", encoding="utf-8") as f:
        f.write(markdown)
    with open(os.path.join(out_dir, "results.csv"), "w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(results)
    methods = [r["method"] for r in rows]
    panels = {"accuracy (mean)": {"dev": [r["accuracy_mean"] for r in rows],
                                  "dev with typos": [r["typo_accuracy_mean"] for r in rows]},
              "trainable parameters (%)": {"trainable": [r["trainable_percent"] for r in rows]},
              "shipped file (% of full)": {"shipped": [r["shipped_percent"] for r in rows]}}
    try:
        visualize.bar_chart(methods, panels, os.path.join(out_dir, "results.png"), title=title,
                            log_panels=("trainable parameters (%)", "shipped file (% of full)"))
    except ImportError:
        print("no chart: matplotlib is not installed (pip install kerazoo[plots])")
    return markdown


def finished_run(path, command):
    """The result kept at `path` by an earlier run of exactly `command`, else None (also when unreadable)."""
    try:
        with open(path, encoding="utf-8") as f:
            result = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(result, dict) or result.pop("command", None) != command:
        return None
    return result


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

    def child(method, repeat, extra=()):
        """Runs one method in its own process, unless a run with the same flags left its result; returns it."""
        label = f"{method}, seed {args.seed + repeat}" + "".join(f" {flag}" for flag in extra)
        command = [*args.argv, "--only", method, "--repeat", str(repeat), *extra]
        kept = os.path.join(args.out_dir, "runs", f"{method}.seed{args.seed + repeat}"
                            + "".join(f".{flag.lstrip('-')}" for flag in extra) + ".json")
        result = finished_run(kept, command)
        if result is not None:
            print(f"--- {label}: done before, reusing {kept}", flush=True)
            return result
        print(f"--- {label}", flush=True)
        # The child's result goes to a temporary folder, not OUT_DIR: a killed run leaves nothing there.
        with tempfile.TemporaryDirectory(prefix="kerazoo-finetune-") as scratch:
            path = os.path.join(scratch, "result.json")
            status = subprocess.run([sys.executable, os.path.abspath(__file__), *command, "--result", path]).returncode
            if status:
                raise SystemExit(f"error: method {method} failed (exit status {status})")
            with open(path, encoding="utf-8") as f:
                result = json.load(f)
        training.write_json_atomically(kept, dict(result, command=command))
        return result

    selection = []
    if args.rate_factors:
        for method in args.method_list:
            for factor in args.rate_factors:
                rate = factor * learning_rate(args, method)
                for repeat in range(args.selection_seeds):
                    selection.append(dict(child(method, repeat, ("--holdout", "--rate", repr(rate))),
                                          factor=factor))
        chosen = choose_rates(selection)
        print("chosen rates: " + ", ".join(f"{m} {r:g}" for m, r in chosen.items()), flush=True)
    results = [child(method, repeat, ("--rate", repr(chosen[method])) if args.rate_factors else ())
               for method in args.method_list for repeat in range(args.seeds)]
    title = (f"{len(args.method_list)} methods, {args.steps} steps of {args.batch_size} examples each"
             + (f", {args.seeds} seeds" if args.seeds > 1 else ""))
    print(write_outputs(results, args.out_dir, title, selection))
    print(f"plan: {results[0]['plan']}")
    print(f"wrote {args.out_dir}/results.md, results.csv, results.png"
          + (", selection.csv" if selection else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
