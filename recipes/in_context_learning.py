"""Train a small LM on in-context episodes and measure accuracy against the number of demonstrations on held-out tasks.

Half the training sequences are episodes of a synthetic task family: pairs `xy` drawn from a fresh
random rule (by default 4 random letters mapped one-to-one onto 0-3), so the only way to predict
an output is to find the same input earlier in the context. The other half are copying exercises
(a random string written again and again), on which induction heads form quickly; the mapping
task then uses them. Evaluation uses rules held out from training (a task-level split): the table
and plot show accuracy at 0, 1, 2, ... shots with 95% intervals and the chance level, and a heat
map shows the head that attends to the matching demonstration. Runs offline in minutes on 2 cores:

    python recipes/in_context_learning.py
    python recipes/in_context_learning.py --family linear

Evaluate any saved kerazoo LM on your own task (JSON Lines: {"input": ..., "output": ...} per
line, optionally a line {"labels": [...]} for constrained choice):

    python recipes/in_context_learning.py --model lm.keras --vocabulary lm.vocabulary.json \\
        --task task.jsonl --shots 0 1 4 8 --calibrate
"""

import argparse
import json
import os
import sys
import time

import kerazoo  # noqa: F401 (before TensorFlow: its import notices stay hidden)
import keras
import numpy as np
import tensorflow as tf

from kerazoo import data, icl, models, nonfinite, recipe_flags, text, training, visualize
from kerazoo.data import few_shot

FAMILIES = {"mapping": few_shot.TokenMappingFamily, "linear": few_shot.LinearRuleFamily}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="\n".join(__doc__.splitlines()[2:]))
    tasks = parser.add_argument_group("synthetic tasks")
    tasks.add_argument("--family", choices=sorted(FAMILIES), default="mapping",
                       help="mapping: random letter->digit mappings; linear: y = a*x + b (default: mapping)")
    tasks.add_argument("--num-inputs", type=int, default=4, help="symbols per mapping (default: 4)")
    tasks.add_argument("--held-out-tasks", type=int, default=64,
                       help="rules held out from training and evaluated (default: 64)")
    tasks.add_argument("--queries-per-task", type=int, default=8, help="(default: 8)")
    tasks.add_argument("--examples-per-episode", type=int, default=20,
                       help="pairs in each training sequence (default: 20)")
    model = parser.add_argument_group("model")
    model.add_argument("--d-model", type=int, default=64, help="(default: 64)")
    model.add_argument("--num-heads", type=int, default=4, help="(default: 4)")
    model.add_argument("--num-layers", type=int, default=2, help="(default: 2)")
    model.add_argument("--ff-dim", type=int, default=256, help="(default: 256)")
    fit = parser.add_argument_group("training")
    fit.add_argument("--copy-fraction", type=float, default=0.5,
                     help="share of training episodes that are copying exercises (random strings written twice), "
                          "which make induction heads appear sooner (default: 0.5)")
    fit.add_argument("--batch-size", type=int, default=32, help="episodes per step (default: 32)")
    fit.add_argument("--max-steps", type=int, default=6000, help="(default: 6000)")
    fit.add_argument("--learning-rate", type=float, default=1e-3, help="peak rate (default: 1e-3)")
    fit.add_argument("--warmup-steps", type=int, default=100, help="(default: 100)")
    fit.add_argument("--eval-interval", type=int, default=500, help="steps between loss reports (default: 500)")
    fit.add_argument("--seed", type=int, default=0, help="(default: 0)")
    evaluation = parser.add_argument_group("evaluation")
    evaluation.add_argument("--shots", type=int, nargs="+", default=[0, 1, 2, 4, 8, 16],
                            help="(default: 0 1 2 4 8 16)")
    evaluation.add_argument("--trials", type=int, default=5, help="demonstration draws per shot count (default: 5)")
    evaluation.add_argument("--calibrate", action="store_true",
                            help="also score with contextual calibration (Zhao et al. 2021)")
    evaluation.add_argument("--method", choices=icl.METHODS, default="choice",
                            help="choice: most likely label; generate: exact match of greedy text (default: choice)")
    evaluation.add_argument("--max-queries", type=int, help="queries per task (default: all)")
    user = parser.add_argument_group("evaluate a saved LM on your task instead of training")
    user.add_argument("--model", metavar="PATH", help="a .keras LM from kerazoo")
    user.add_argument("--vocabulary", metavar="PATH", help="its tokenizer's vocabulary file")
    user.add_argument("--task", metavar="FILE.jsonl", help="the task's examples")
    user.add_argument("--template", help="example pattern with {input} and {output} (default: input, newline, output)")
    user.add_argument("--separator", help="text between examples (default: a blank line)")
    out = parser.add_argument_group("output")
    out.add_argument("--output-dir", default="saved_models/in_context_learning",
                     help="model, vocabulary, results.json and the PNGs (default: saved_models/in_context_learning)")
    recipe_flags.add_runtime_flags(parser)
    return recipe_flags.parse_args(parser, argv, check_flags)


def check_flags(args):
    """Everything the flags alone decide, checked before any episode is made (see `kerazoo.recipe_flags`)."""
    recipe_flags.positive(args, "num_inputs", "held_out_tasks", "queries_per_task", "examples_per_episode",
                          "d_model", "num_heads", "num_layers", "ff_dim", "batch_size", "max_steps",
                          "eval_interval", "trials")
    if args.max_queries is not None:
        recipe_flags.positive(args, "max_queries")
    recipe_flags.in_range(args, "learning_rate", low=0, low_open=True)
    recipe_flags.in_range(args, "copy_fraction", 0, 1, high_open=True)
    recipe_flags.in_range(args, "warmup_steps", 0, args.max_steps, high_open=True)
    if min(args.shots) < 0:
        raise ValueError(f"--shots must be >= 0; received {args.shots}")
    if args.max_steps % args.eval_interval:
        raise ValueError("--max-steps must be a multiple of --eval-interval")
    if args.d_model % args.num_heads:
        raise ValueError(f"--d-model {args.d_model} is not divisible by --num-heads {args.num_heads}")
    user_flags = [args.model, args.vocabulary, args.task]
    if any(user_flags) and not all(user_flags):
        raise ValueError("--model, --vocabulary and --task go together")
    if args.calibrate and args.method != "choice":
        raise ValueError("--calibrate needs --method choice")
    if not any(user_flags) and max(args.shots) >= args.examples_per_episode:
        raise ValueError(f"--shots up to {max(args.shots)} need --examples-per-episode > {max(args.shots)} "
                         "(the model must see contexts that long in training)")


def main(argv=None):
    args = parse_args(argv)
    with training.quiet_logs(args):
        return run(args)


def run(args):
    batch_size = training.start_run(args)
    os.makedirs(args.output_dir, exist_ok=True)
    if args.task:
        return evaluate_saved(args)
    started = time.perf_counter()
    family = (FAMILIES[args.family](num_inputs=args.num_inputs) if args.family == "mapping"
              else FAMILIES[args.family]())
    held_out = few_shot.split_rules(family, args.held_out_tasks, seed=args.seed)
    tasks = few_shot.held_out_tasks(family, sorted(held_out), num_queries=args.queries_per_task,
                                    num_demonstrations=max(32, 2 * max(args.shots)), seed=args.seed + 1)
    texts, masks, _ = few_shot.episodes(family, batch_size * args.max_steps, args.examples_per_episode,
                                        exclude=held_out, seed=args.seed + 2)
    val_texts, val_masks, _ = few_shot.episodes(family, 4 * batch_size, args.examples_per_episode,
                                                rules=sorted(held_out), seed=args.seed + 3)
    if args.copy_fraction:
        # Replace a share of the episodes by copying exercises over the same symbols, at random places.
        rng = np.random.default_rng(args.seed + 4)
        chosen = np.flatnonzero(rng.random(len(texts)) < args.copy_fraction)
        symbols = sorted(set("".join(texts[:100])))
        copies, copy_masks = few_shot.copy_episodes(symbols, len(chosen), len(texts[0]), seed=args.seed + 5)
        for i, copy, copy_mask in zip(chosen, copies, copy_masks):
            texts[i], masks[i] = copy, copy_mask
    tokenizer = text.CharTokenizer.learn(texts)
    max_length = max(len(t) for t in texts)
    print(f"family: {args.family}, {len(held_out)} held-out rules, chance {chance_of(tasks):.3f}; "
          f"training on {len(texts):,} episodes of {args.examples_per_episode} pairs from other rules, "
          f"e.g. {texts[0][:40]!r}...")

    train_arrays = episode_arrays(tokenizer, texts, masks, max_length)
    train_ds = batches(train_arrays, batch_size)
    # Loss estimates read their own streams (fresh training episodes, and episodes of the held-out rules).
    train_eval_ds = batches(train_arrays, batch_size, shuffle_seed=args.seed)
    val_ds = batches(episode_arrays(tokenizer, val_texts, val_masks, max_length), batch_size)

    def build(plan):
        model = models.transformer_lm(tokenizer.vocabulary_size, max_length, args.d_model, args.num_heads,
                                      args.num_layers, args.ff_dim)
        schedule = training.warmup_cosine(args.learning_rate, args.warmup_steps, args.max_steps,
                                          args.learning_rate / 10)
        return training.compile_model(model, plan, optimizer=training.adamw(schedule, global_clipnorm=1.0))

    plan, model = training.plan_from_flags(args, build, train_eval_ds.take(1).get_single_element())
    print(f"model: {model.count_params():,} parameters, context {max_length}")
    guard = nonfinite.NonFiniteGuard()
    progress = training.LanguageModelProgress(train_eval_ds, val_ds, args.eval_interval,
                                              batch_size * max_length, eval_batches=4,
                                              total_steps=args.max_steps)
    runtime = training.runtime_callbacks(args, plan)
    done = next((c.initial_epoch for c in runtime if isinstance(c, training.Checkpoint)), 0)
    with plan.scope():
        model.fit(train_ds.skip(done * args.eval_interval),  # a resumed run continues the stream
                  epochs=-(-args.max_steps // args.eval_interval), steps_per_epoch=args.eval_interval,
                  callbacks=[guard, progress, *runtime], verbose=0, shuffle=False)  # episodes are random already
    with recipe_flags.exit_on(FloatingPointError):
        guard.check(model)
    train_seconds = time.perf_counter() - started
    print(f"trained {args.max_steps} steps in {train_seconds:.0f}s (loss: nats per output token on training "
          f"episodes and on episodes of the held-out rules; guessing among the {len(tasks[0].labels)} labels "
          f"scores {np.log(len(tasks[0].labels)):.2f})")

    results = run_evaluation(args, model, tokenizer, tasks)
    attention = show_attention(model, tokenizer, tasks[0], os.path.join(args.output_dir, "attention.png"))
    training.save_keras_atomically(model, os.path.join(args.output_dir, "model.keras"))
    tokenizer.save_vocabulary(os.path.join(args.output_dir, "vocabulary.json"))
    write_results(args, results, chance_of(tasks), dict(train_seconds=round(train_seconds, 1),
                                                        attention=attention, family=args.family))
    return 0


def episode_arrays(tokenizer, texts, masks, max_length):
    """(inputs, next-token targets, weights); only output tokens carry loss (inputs are random).

    The weights are scaled so that Keras's mean over all positions is the mean loss per output token.
    """
    ids = tokenizer(tf.constant(list(texts))).to_tensor(shape=(len(texts), max_length + 1)).numpy()
    weights = np.zeros(ids.shape, np.float32)
    for row, mask in enumerate(masks):
        weights[row, :mask.size] = mask
    weights *= weights[:, 1:].size / weights[:, 1:].sum()
    return ids[:, :-1], ids[:, 1:], weights[:, 1:]


def batches(arrays, batch_size, shuffle_seed=None):
    """An endless stream of batches of `arrays`, in order or shuffled."""
    dataset = tf.data.Dataset.from_tensor_slices(arrays).repeat()
    if shuffle_seed is not None:
        dataset = dataset.shuffle(10_000, seed=shuffle_seed)
    return data.prefetched(dataset.batch(batch_size, drop_remainder=True))


def chance_of(tasks):
    """Expected accuracy of a uniform guess among each task's labels."""
    return float(np.mean([1 / len(t.labels) for t in tasks]))


def run_evaluation(args, model, tokenizer, tasks):
    started = time.perf_counter()
    results = icl.evaluate(model, tokenizer, tasks, args.shots, args.trials, args.seed, args.method,
                           calibrate="both" if args.calibrate else False, max_queries=args.max_queries)
    if not args.calibrate:
        results = {"plain": results}
    chance = chance_of(tasks) if tasks[0].labels else None
    print(f"accuracy on {len(tasks)} held-out task(s), {args.trials} trials per shot count "
          f"({args.method}, {time.perf_counter() - started:.0f}s):")
    print(icl.format_results(results if args.calibrate else results["plain"], chance))
    path = os.path.join(args.output_dir, "accuracy.png")
    visualize.plot_accuracy_vs_shots(results, path, chance=chance,
                                     title=f"In-context learning: {', '.join(t.name for t in tasks[:1])}"
                                     if len(tasks) == 1 else "In-context learning on held-out rules")
    print(f"plot: {path}")
    return results


def show_attention(model, tokenizer, task, path):
    """Finds the head that attends most from the query to the demonstration with the query's input; draws it.

    The prompt shows the matching demonstration first, then pairs of only two
    other inputs: the answer cannot be worked out by elimination (the outputs
    the other inputs use), only read from the matching demonstration.
    """
    query = task.queries[0]
    others = list(dict.fromkeys(x for x, _ in task.demonstrations if x != query[0]))[:2]
    demos = [query] + [example for example in task.demonstrations if example[0] in others][:5]
    prompt = icl.few_shot_prompt(demos, query, task.template, task.separator)
    matching = len(task.template.format(input=query[0], output=query[1]))  # its tokens: one per character
    best = (-1.0, None, None)
    for layer in range(len(visualize.attention_layers(model))):
        scores = visualize.attention_maps(model, tokenizer, prompt, layer=layer).scores[:, -1]
        for head, row in enumerate(scores):
            best = max(best, (float(row[:matching].sum()), layer, head))
    on_match, layer, head = best
    visualize.attention_maps(model, tokenizer, prompt, layer=layer, head=head, path=path)
    share = matching / len(prompt)
    print(f"attention: prompt {prompt!r}; layer {layer} head {head} puts {on_match:.0%} of the last position's "
          f"attention on the matching demonstration ({share:.0%} of the positions); heat map: {path}")
    return dict(prompt=prompt, layer=layer, head=head, on_matching_demonstration=on_match)


def evaluate_saved(args):
    if not os.path.isfile(args.model):
        raise SystemExit(f"error: --model {args.model!r} does not exist")
    try:
        task = few_shot.load_few_shot_task(args.task, args.template, args.separator)
        tokenizer = text.load_tokenizer(args.vocabulary)
    except (FileNotFoundError, ValueError) as error:
        raise SystemExit(f"error: {error}") from None
    if args.method == "choice" and not task.labels:
        raise SystemExit(f"error: {args.task} has no labels line; add one or use --method generate")
    model = keras.models.load_model(args.model)
    print(f"task {task.name}: {len(task.queries)} examples, labels {task.labels}, template {task.template!r}")
    try:
        results = run_evaluation(args, model, tokenizer, [task])
    except ValueError as error:
        raise SystemExit(f"error: {error}") from None
    write_results(args, results, chance_of([task]) if task.labels else None, dict(task=args.task,
                                                                                  model=args.model))
    return 0


def write_results(args, results, chance, extra):
    path = os.path.join(args.output_dir, "results.json")
    rows = {name: [dict(shots=r.shots, accuracy=r.accuracy, interval=list(r.interval),
                        trial_accuracies=list(r.trial_accuracies), answered=r.answered, truncated=r.truncated)
                   for r in series] for name, series in results.items()}
    with open(f"{path}.tmp", "w") as f:
        json.dump(dict(chance=chance, results=rows, **extra), f, indent=1)
    os.replace(f"{path}.tmp", path)
    print(f"results: {path}")


if __name__ == "__main__":
    sys.exit(main())
