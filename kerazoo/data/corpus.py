"""Language-modelling data: text files → train/validation split → next-token windows as `tf.data`."""

import importlib.resources
import os

import numpy as np
import tensorflow as tf


def sample_corpus():
    """The embedded sample corpus: about 5 KB of English prose written for this project.

    Returns:
        The text, a str.
    """
    return importlib.resources.files("kerazoo.data").joinpath("sample_corpus.txt").read_text("utf-8")


def read_text(paths, encoding="utf-8"):
    """Reads and concatenates text files (joined by a newline).

    Args:
        paths: a path or a list of paths.
        encoding: text encoding of the files.

    Returns:
        The text, a str.

    Raises:
        FileNotFoundError: a file does not exist.
        ValueError: a file cannot be decoded (the message gives the byte
            offset), or all files are empty.
    """
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    if not paths:
        raise ValueError("read_text: no files given.")
    texts = []
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"corpus file not found: {str(path)!r}")
        raw = open(path, "rb").read()
        try:
            texts.append(raw.decode(encoding))
        except UnicodeDecodeError as error:
            raise ValueError(f"{str(path)!r} is not valid {encoding}: undecodable byte at offset "
                             f"{error.start} ({error.reason}).") from None
    text = "\n".join(texts)
    if not text.strip():
        raise ValueError(f"the corpus is empty: {', '.join(map(str, paths))} contain no text.")
    return text


def split_text(text, validation_fraction=0.1):
    """First `1 - validation_fraction` of the characters for training, the rest for validation (as nanoGPT).

    Args:
        text: the corpus.
        validation_fraction: in (0, 1).

    Returns:
        `(train_text, validation_text)`.
    """
    if not 0 < validation_fraction < 1:
        raise ValueError(f"`validation_fraction` must be in (0, 1); received {validation_fraction!r}.")
    cut = int(len(text) * (1 - validation_fraction))
    return text[:cut], text[cut:]


def lm_dataset(token_ids, seq_len, batch_size, shuffle=True, seed=0):
    """Windows of `seq_len + 1` tokens as (inputs, next-token targets) batches.

    Args:
        token_ids: 1-D int array of the whole (tokenized) corpus.
        seq_len: inputs per window; targets are the same window shifted by one.
        batch_size: windows per batch.
        shuffle: True: an endless stream of windows at uniformly random
            offsets (nanoGPT's `get_batch`), for training. False: consecutive
            non-overlapping windows, once, for evaluation.
        seed: seed of the random offsets.

    Returns:
        A `tf.data.Dataset` of `((batch, seq_len), (batch, seq_len))` int32 pairs.

    Example:

    >>> ds = lm_dataset(np.arange(100), seq_len=8, batch_size=4)
    >>> x, y = next(iter(ds))
    >>> bool((x[:, 1:] == y[:, :-1]).numpy().all())
    True
    """
    token_ids = np.asarray(token_ids, dtype=np.int32).ravel()
    if token_ids.size <= seq_len:
        raise ValueError(f"the corpus has {token_ids.size} tokens: too few for windows of "
                         f"seq_len + 1 = {seq_len + 1}.")
    ids = tf.constant(token_ids)
    window = tf.range(seq_len + 1)
    if shuffle:
        starts = tf.data.Dataset.random(seed=seed).map(
            lambda r: tf.cast(r % (token_ids.size - seq_len), tf.int32))
    else:
        starts = tf.data.Dataset.range(0, token_ids.size - seq_len, seq_len).map(
            lambda s: tf.cast(s, tf.int32))

    def windows(batch_starts):
        tokens = tf.gather(ids, batch_starts[:, None] + window[None, :])
        return tokens[:, :-1], tokens[:, 1:]

    return prefetched(starts.batch(batch_size, drop_remainder=shuffle).map(windows))


def prefetched(dataset, buffer_size=2):
    """`dataset` with a fixed prefetch buffer and tf.data's autotuning turned off.

    Use it at the end of every training pipeline. With autotuning on, tearing
    down an iterator joins tf.data's background optimisation thread, whose
    sleep grows to a minute over a long run; `fit` was seen returning up to
    58 s after its last step, blocked there. Training pipelines here are a
    gather or a tokenizer per batch: a fixed buffer of two batches keeps the
    trainer fed without it.

    Args:
        dataset: a `tf.data.Dataset`.
        buffer_size: batches prefetched.

    Returns:
        The dataset, prefetched, with autotuning off.

    Example:

    >>> ds = prefetched(tf.data.Dataset.range(3))
    >>> ds.options().autotune.enabled
    False
    """
    options = tf.data.Options()
    options.autotune.enabled = False
    return dataset.prefetch(buffer_size).with_options(options)
