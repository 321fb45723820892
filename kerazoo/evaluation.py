"""Classification metrics from predicted and true labels (accuracy, precision, recall, F1, confusion matrix); typo test sets."""

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class ClassificationReport:
    """Metrics of one evaluation.

    Attributes:
        accuracy: fraction of correct predictions.
        precision, recall, f1: of class 1 for two classes, else macro averages.
        confusion: `(classes, classes)` counts, rows = true label, columns = predicted.
        label_names: class names, index = label id.
    """

    accuracy: float
    precision: float
    recall: float
    f1: float
    confusion: np.ndarray
    label_names: tuple

    def __str__(self):
        width = max(max(len(n) for n in self.label_names), len(str(self.confusion.max()))) + 2
        averaged = "class 1" if len(self.label_names) == 2 else "macro"
        lines = [f"accuracy {self.accuracy:.4f}   precision {self.precision:.4f}   "
                 f"recall {self.recall:.4f}   F1 {self.f1:.4f}  ({averaged})",
                 "confusion matrix (rows: true, columns: predicted)",
                 " " * width + "".join(f"{n:>{width}}" for n in self.label_names)]
        for name, row in zip(self.label_names, self.confusion):
            lines.append(f"{name:<{width}}" + "".join(f"{count:>{width}d}" for count in row))
        return "\n".join(lines)


def classification_report(labels, predictions, label_names=None):
    """Computes a `ClassificationReport`.

    Args:
        labels: true integer labels, shape `(n,)`.
        predictions: predicted integer labels, shape `(n,)`.
        label_names: names of the classes; default "0", "1", ... up to the
            largest label seen.

    Returns:
        A `ClassificationReport`. A precision or recall whose denominator is 0
        counts as 0.

    Example:

    >>> classification_report([1, 0, 1, 1], [1, 0, 0, 1]).accuracy
    0.75
    """
    labels = np.asarray(labels, dtype=np.int64).ravel()
    predictions = np.asarray(predictions, dtype=np.int64).ravel()
    if labels.shape != predictions.shape or labels.size == 0:
        raise ValueError(f"labels and predictions must be non-empty and of equal length; "
                         f"received {labels.size} labels and {predictions.size} predictions.")
    num_classes = len(label_names) if label_names else int(max(labels.max(), predictions.max())) + 1
    label_names = tuple(label_names or (str(i) for i in range(num_classes)))
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels, predictions), 1)
    true_positive = np.diag(confusion).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.nan_to_num(true_positive / confusion.sum(axis=0))
        recall = np.nan_to_num(true_positive / confusion.sum(axis=1))
        f1 = np.nan_to_num(2 * precision * recall / (precision + recall))
    pick = (lambda v: float(v[1])) if num_classes == 2 else (lambda v: float(v.mean()))
    return ClassificationReport(float(true_positive.sum() / labels.size), pick(precision), pick(recall),
                                pick(f1), confusion, label_names)


def add_typos(texts, word_fraction=0.1, seed=0):
    """Copies of `texts` with one random character typo in a fraction of the words: a robustness test set.

    Each word of two or more letters is picked with probability
    `word_fraction` and gets one edit, chosen uniformly: delete a character,
    swap two adjacent characters, replace one with a random lower-case
    letter, or insert one. Whitespace is normalised to single spaces. The
    result depends only on `texts`, `word_fraction` and `seed`.

    Args:
        texts: a list of strings.
        word_fraction: probability that a word gets a typo.
        seed: seed of the random choices.

    Returns:
        A list of strings.

    Example:

    >>> add_typos(["the film was good"], word_fraction=1.0, seed=0) != ["the film was good"]
    True
    """
    if not 0 <= word_fraction <= 1:
        raise ValueError(f"`word_fraction` must be in [0, 1]; received word_fraction={word_fraction!r}.")
    rng = np.random.default_rng(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    out = []
    for text in texts:
        words = text.split()
        for i, word in enumerate(words):
            if len(word) < 2 or rng.random() >= word_fraction:
                continue
            edit, at = rng.integers(4), int(rng.integers(len(word) - 1))
            letter = letters[rng.integers(26)]
            words[i] = (word[:at] + word[at + 1:], word[:at] + word[at + 1] + word[at] + word[at + 2:],
                        word[:at] + letter + word[at + 1:], word[:at] + letter + word[at:])[edit]
        out.append(" ".join(words))
    return out
