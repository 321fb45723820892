"""Skip-gram training data for word2vec: vocabulary, sub-sampling, windows and negatives, as a `tf.data` pipeline.

Each epoch draws afresh, as word2vec and gensim do: frequent words are
dropped with the sub-sampling probability, each kept word gets a window
width uniform in [1, window], every (word, neighbour) pair inside it is a
positive example, and words drawn from the unigram distribution raised to
0.75 are negatives. The draws are vectorised numpy over the whole corpus,
not a Python loop over words; the batches hold the pairs as windows of
consecutive words (a pair is two positions of a window, not two listed ids),
and their negatives are drawn in TensorFlow.
"""

import collections
import concurrent.futures
import re

import numpy as np
import tensorflow as tf

from kerazoo.data.corpus import prefetched

_WORD = re.compile(r"[\w']+")


def tokenize_words(lines):
    """Lower-cased word lists: runs of letters, digits, '_' and apostrophes.

    Args:
        lines: an iterable of str (sentences or lines of text).

    Returns:
        A list of lists of str; empty lines give no entry.
    """
    sentences = (_WORD.findall(line.lower()) for line in lines)
    return [s for s in sentences if s]


def build_vocabulary(sentences, min_count=5, max_size=None):
    """Words seen at least `min_count` times, most frequent first.

    Args:
        sentences: lists of words.
        min_count: rarer words are left out.
        max_size: keep at most this many words.

    Returns:
        `(words, counts)`: a list of str and an int64 array of their counts.
    """
    counter = collections.Counter(word for sentence in sentences for word in sentence)
    kept = sorted(((c, w) for w, c in counter.items() if c >= min_count), key=lambda cw: (-cw[0], cw[1]))
    kept = kept[:max_size]
    if not kept:
        raise ValueError(f"no word occurs at least min_count={min_count} times; lower it or use more text.")
    return [w for _, w in kept], np.array([c for c, _ in kept], dtype=np.int64)


def encode_words(sentences, words):
    """The corpus as one int32 id array (out-of-vocabulary words dropped) and each word's sentence number."""
    index = {w: i for i, w in enumerate(words)}
    ids, sentence_of = [], []
    for number, sentence in enumerate(sentences):
        encoded = [index[w] for w in sentence if w in index]
        ids += encoded
        sentence_of += [number] * len(encoded)
    return np.array(ids, dtype=np.int32), np.array(sentence_of, dtype=np.int32)


def keep_probabilities(counts, sample=1e-3):
    """The probability of keeping each occurrence of a word (word2vec's sub-sampling of frequent words).

    With `f` the word's share of the corpus, keep = (sqrt(f / sample) + 1) *
    sample / f, capped at 1 (the formula of word2vec.c and gensim; about
    Mikolov et al.'s 1 - sqrt(sample / f) discard probability for frequent words).

    Args:
        counts: word counts.
        sample: the threshold; 0 turns sub-sampling off.

    Returns:
        float64 array, one probability per word.
    """
    counts = np.asarray(counts, dtype=np.float64)
    if not sample:
        return np.ones_like(counts)
    frequency = counts / counts.sum()
    return np.minimum(1.0, (np.sqrt(frequency / sample) + 1.0) * sample / frequency)


def negative_distribution(counts, power=0.75):
    """The distribution negatives are drawn from: unigram counts ** power, normalised.

    Args:
        counts: word counts.
        power: 0.75 as in word2vec (rare words drawn more often than their share).

    Returns:
        float64 probabilities summing to 1.
    """
    weights = np.asarray(counts, dtype=np.float64) ** power
    return weights / weights.sum()


def draw_epoch(ids, sentence_of, window, rng, keep=None):
    """One epoch's random draws: the sub-sampled corpus and each kept word's window width.

    Args:
        ids: int32 corpus ids (`encode_words`).
        sentence_of: the sentence number of each id.
        window: the largest width.
        rng: a `numpy.random.Generator`.
        keep: optional `keep_probabilities`; each occurrence is kept with its
            word's probability.

    Returns:
        `(ids, sentence_of, widths)` of the kept words; widths are uniform in
        [1, window] (word2vec's "reduced window").
    """
    if keep is not None:
        kept = rng.random(len(ids)) < keep[ids]
        ids, sentence_of = ids[kept], sentence_of[kept]
    return ids, sentence_of, rng.integers(1, window + 1, size=len(ids)).astype(np.int32)


def skipgram_pairs(ids, sentence_of, window, rng, keep=None):
    """(target, context) pairs of one epoch: every context within the target's width, in its sentence.

    These are the pairs `skipgram_dataset` trains on, drawn with the same
    random draws (`draw_epoch`); the dataset holds them as windows instead.

    Args:
        ids: int32 corpus ids (`encode_words`).
        sentence_of: the sentence number of each id; windows never cross sentences.
        window: the largest distance between a target and its context.
        rng: a `numpy.random.Generator`.
        keep: optional `keep_probabilities` (sub-sampling, see `draw_epoch`).

    Returns:
        `(targets, contexts)`: int32 arrays.
    """
    ids, sentence_of, width = draw_epoch(ids, sentence_of, window, rng, keep)
    targets, contexts = [], []
    for offset in range(1, window + 1):
        same = (sentence_of[offset:] == sentence_of[:-offset]) if offset < len(ids) else np.zeros(0, bool)
        left, right = np.arange(len(ids) - offset), np.arange(offset, len(ids))
        forward = same & (width[left] >= offset)    # target left, context `offset` to its right
        backward = same & (width[right] >= offset)  # target right, context `offset` to its left
        targets += [ids[left[forward]], ids[right[backward]]]
        contexts += [ids[right[forward]], ids[left[backward]]]
    return np.concatenate(targets).astype(np.int32), np.concatenate(contexts).astype(np.int32)


def window_chunks(ids, sentence_of, widths, window, chunk_length):
    """The kept words cut into chunks of `chunk_length` consecutive words, each with `window` words either side.

    Chunk c owns words [c * chunk_length, (c + 1) * chunk_length) (its
    "centres") and also holds the `window` words before and after them, so
    every pair whose context is a centre lies in the chunk. Beyond the corpus
    the rows are padding: word 0, sentence -1, width 0 (no pair).

    Args:
        ids, sentence_of, widths: the kept words (`draw_epoch`).
        window: the largest width (the margin on either side).
        chunk_length: centres per chunk.

    Returns:
        `(tokens, sentences, widths)`: int32 arrays of shape
        `(chunks, chunk_length + 2 * window)`.
    """
    chunks = max(1, -(-len(ids) // chunk_length))
    after = chunks * chunk_length - len(ids) + window

    def padded(values, fill):
        return np.concatenate([np.full(window, fill, np.int32), values.astype(np.int32),
                               np.full(after, fill, np.int32)])

    rows = np.arange(chunks)[:, None] * chunk_length + np.arange(chunk_length + 2 * window)[None]
    return padded(ids, 0)[rows], padded(sentence_of, -1)[rows], padded(widths, 0)[rows]


def skipgram_dataset(ids, sentence_of, counts, window=5, sample=1e-3, batch_size=1024, updates_per_step=16,
                     shared_negatives=32, chunk_length=512, seed=0):
    """A `tf.data.Dataset` of skip-gram windows with shared negatives, drawn afresh every epoch.

    Each epoch sub-samples the corpus and draws every kept word's window width
    (`draw_epoch`); a (target, context) pair is a target within its own width
    of the context, in the same sentence: exactly `skipgram_pairs`. The kept
    words are cut into chunks (`window_chunks`) whose order is shuffled. A
    chunk holds every pair whose context is one of its centres, so a batch
    of chunks holds its words' pairs as windows (about `window + 1` pairs per
    word, fewer at sentence ends) without listing them.

    Negatives: every chunk draws `shared_negatives` words from
    `negative_distribution(counts)` (in TensorFlow, a stateless draw seeded by
    epoch and step) that all of its pairs share. `SkipGram` weights each
    by `num_negatives / shared_negatives`: in expectation the loss of
    `num_negatives` negatives per pair, as word2vec's, but the scores are
    matrix products (Ji et al.'s parallel word2vec shares negatives within a
    window in the same way).

    An element is `updates_per_step` consecutive SGD updates of
    `ceil(batch_size / chunk_length)` chunks each: a dict of int32 arrays
    with leading axes `(updates_per_step, chunks)`: "tokens", "sentences" and
    "widths" `(..., chunk_length + 2 * window)` (`window_chunks`), "centres"
    `(..., chunk_length)` (the tokens the chunk owns) and "negatives"
    `(..., shared_negatives)`. Every epoch has the same number of elements
    (its `cardinality()`), enough for the most words sub-sampling keeps
    (mean + 6 standard deviations), filled up with empty chunks (no pairs).
    `SkipGram.train_step` trains on it.

    Args:
        ids, sentence_of: from `encode_words`.
        counts: word counts (`build_vocabulary`).
        window, sample: word2vec's settings.
        batch_size: words (contexts with their windows) per update, rounded
            up to whole chunks.
        updates_per_step: updates per element (one compiled training step
            runs them in turn: fewer, longer steps cost less overhead).
        shared_negatives: negatives drawn per chunk.
        chunk_length: words a chunk owns (at most `batch_size`).
        seed: the first epoch's seed; epoch k uses seed + k.

    Returns:
        The dataset (iterate it once per epoch).

    Example:

    >>> ids, sentence_of = encode_words([["a", "b", "a", "c"]] * 8, ["a", "b", "c"])
    >>> batch = next(iter(skipgram_dataset(ids, sentence_of, [16, 8, 8], window=2, batch_size=8)))
    >>> batch["tokens"].shape.as_list(), batch["negatives"].shape.as_list()
    ([16, 1, 12], [16, 1, 32])
    """
    chunk_length = min(chunk_length, batch_size)
    shape = (updates_per_step, -(-batch_size // chunk_length))  # per element: updates, chunks per update
    keep = keep_probabilities(counts, sample)
    # Every epoch has the same number of elements, so Keras knows an epoch's steps from the start: enough
    # for the words an epoch keeps at most (their mean plus 6 standard deviations: the sub-sampling's
    # count is a sum of independent draws), the rest filled with empty chunks.
    kept = keep[ids]
    most = kept.sum() + 6 * np.sqrt(np.sum(kept * (1 - kept))) + 1
    elements = max(1, -(-int(np.ceil(most / chunk_length)) // (shape[0] * shape[1])))
    cumulative = tf.constant(np.cumsum(negative_distribution(counts)))
    epoch = [seed]
    # The next epoch's windows are drawn on a background thread while this one trains (numpy
    # releases the GIL in its array loops), so an epoch does not start by waiting for them.
    background, drawn = concurrent.futures.ThreadPoolExecutor(1), {}

    def draw(epoch_seed):
        rng = np.random.default_rng(epoch_seed)
        chunks = window_chunks(*draw_epoch(ids, sentence_of, window, rng, keep), window, chunk_length)
        order = rng.permutation(len(chunks[0]))
        empty = elements * shape[0] * shape[1] - len(order)
        if empty < 0:  # about once in a billion epochs
            raise RuntimeError(f"epoch {epoch_seed} kept more words than the {most:.0f} its sub-sampling keeps "
                               f"at most; use another seed")
        return (epoch_seed, *(np.concatenate([part[order], np.full((empty, part.shape[1]), fill, np.int32)])
                              .reshape(-1, *shape, part.shape[1]) for part, fill in zip(chunks, (0, -1, 0))))

    def epochs():
        current = epoch[0]
        epoch[0] += 1
        pending = drawn.pop(current, None) or background.submit(draw, current)
        drawn[current + 1] = background.submit(draw, current + 1)
        yield pending.result()

    def element(epoch_seed, tokens, sentences, widths, step):
        uniform = tf.random.stateless_uniform([*shape, shared_negatives], tf.stack([epoch_seed, step]),
                                              dtype=tf.float64) * cumulative[-1]
        negatives = tf.minimum(tf.searchsorted(cumulative, tf.reshape(uniform, [-1])), len(counts) - 1)
        return {"tokens": tokens[step], "sentences": sentences[step], "widths": widths[step],
                "centres": tokens[step][..., window:window + chunk_length],
                "negatives": tf.reshape(tf.cast(negatives, tf.int32), (*shape, shared_negatives))}

    def epoch_elements(epoch_seed, tokens, sentences, widths):
        steps = tf.data.Dataset.range(tf.shape(tokens, out_type=tf.int64)[0])
        return steps.map(lambda step: element(epoch_seed, tokens, sentences, widths, step))

    part = tf.TensorSpec([None, *shape, chunk_length + 2 * window], tf.int32)
    signature = (tf.TensorSpec([], tf.int64), part, part, part)
    dataset = tf.data.Dataset.from_generator(epochs, output_signature=signature).flat_map(epoch_elements)
    return prefetched(dataset.apply(tf.data.experimental.assert_cardinality(elements)), 4)
