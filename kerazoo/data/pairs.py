"""Sentence pairs for translation: tab-separated files → encoder/decoder id arrays → `tf.data`."""

import os

import numpy as np
import tensorflow as tf

from kerazoo.data.corpus import prefetched


def read_pairs(path, source_column=0, target_column=1, encoding="utf-8"):
    """Reads (source, target) sentence pairs from a tab-separated file without a header.

    The format of the Tatoeba/Anki exports (`spa.txt`: `English<TAB>Spanish`,
    sometimes a third attribution column). Blank lines are skipped.

    Args:
        path: the file.
        source_column, target_column: 0-based column indices.
        encoding: text encoding.

    Returns:
        `(sources, targets)`: two lists of str.

    Raises:
        FileNotFoundError: no such file.
        ValueError: a line has too few columns, an empty source or target,
            or undecodable bytes (the message names the line); no pairs at all.
    """
    for arg, value in (("source_column", source_column), ("target_column", target_column)):
        if not isinstance(value, int) or value < 0:
            raise ValueError(f"`{arg}` must be a column index >= 0; received {arg}={value!r}.")
    if source_column == target_column:
        raise ValueError(f"`source_column` and `target_column` are both {source_column}.")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"pairs file not found: {str(path)!r}")
    sources, targets = [], []
    needed = max(source_column, target_column) + 1
    with open(path, "rb") as f:
        for number, raw in enumerate(f, start=1):
            try:
                line = raw.decode(encoding).rstrip("\r\n")
            except UnicodeDecodeError as error:
                raise ValueError(f"{str(path)!r} line {number}: bytes that are not valid {encoding} "
                                 f"({error.reason} at byte {error.start}).") from None
            if not line.strip():
                continue
            fields = line.split("\t")
            if len(fields) < needed:
                raise ValueError(f"{str(path)!r} line {number}: {len(fields)} tab-separated field(s), but "
                                 f"column {needed - 1} is needed (source {source_column}, target "
                                 f"{target_column}).")
            source, target = fields[source_column].strip(), fields[target_column].strip()
            if not source or not target:
                raise ValueError(f"{str(path)!r} line {number}: empty {'source' if not source else 'target'}.")
            sources.append(source)
            targets.append(target)
    if not sources:
        raise ValueError(f"{str(path)!r} holds no sentence pairs.")
    return sources, targets


def encode_pairs(sources, targets, source_tokenizer, target_tokenizer, max_length, start_id, end_id):
    """Token ids for teacher-forced training, padded with 0 to `max_length`.

    Sources keep their first `max_length` tokens; targets their first
    `max_length - 1`, so that `[start] + target` (decoder input) and
    `target + [end]` (decoder output) both fit.

    Args:
        sources, targets: lists of str of equal length.
        source_tokenizer, target_tokenizer: `kerazoo.text` tokenizers.
        max_length: positions per sequence.
        start_id, end_id: target ids of the start and end markers.

    Returns:
        A dict of int32 `(n, max_length)` arrays: `source_ids`, `target_ids`
        (decoder input) and `labels` (decoder output; 0 = padding).
    """
    if len(sources) != len(targets):
        raise ValueError(f"{len(sources)} sources but {len(targets)} targets.")
    if not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"`max_length` must be an integer >= 2; received {max_length!r}.")
    source = source_tokenizer(tf.constant(sources))[:, :max_length]
    target = target_tokenizer(tf.constant(targets))[:, :max_length - 1]
    rows = tf.shape(target.row_lengths())[0]
    start = tf.fill([rows, 1], tf.constant(start_id, target.dtype))
    end = tf.fill([rows, 1], tf.constant(end_id, target.dtype))

    def dense(ids):
        return ids.to_tensor(default_value=0, shape=[None, max_length]).numpy().astype(np.int32)

    return dict(source_ids=dense(source), target_ids=dense(tf.concat([start, target], axis=1)),
                labels=dense(tf.concat([target, end], axis=1)))


def pairs_dataset(encoded, batch_size, shuffle=True, seed=0):
    """A `tf.data.Dataset` of `((source_ids, target_ids), labels, weights)` batches.

    `weights` are 1 for real label tokens and 0 for padding, so the loss and
    `weighted_metrics` (token accuracy) ignore padding.

    Args:
        encoded: the dict from `encode_pairs`.
        batch_size: pairs per batch (the last, smaller batch is kept).
        shuffle: reshuffle every epoch.
        seed: shuffle seed.

    Returns:
        The dataset.
    """
    labels = encoded["labels"]
    data = tf.data.Dataset.from_tensor_slices(
        ((encoded["source_ids"], encoded["target_ids"]), labels, (labels != 0).astype(np.float32)))
    if shuffle:
        data = data.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    return prefetched(data.batch(batch_size))
