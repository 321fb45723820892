"""The embedded sample sentiment corpus: short reviews from a small grammar in which word order matters."""

import functools
import itertools

import numpy as np

from kerazoo.data.labeled_text import LabeledText

SUBJECTS = ("the film", "this movie", "the acting", "the plot", "the soundtrack", "the script", "the ending",
            "the cast", "the direction", "the dialogue", "the story", "the camera work", "this sequel",
            "the pacing", "the humour", "the lead actor")
POSITIVE = ("good", "great", "wonderful", "brilliant", "moving", "funny", "charming", "clever", "gripping",
            "beautiful", "delightful", "superb", "enjoyable", "memorable", "fresh")
NEGATIVE = ("bad", "awful", "boring", "dull", "terrible", "weak", "clumsy", "tedious", "predictable",
            "painful", "forgettable", "lifeless", "silly", "messy", "bland")
INTENSIFIERS = ("", "very ", "really ", "truly ", "quite ")


def _reviews():
    """(template, text, label) triples; label 1 = positive. Negation, contrast and order decide the label."""
    polarity = {**{a: 1 for a in POSITIVE}, **{a: 0 for a in NEGATIVE}}
    for subject, adjective, very in itertools.product(SUBJECTS, POSITIVE + NEGATIVE, INTENSIFIERS):
        label = polarity[adjective]
        yield "plain", f"{subject} was {very}{adjective}", label
        yield "not", f"{subject} was not {very}{adjective}", 1 - label
        yield "did not think", f"i did not think {subject} was {very}{adjective}", 1 - label
        yield "never", f"{subject} was never {adjective}", 1 - label
        if not label:
            yield "not at all", f"{subject} was not {adjective} at all", 1
    for (first, second), (a, b) in itertools.product(itertools.permutations(SUBJECTS, 2),
                                                     itertools.product(POSITIVE[:8] + NEGATIVE[:8], repeat=2)):
        if polarity[a] != polarity[b]:
            # The clause after "but" decides; swapping the adjectives flips the label.
            yield "but", f"{first} was {a}, but {second} was {b}", polarity[b]
            yield "expected", f"i expected {first} to be {a}, but it was {b}", polarity[b]
            yield "not but", f"{first} was not {a} but {b}", polarity[b]
            yield "rather than", f"{first} was {a} rather than {b}", polarity[a]
        else:
            yield "and", f"{first} was {a}, and {second} was {b}", polarity[a]


@functools.lru_cache(maxsize=None)
def _corpus(size, seed):
    """`size` reviews, half of each label, spread evenly over the templates that give that label."""
    groups = {}
    for template, text, label in sorted(set(_reviews())):
        groups.setdefault((label, template), []).append(text)
    rng = np.random.default_rng(seed)
    chosen = []
    for label in (0, 1):
        templates = sorted(t for (l, t) in groups if l == label)
        for i, template in enumerate(templates):
            texts = groups[(label, template)]
            share = size // 2 // len(templates) + (i < size // 2 % len(templates))
            chosen.extend((texts[j], label) for j in rng.choice(len(texts), min(share, len(texts)),
                                                               replace=False))
    order = rng.permutation(len(chosen))
    return [chosen[i][0] for i in order], np.array([chosen[i][1] for i in order], dtype=np.int64)


def sample_sentiment(size=4000, seed=0):
    """The embedded sentiment corpus: `size` distinct short reviews, half positive (label 1).

    The reviews come from a grammar written for this project, with negation
    ("was not dull") and contrast ("was dull, but the ending was moving"), so
    that word order decides many labels: a bag-of-words model cannot reach
    100%, a sequence model can.

    Args:
        size: number of reviews (even).
        seed: which reviews are drawn, and their order.

    Returns:
        A `LabeledText` with label names ("negative", "positive").

    Example:

    >>> data = sample_sentiment()
    >>> len(data), int(data.labels.sum())
    (4000, 2000)
    """
    if not isinstance(size, int) or size < 2 or size % 2:
        raise ValueError(f"`size` must be an even integer >= 2; received size={size!r}.")
    texts, labels = _corpus(size, seed)
    return LabeledText(list(texts), labels.copy(), ("negative", "positive"), 0, "sample (embedded)")
