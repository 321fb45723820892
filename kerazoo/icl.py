"""In-context learning: few-shot prompts, and accuracy by number of demonstrations with no weight update."""

import dataclasses
import math
import warnings

import numpy as np
import tensorflow as tf

from kerazoo.data.few_shot import FewShotTask

# Inputs with no content (Zhao et al. 2021, "Calibrate Before Use"): the
# model's label probabilities for them estimate its bias for a prompt.
CONTENT_FREE_INPUTS = ("N/A", "", "[MASK]")
METHODS = ("choice", "generate")


@dataclasses.dataclass(frozen=True)
class ShotAccuracy:
    """Accuracy at one number of demonstrations.

    Attributes:
        shots: demonstrations per prompt.
        accuracy: fraction of correct answers over all trials and queries.
        interval: 95% Wilson score interval of `accuracy` (binomial: the
            uncertainty from the finite number of queries).
        trial_accuracies: accuracy of each trial (each trial draws its own
            demonstrations); their spread is the sensitivity to the choice
            and order of demonstrations. 0 shots has one trial.
        answered: answers scored in total.
        truncated: prompts cut on the left to fit the model's context.
    """

    shots: int
    accuracy: float
    interval: tuple
    trial_accuracies: tuple
    answered: int
    truncated: int = 0


def few_shot_prompt(examples, query, template="{input}\n{output}", separator="\n\n", instructions=""):
    """Builds a prompt: the demonstrations in `template`, then the query up to its `{output}` field.

    Args:
        examples: `(input, output)` demonstrations, in prompt order; an input
            is a str or a dict of str fields.
        query: the input to answer (str or dict), or an `(input, output)`
            pair whose output is ignored.
        template: `str.format` pattern with `{output}` and `{input}` (or the
            input dict's keys).
        separator: text between examples.
        instructions: text before the first example.

    Returns:
        The prompt, a str; the model's continuation is the answer.

    Example:

    >>> few_shot_prompt([("cat", "animal"), ("rose", "plant")], "dog", template="{input}: {output}")
    'cat: animal\\n\\nrose: plant\\n\\ndog: '
    """
    if template.count("{output}") != 1:
        raise ValueError(f"`template` must contain exactly one '{{output}}' field; received {template!r}.")
    if isinstance(query, tuple):
        query = query[0]
    parts = [_render(template, x, y) for x, y in examples]
    parts.append(_render(template, query, None))
    return instructions + separator.join(parts)


def evaluate(model, tokenizer, task, shots=(0, 1, 2, 4, 8), trials=5, seed=0, method="choice",
             calibrate=False, max_queries=None, batch_size=32, max_new_tokens=None):
    """Accuracy of `model` on `task` for each number of demonstrations, with no weight update.

    Each trial draws its demonstrations at random (seeded), in random order,
    and uses them for every query of the trial, as Zhao et al. (2021) do. A
    query is never among its own demonstrations: they come from the task's
    `demonstrations`, or, when it has none, from its queries, and then the
    trial's demonstrations are removed from its queries. Prompts longer than
    the model's context lose tokens on the left (counted in `truncated`).

    Scoring (`method`):
      * "choice": the answer is the label whose tokens have the highest total
        log-likelihood after the prompt (multi-token labels: the sum over
        their tokens), from batched forward passes: one per prompt when every
        label is a single token (all labels are read from the prompt's last
        position), else one per prompt-and-label sequence, all queries of
        all tasks of a trial batched together. With `calibrate=True` the label
        probabilities p (normalised over the labels) are divided by p_cf, the
        mean of the label probabilities for the same demonstrations with
        content-free inputs ("N/A", "", "[MASK]"): the contextual
        calibration of Zhao et al. (2021), `argmax W p` with `W = diag(p_cf)^-1`.
      * "generate": greedy decoding (`generation.generate`); the answer is
        the text generated before the separator, stripped, compared exactly
        with the expected output.

    Args:
        model: a causal LM from `models.transformer_lm` (token ids in, logits out).
        tokenizer: a `kerazoo.text` tokenizer (strings in, ragged ids out).
        task: a `FewShotTask`, or a list of them (one task family: results pooled).
        shots: numbers of demonstrations.
        trials: demonstration draws per shot count (0 shots: one).
        seed: seed of all draws.
        method: "choice" or "generate".
        calibrate: contextual calibration (method "choice" only): False,
            True, or "both" (plain and calibrated from the same forward passes).
        max_queries: answer at most this many queries per task (a seeded
            subsample, the same for every trial); None: all.
        batch_size: sequences per forward pass.
        max_new_tokens: for "generate"; default the longest output plus the separator, in tokens.

    Returns:
        A list of `ShotAccuracy`, one per entry of `shots`; with
        `calibrate="both"`, a dict `{"plain": [...], "calibrated": [...]}`.

    Example:

    >>> results = evaluate(model, tokenizer, task, shots=(0, 4))  # doctest: +SKIP
    >>> [round(r.accuracy, 2) for r in results]                    # doctest: +SKIP
    [0.25, 0.93]
    """
    tasks = [task] if isinstance(task, FewShotTask) else list(task)
    _check_arguments(tasks, shots, trials, method, calibrate, max_queries)
    scorer = _Scorer(model, tokenizer, batch_size)
    query_rng = np.random.default_rng([seed, 0])
    chosen = [_subsample(len(t.queries), max_queries, query_rng) for t in tasks]
    modes = {False: ("plain",), True: ("calibrated",), "both": ("plain", "calibrated")}[calibrate]
    results = {mode: [] for mode in modes}
    for k in shots:
        correct, trial_accuracies, truncated = {m: [] for m in modes}, {m: [] for m in modes}, 0
        for trial in range(trials if k else 1):
            rng = np.random.default_rng([seed, 1, k, trial])
            jobs = [(t, *_draw(t, indices, k, rng)) for t, indices in zip(tasks, chosen)]
            if method == "choice":
                answers, cut = _choose(scorer, jobs, modes)
            else:
                answers, cut = _generate(scorer, jobs, max_new_tokens)
            truncated += cut
            for mode in modes:
                trial_accuracies[mode].append(float(np.mean(answers[mode])))
                correct[mode].extend(answers[mode])
        for mode in modes:
            hits = correct[mode]
            results[mode].append(ShotAccuracy(k, float(np.mean(hits)), wilson_interval(sum(hits), len(hits)),
                                              tuple(trial_accuracies[mode]), len(hits), truncated))
    return results if calibrate == "both" else results[modes[0]]


def wilson_interval(successes, trials, z=1.96):
    """Wilson score interval of a binomial proportion (95% with the default z).

    Args:
        successes: number of successes.
        trials: number of trials (> 0).
        z: normal quantile.

    Returns:
        `(low, high)`.

    Example:

    >>> [round(v, 3) for v in wilson_interval(8, 10)]
    [0.49, 0.943]
    """
    if trials <= 0:
        raise ValueError(f"`trials` must be > 0; received {trials}.")
    p = successes / trials
    center = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z / (1 + z * z / trials) * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return max(0.0, center - half), min(1.0, center + half)


def format_results(results, chance=None):
    """A plain-text table of `evaluate`'s results.

    Args:
        results: a list of `ShotAccuracy`, or a dict of name → list (one column group each, all from
            one `evaluate` call, e.g. its plain and calibrated results).
        chance: the chance accuracy, printed under the table.

    Returns:
        str.
    """
    series = results if isinstance(results, dict) else {"": results}
    header = "shots" + "".join(f"  {name + ' ' if name else ''}accuracy [95% interval]  trial std"
                               for name in series)
    lines = [header]
    for row in zip(*series.values()):
        cells = [f"{row[0].shots:>5}"]
        for r in row:
            width = len(next(iter(series)) or "") + 1 if len(series) > 1 else 0
            cells.append(f"  {'':>{width}}{r.accuracy:8.3f} [{r.interval[0]:.3f}, {r.interval[1]:.3f}]"
                         f"  {np.std(r.trial_accuracies):9.3f}")
        lines.append("".join(cells))
    if chance is not None:
        lines.append(f"chance: {chance:.3f}")
    # Column groups of one `evaluate` call (plain and calibrated) score the same prompts: count them once.
    truncated = max(sum(r.truncated for r in rows) for rows in series.values())
    if truncated:
        lines.append(f"{truncated} prompts were cut on the left to fit the context")
    return "\n".join(lines)


class _Scorer:
    """Tokenizes, fits prompts to the context, and runs the model on batches of sequences."""

    def __init__(self, model, tokenizer, batch_size):
        self.model, self.tokenizer, self.batch_size = model, tokenizer, batch_size
        self.max_length = _context_length(model)
        self.answer_ids = {}
        self._token_log_probs = tf.function(self._token_log_probs_graph, reduce_retracing=True)
        self._last_log_probs = tf.function(self._last_log_probs_graph, reduce_retracing=True)

    def encode(self, texts):
        ragged = self.tokenizer(tf.constant(list(texts)))
        return [np.asarray(ids, dtype=np.int32) for ids in ragged.to_list()]

    def fit(self, prompt_ids, room):
        """The prompt without its leftmost tokens when it and `room` more tokens exceed the context."""
        if self.max_length is None or prompt_ids.size + room <= self.max_length:
            return prompt_ids, False
        if room >= self.max_length:
            raise ValueError(f"an answer of {room} tokens does not fit the model's context of "
                             f"{self.max_length} tokens.")
        return prompt_ids[prompt_ids.size + room - self.max_length:], True

    def continuation_log_likelihoods(self, prompts, continuations):
        """Sum of log p(continuation tokens | prompt) for each (prompt ids, continuation ids) pair."""
        totals = np.zeros(len(prompts))
        rows = [np.concatenate([p, c]) for p, c in zip(prompts, continuations)]
        for start, ids in self._batches(rows):
            log_probs = self._token_log_probs(tf.constant(ids)).numpy()
            for i in range(ids.shape[0]):
                p, c = prompts[start + i].size, continuations[start + i].size
                # log_probs[:, t] is log p(token t + 1 | tokens <= t).
                totals[start + i] = log_probs[i, p - 1:p + c - 1].sum()
        return totals

    def next_token_log_probs(self, prompts):
        """`(len(prompts), vocab)` log p(next token | prompt): every one-token label from one pass per prompt."""
        out = []
        for start, ids in self._batches(prompts):
            lengths = [p.size for p in prompts[start:start + ids.shape[0]]]
            out.append(self._last_log_probs(tf.constant(ids), tf.constant(lengths, tf.int32)).numpy())
        return np.concatenate(out)

    def _batches(self, rows):
        """(offset, right-padded `(batch, longest)` ids); causal attention never looks at the padding."""
        for start in range(0, len(rows), self.batch_size):
            batch = rows[start:start + self.batch_size]
            ids = np.zeros((len(batch), max(r.size for r in batch)), dtype=np.int32)
            for i, row in enumerate(batch):
                ids[i, :row.size] = row
            yield start, ids

    def _logits(self, ids):
        with warnings.catch_warnings():
            # A one-token prompt (0 shots) softmaxes attention over one key: correct, not a mistake.
            warnings.filterwarnings("ignore", message="You are using a softmax over axis")
            return self.model(ids, training=False)

    def _token_log_probs_graph(self, ids):
        logits = tf.cast(self._logits(ids), tf.float32)
        log_probs = tf.nn.log_softmax(logits[:, :-1])
        return tf.gather(log_probs, ids[:, 1:], axis=2, batch_dims=2)

    def _last_log_probs_graph(self, ids, lengths):
        logits = tf.gather(self._logits(ids), lengths - 1, axis=1, batch_dims=1)
        return tf.nn.log_softmax(tf.cast(logits, tf.float32))


def _choose(scorer, jobs, modes):
    """({mode: correct flags}, truncated prompts) for constrained choice; `jobs` = [(task, demos, queries)].

    All jobs' sequences are scored together; modes "plain" and "calibrated"
    share the forward passes. When every label is one token, one pass over
    the prompt scores them all; otherwise each prompt-and-label sequence has a row.
    """
    calibrate = "calibrated" in modes
    one_token, pairs, blocks = [], [], []
    for task, demos, queries in jobs:
        prompts = [_prompt(task, demos, x) for x, _ in queries]
        if calibrate:
            # A content-free prompt with no tokens ("" at 0 shots) has nothing to condition on: skipped.
            content_free = [_prompt(task, demos, _content_free(task, text)) for text in CONTENT_FREE_INPUTS]
            prompts += [p for p, ids in zip(content_free, scorer.encode(content_free)) if ids.size]
        label_ids = [_continuation_ids(scorer, task, label) for label in task.labels]
        encoded = scorer.encode(prompts)
        empty = [p for p, ids in zip(prompts, encoded) if not ids.size]
        if empty:
            raise ValueError(f"task {task.name!r}: the prompt {empty[0]!r} has no tokens; the first label token "
                             "needs a context (add instructions or template text before the output).")
        fitted = [scorer.fit(ids, max(c.size for c in label_ids)) for ids in encoded]
        single = all(c.size == 1 for c in label_ids)
        rows = one_token if single else pairs
        blocks.append((task, queries, single, len(rows), len(prompts), label_ids,
                       [cut for _, cut in fitted[:len(queries)]]))
        rows += [p for p, _ in fitted] if single else [(p, c) for p, _ in fitted for c in label_ids]
    next_token = scorer.next_token_log_probs(one_token) if one_token else None
    totals = scorer.continuation_log_likelihoods(*zip(*pairs)) if pairs else None
    correct, truncated = {m: [] for m in modes}, 0
    for task, queries, single, offset, num_prompts, label_ids, cuts in blocks:
        if single:
            block = next_token[offset:offset + num_prompts][:, [int(c[0]) for c in label_ids]]
        else:
            block = totals[offset:offset + num_prompts * len(label_ids)].reshape(num_prompts, len(label_ids))
        probabilities = np.exp(block - block.max(axis=1, keepdims=True))
        probabilities /= probabilities.sum(axis=1, keepdims=True)  # normalised over the labels
        scored = {"plain": probabilities[:len(queries)]}
        if calibrate:
            scored["calibrated"] = scored["plain"] / probabilities[len(queries):].mean(axis=0)
        for mode in modes:
            correct[mode] += [task.labels[c] == y for c, (_, y) in zip(scored[mode].argmax(axis=1), queries)]
        truncated += sum(cuts)
    return correct, truncated


def _generate(scorer, jobs, max_new_tokens):
    """(correct flags, truncated prompts) for exact match of greedy continuations; `jobs` as for `_choose`."""
    from kerazoo import generation

    if max_new_tokens is None:
        outputs = [y for task, _, _ in jobs for _, y in task.queries + list(task.demonstrations or ())]
        separators = [task.separator for task, _, _ in jobs]
        max_new_tokens = (max(ids.size for ids in scorer.encode(outputs))
                          + max(ids.size for ids in scorer.encode(separators)))
    rows = [(task, x, y) for task, demos, queries in jobs for x, y in queries]
    prompts = [_prompt(task, demos, x) for task, demos, queries in jobs for x, _ in queries]
    fitted = [scorer.fit(ids, max_new_tokens) for ids in scorer.encode(prompts)]
    correct = []
    for start in range(0, len(fitted), scorer.batch_size):
        batch = [p for p, _ in fitted[start:start + scorer.batch_size]]
        ids = generation.generate(scorer.model, batch, max_new_tokens)
        for i, prompt in enumerate(batch):
            task, _, y = rows[start + i]
            new = ids[i, prompt.size:prompt.size + max_new_tokens]
            text = scorer.tokenizer.detokenize(new[None, :]).numpy()[0].decode("utf-8", "replace")
            answer = text.split(task.separator)[0] if task.separator else text
            correct.append(answer.strip() == y.strip())
    return {"plain": correct}, sum(cut for _, cut in fitted)


def _continuation_ids(scorer, task, output):
    """Token ids of an answer: the label and any template text after `{output}` (it marks the answer's end)."""
    text = output + _unescape(task.template.split("{output}")[1])
    if text not in scorer.answer_ids:  # tasks of one family share their labels: tokenize each once
        scorer.answer_ids[text] = scorer.encode([text])[0]
    ids = scorer.answer_ids[text]
    if ids.size == 0:
        raise ValueError(f"task {task.name!r}: the label {output!r} has no tokens.")
    return ids


def _prompt(task, demos, query):
    return few_shot_prompt(demos, query, task.template, task.separator, task.instructions)


def _render(template, value, output):
    fields = dict(value) if isinstance(value, dict) else {"input": value}
    if output is None:
        template = template.split("{output}")[0]
    else:
        fields["output"] = output
    try:
        return template.format_map(fields)
    except (KeyError, IndexError, ValueError) as error:
        raise ValueError(f"template {template!r} does not fit the example {value!r}: {error!r}.") from None


def _unescape(text):
    return text.replace("{{", "{").replace("}}", "}")


def _content_free(task, text):
    example = (task.demonstrations or task.queries)[0][0]
    return {key: text for key in example} if isinstance(example, dict) else text


def _draw(task, indices, k, rng):
    """A trial's demonstrations (in random order) and queries; a query is never among its demonstrations."""
    queries = [task.queries[i] for i in indices]
    if task.demonstrations is not None:
        pool = task.demonstrations
        if k > len(pool):
            raise ValueError(f"task {task.name!r} has {len(pool)} demonstrations; {k} shots asked for.")
        return [pool[i] for i in rng.choice(len(pool), k, replace=False)], queries
    if k >= len(task.queries):
        raise ValueError(f"task {task.name!r} has {len(task.queries)} examples: too few for {k} "
                         "demonstrations and at least one query.")
    demo_indices = rng.choice(len(task.queries), k, replace=False).tolist()
    queries = [task.queries[i] for i in indices if i not in set(demo_indices)]
    return [task.queries[i] for i in demo_indices], queries


def _subsample(size, max_queries, rng):
    if max_queries is None or max_queries >= size:
        return np.arange(size)
    return np.sort(rng.choice(size, max_queries, replace=False))


def _context_length(model):
    from kerazoo.layers import TokenAndPositionEmbedding

    lengths = [layer.max_length for layer in model.layers if isinstance(layer, TokenAndPositionEmbedding)]
    return min(lengths) if lengths else None


def _check_arguments(tasks, shots, trials, method, calibrate, max_queries):
    if not tasks or not all(isinstance(t, FewShotTask) for t in tasks):
        raise ValueError("`task` must be a FewShotTask or a non-empty list of them.")
    if method not in METHODS:
        raise ValueError(f"`method` must be one of {METHODS}; received {method!r}.")
    if calibrate not in (False, True, "both"):
        raise ValueError(f"`calibrate` must be False, True or 'both'; received {calibrate!r}.")
    if calibrate and method != "choice":
        raise ValueError("calibrate=True needs method='choice' (it rescales label probabilities).")
    for t in tasks:
        if method == "choice" and not t.labels:
            raise ValueError(f"task {t.name!r} has no labels: use method='generate' or give labels.")
        if method == "choice":
            unknown = sorted({y for _, y in t.queries} - set(t.labels))
            if unknown:
                raise ValueError(f"task {t.name!r}: query outputs {unknown[:5]} are not among its labels.")
    if not shots or any(not isinstance(k, (int, np.integer)) or k < 0 for k in shots):
        raise ValueError(f"`shots` must be non-negative integers; received {shots!r}.")
    if not isinstance(trials, int) or trials < 1:
        raise ValueError(f"`trials` must be a positive integer; received {trials!r}.")
    if max_queries is not None and (not isinstance(max_queries, int) or max_queries < 1):
        raise ValueError(f"`max_queries` must be a positive integer or None; received {max_queries!r}.")
