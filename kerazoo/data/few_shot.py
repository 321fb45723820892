"""Few-shot tasks: (input, output) examples from JSON Lines files, and synthetic task families for in-context learning.

A synthetic family is a set of *rules* (a random token→token mapping, a
linear function of small integers); each task is one rule. Training
episodes and held-out evaluation tasks come from disjoint sets of rules, so
evaluation measures what a model infers from its context, not what it
memorised.
"""

import dataclasses
import json
import os
import string

import numpy as np


@dataclasses.dataclass(frozen=True)
class FewShotTask:
    """Examples to put in prompts (demonstrations) and examples to answer (queries).

    Attributes:
        name: a short name, for reports.
        queries: list of `(input, output)` pairs to answer; an input is a
            str, or a dict of str fields for multi-field templates.
        demonstrations: list of `(input, output)` pairs prompts draw from, or
            None: then demonstrations are drawn from `queries` and each trial
            removes its demonstrations from its queries.
        labels: the candidate outputs (str) for constrained-choice scoring,
            or None (exact match of generated text only).
        template: `str.format` pattern of one example with an `{output}`
            field and `{input}` (or the input dict's keys) fields.
        separator: text between examples in a prompt.
        instructions: text put before the first example of every prompt.
    """

    name: str
    queries: list
    demonstrations: list = None
    labels: tuple = None
    template: str = "{input}\n{output}"
    separator: str = "\n\n"
    instructions: str = ""


def load_few_shot_task(path, template=None, separator=None, instructions=""):
    """Reads a few-shot task from a JSON Lines file.

    Every line is `{"input": ..., "output": ...}` (the input a string or an
    object of string fields), except an optional line `{"labels": [...]}`
    naming the candidate outputs for constrained-choice scoring. The file's
    examples serve as both queries and demonstrations (`demonstrations=None`).

    Args:
        path: the `.jsonl` file.
        template: example pattern (default `"{input}\\n{output}"`, or for
            object inputs one line `key: {key}` per field, then `{output}`).
        separator: text between examples (default a blank line).
        instructions: text before the examples.

    Returns:
        A `FewShotTask`.

    Example:

    >>> task = load_few_shot_task("capitals.jsonl")  # doctest: +SKIP
    >>> task.queries[0]                               # doctest: +SKIP
    ('France', 'Paris')
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"task file not found: {path!r}")
    examples, labels = [], None
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise ValueError(f"{path!r} line {number}: not valid JSON ({error.msg}).") from None
            if isinstance(record, dict) and set(record) == {"labels"}:
                if labels is not None:
                    raise ValueError(f"{path!r} line {number}: a second labels line.")
                labels = record["labels"]
                if (not isinstance(labels, list) or len(labels) < 2
                        or not all(isinstance(label, str) for label in labels)):
                    raise ValueError(f"{path!r} line {number}: 'labels' must be a list of at least two "
                                     f"strings; received {labels!r}.")
                continue
            if not isinstance(record, dict) or "input" not in record or "output" not in record:
                raise ValueError(f"{path!r} line {number}: expected an object with 'input' and 'output' "
                                 f"(or a 'labels' line); received {line.strip()[:80]!r}.")
            example = record["input"], record["output"]
            _check_example(example, f"{path!r} line {number}")
            examples.append(example)
    if len(examples) < 2:
        raise ValueError(f"{path!r} has {len(examples)} examples; a few-shot task needs at least 2.")
    if labels is not None:
        unknown = sorted({output for _, output in examples} - set(labels))
        if unknown:
            raise ValueError(f"{path!r}: outputs {unknown[:5]} are not in the labels line {labels}.")
    fields = sorted(examples[0][0]) if isinstance(examples[0][0], dict) else None
    if template is None:
        template = ("".join(f"{key}: {{{key}}}\n" for key in fields) if fields else "{input}\n") + "{output}"
    name = os.path.splitext(os.path.basename(path))[0]
    return FewShotTask(name, examples, None, tuple(labels) if labels else None, template,
                       "\n\n" if separator is None else separator, instructions)


class TokenMappingFamily:
    """Random token→token mappings: each rule maps `num_inputs` random input symbols one-to-one onto the outputs.

    A prompt shows pairs `xy` (input symbol, then its output) drawn from one
    rule; only the context tells which output a symbol has. The candidate
    labels are all output symbols, so chance is `1 / len(output_symbols)`.
    By default there are as many outputs as inputs per rule (a random
    permutation of "0123" over 4 of 26 letters): every output appears in
    every episode, so reading the label set from the context gains nothing
    and the only way to beat chance is to find the demonstration with the
    query's input (with more outputs than inputs, training first settles on
    that weaker strategy and induction is much slower to appear).

    Args:
        num_inputs: symbols per rule.
        input_symbols: the symbols inputs are drawn from.
        output_symbols: the symbols outputs are drawn from (at least `num_inputs`).

    Example:

    >>> family = TokenMappingFamily()
    >>> rule = family.sample_rule(np.random.default_rng(0))
    >>> family.labels(rule)
    ('0', '1', '2', '3')
    """

    template, separator = "{input}{output}", " "

    def __init__(self, num_inputs=4, input_symbols=string.ascii_lowercase, output_symbols="0123"):
        if not isinstance(num_inputs, int) or not 2 <= num_inputs <= min(len(input_symbols), len(output_symbols)):
            raise ValueError(f"`num_inputs` must be an integer in [2, {min(len(input_symbols), len(output_symbols))}]"
                             f"; received num_inputs={num_inputs!r}.")
        self.num_inputs = num_inputs
        self.input_symbols, self.output_symbols = tuple(input_symbols), tuple(output_symbols)

    def sample_rule(self, rng):
        """A rule: a sorted tuple of `(input, output)` pairs, inputs and outputs distinct."""
        inputs = rng.choice(self.input_symbols, self.num_inputs, replace=False)
        outputs = rng.choice(self.output_symbols, self.num_inputs, replace=False)
        return tuple(sorted(zip(inputs.tolist(), outputs.tolist())))

    def sample_examples(self, rule, count, rng):
        """`count` pairs of `rule` drawn independently (inputs uniform)."""
        return [rule[i] for i in rng.integers(len(rule), size=count)]

    def labels(self, rule):
        """The candidate outputs of a task: every output symbol."""
        return self.output_symbols


class LinearRuleFamily:
    """Linear functions of small integers: each rule is `y = a*x + b`, shown as `x=yy` with a two-digit `yy`.

    Inputs are 0..9; the outputs are zero-padded to two digits (two tokens
    with a character tokenizer), so no label is a prefix of another. A rule
    is `(a, b)`; chance is 1/10 (ten candidate outputs per rule).

    Args:
        slopes: the values of `a`.
        intercepts: the values of `b`.

    Example:

    >>> LinearRuleFamily().sample_examples((2, 3), 2, np.random.default_rng(0))[0][1]
    '19'
    """

    template, separator = "{input}={output}", " "

    def __init__(self, slopes=(1, 2, 3), intercepts=tuple(range(10))):
        if not slopes or not intercepts or min(slopes) < 1 or min(intercepts) < 0 or \
                9 * max(slopes) + max(intercepts) > 99:
            raise ValueError(f"slopes must be >= 1, intercepts >= 0 and 9*a + b <= 99 (two digits); received "
                             f"slopes={slopes!r}, intercepts={intercepts!r}.")
        self.slopes, self.intercepts = tuple(slopes), tuple(intercepts)

    def sample_rule(self, rng):
        return int(rng.choice(self.slopes)), int(rng.choice(self.intercepts))

    def sample_examples(self, rule, count, rng):
        a, b = rule
        return [(str(x), f"{a * x + b:02d}") for x in rng.integers(10, size=count).tolist()]

    def labels(self, rule):
        a, b = rule
        return tuple(f"{a * x + b:02d}" for x in range(10))


def split_rules(family, num_held_out, seed=0):
    """Draws `num_held_out` distinct rules to hold out from training.

    Args:
        family: a `TokenMappingFamily` or `LinearRuleFamily`.
        num_held_out: rules to hold out.
        seed: random seed.

    Returns:
        A frozenset of rules.
    """
    rng = np.random.default_rng(seed)
    held_out = set()
    for _ in range(1000 * num_held_out):
        if len(held_out) == num_held_out:
            return frozenset(held_out)
        held_out.add(family.sample_rule(rng))
    raise ValueError(f"could not find {num_held_out} distinct rules in this family; hold out fewer.")


def episodes(family, num_episodes, examples_per_episode, exclude=frozenset(), rules=None, seed=0):
    """Episodes of text for training (or validation), each from one rule of the family.

    Args:
        family: a task family.
        num_episodes: episodes to make.
        examples_per_episode: examples in each episode.
        exclude: rules never to use (the held-out rules, for training).
        rules: draw the rules from this list instead of the whole family
            (the held-out rules, for a validation loss).
        seed: random seed.

    Returns:
        `(texts, output_masks, rules)`: `texts[i]` is the episode's examples
        in the family's template, joined by its separator; `output_masks[i]`
        is a bool array, one entry per character, True on output characters;
        `rules[i]` is its rule.

    Example:

    >>> texts, masks, _ = episodes(LinearRuleFamily(), 1, 2, rules=[(1, 5)])
    >>> texts[0], masks[0].astype(int).tolist()
    ('8=13 6=11', [0, 0, 1, 1, 0, 0, 0, 1, 1])
    """
    rng = np.random.default_rng(seed)
    prefix, suffix = family.template.split("{output}")
    texts, masks, used, attempts = [], [], [], 0
    while len(texts) < num_episodes:
        rule = family.sample_rule(rng) if rules is None else rules[rng.integers(len(rules))]
        attempts += 1
        if rule in exclude:
            if attempts > 1000 * num_episodes:
                raise ValueError("nearly every rule drawn is excluded: hold out fewer rules.")
            continue
        pieces, mask = [], []
        for x, y in family.sample_examples(rule, examples_per_episode, rng):
            if pieces:
                pieces.append(family.separator)
                mask.extend([False] * len(family.separator))
            head = prefix.format(input=x)
            pieces += [head, y, suffix]
            mask += [False] * len(head) + [True] * len(y) + [False] * len(suffix)
        texts.append("".join(pieces))
        masks.append(np.array(mask, dtype=bool))
        used.append(rule)
    return texts, masks, used


def copy_episodes(symbols, num_episodes, length, seed=0):
    """A random string written again and again; after the first copy it is predictable only by copying from the context.

    Mixed into training, they make a model learn induction heads (find the
    earlier occurrence of the current token, predict the token that followed
    it) much sooner than mapping episodes alone do; the mapping task then
    uses the same heads.

    Args:
        symbols: the alphabet of the strings.
        num_episodes: episodes to make.
        length: characters per episode (at least 4); the string's length is
            random, between 2 and `length // 2`.
        seed: random seed.

    Returns:
        `(texts, output_masks)` as `episodes` returns them, True after the first copy.

    Example:

    >>> texts, masks = copy_episodes("abcd", 1, 8, seed=1)
    >>> texts[0], masks[0].astype(int).tolist()
    ('cddcddcd', [0, 0, 0, 1, 1, 1, 1, 1])
    """
    if length < 4:
        raise ValueError(f"`length` must be >= 4; received {length!r}.")
    rng = np.random.default_rng(seed)
    symbols = list(symbols)
    texts, masks = [], []
    for _ in range(num_episodes):
        # A random period: the copy is found by content, not by a fixed distance back.
        period = int(rng.integers(2, length // 2 + 1))
        first = "".join(rng.choice(symbols, period).tolist())
        texts.append((first * (length // period + 1))[:length])
        masks.append(np.arange(length) >= period)
    return texts, masks


def held_out_tasks(family, rules, num_demonstrations=32, num_queries=8, seed=0):
    """One `FewShotTask` per held-out rule.

    Args:
        family: a task family.
        rules: the rules (e.g. from `split_rules`), in a stable order.
        num_demonstrations: pairs each task's prompts draw from (independent
            draws from the rule; the query draws are separate).
        num_queries: pairs to answer per task.
        seed: random seed.

    Returns:
        A list of `FewShotTask`s with the family's template, separator and labels.
    """
    rng = np.random.default_rng(seed)
    return [FewShotTask(f"{type(family).__name__} {rule}",
                        family.sample_examples(rule, num_queries, rng),
                        family.sample_examples(rule, num_demonstrations, rng),
                        family.labels(rule), family.template, family.separator)
            for rule in sorted(rules)]


def _check_example(example, where):
    value, output = example
    fields = value.values() if isinstance(value, dict) else [value]
    if not isinstance(output, str) or not all(isinstance(v, str) for v in fields) or not fields:
        raise ValueError(f"{where}: 'input' must be a string or an object of strings and 'output' a string; "
                         f"received {example!r}.")
