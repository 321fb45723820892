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


def pairs_dataset(encoded, batch_size, shuffle=True, seed=0, length_buckets=1):
    """A `tf.data.Dataset` of `((source_ids, target_ids), labels, weights)` batches.

    `weights` are 1 for real label tokens and 0 for padding, so the loss and
    `weighted_metrics` (token accuracy) ignore padding.

    With `length_buckets > 1`, pairs are grouped by length (the longer of the
    source and the target) into that many buckets of equal width, and each
    batch is cut to its bucket's length instead of `max_length`. Translation
    pairs are mostly far shorter than the longest, so a step then costs about
    half as much; the model sees one shape per bucket (one XLA compile each).
    The last, partial batch of each bucket is dropped when shuffling (the
    pairs dropped differ every epoch), so batch sizes stay fixed too.

    Args:
        encoded: the dict from `encode_pairs`.
        batch_size: pairs per batch (the last, smaller batch is kept, except as
            said above).
        shuffle: reshuffle every epoch.
        seed: shuffle seed.
        length_buckets: number of length buckets (1: every batch is
            `max_length` long, in the order of `encoded` unless shuffled).

    Returns:
        The dataset.

    Example:

    >>> ids = dict(source_ids=np.array([[5, 0, 0, 0]] * 3 + [[5, 6, 7, 8]], np.int32),
    ...            target_ids=np.array([[1, 0, 0, 0]] * 3 + [[1, 6, 7, 8]], np.int32),
    ...            labels=np.array([[2, 0, 0, 0]] * 3 + [[6, 7, 8, 2]], np.int32))
    >>> sorted(b[1].shape[1] for b in pairs_dataset(ids, 2, shuffle=False, length_buckets=2))
    [2, 2, 4]
    """
    if not isinstance(length_buckets, int) or length_buckets < 1:
        raise ValueError(f"`length_buckets` must be a positive integer; received {length_buckets!r}.")
    labels = encoded["labels"]
    pairs = ((encoded["source_ids"], encoded["target_ids"]), labels, (labels != 0).astype(np.float32))
    if length_buckets == 1:
        data = tf.data.Dataset.from_tensor_slices(pairs)
        if shuffle:
            data = data.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
        return prefetched(data.batch(batch_size))
    max_length = labels.shape[1]
    bounds = np.unique(np.ceil(max_length * np.arange(1, length_buckets + 1) / length_buckets)).astype(np.int64)
    lengths = np.maximum((encoded["source_ids"] != 0).sum(axis=1), (labels != 0).sum(axis=1))
    data = tf.data.Dataset.from_tensor_slices((np.searchsorted(bounds, lengths).astype(np.int64), pairs))
    if shuffle:
        data = data.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    data = data.group_by_window(lambda bucket, _: bucket,
                                lambda _, window: window.batch(batch_size, drop_remainder=shuffle),
                                window_size=batch_size)
    bounds = tf.constant(bounds)

    def cut(bucket, batch):
        (source_ids, target_ids), batch_labels, weights = batch
        length = bounds[bucket[0]]
        return (source_ids[:, :length], target_ids[:, :length]), batch_labels[:, :length], weights[:, :length]

    return prefetched(data.map(cut))
