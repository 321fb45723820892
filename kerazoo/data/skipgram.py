"""Skip-gram training pairs for word2vec: vocabulary, sub-sampling, windows and negatives, as a `tf.data` pipeline.

Each epoch draws afresh, as word2vec and gensim do: frequent words are
dropped with the sub-sampling probability, each kept word gets a window
width uniform in [1, window], every (word, neighbour) pair inside it is a
positive example, and `num_negatives` words drawn from the unigram
distribution raised to 0.75 are its negatives. The pairs are vectorised numpy
over the whole corpus (one array op per window offset), not a Python loop
over words; batches and their negatives are cut and drawn in TensorFlow.
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


def skipgram_pairs(ids, sentence_of, window, rng, keep=None):
    """(target, context) pairs of one epoch.

    Args:
        ids: int32 corpus ids (`encode_words`).
        sentence_of: the sentence number of each id; windows never cross sentences.
        window: the largest distance between a target and its context.
        rng: a `numpy.random.Generator`.
        keep: optional `keep_probabilities`; each occurrence is kept with its
            word's probability before windows are formed.

    Returns:
        `(targets, contexts)`: int32 arrays.
    """
    if keep is not None:
        kept = rng.random(len(ids)) < keep[ids]
        ids, sentence_of = ids[kept], sentence_of[kept]
    # word2vec's "reduced window": each target's width is uniform in [1, window].
    width = rng.integers(1, window + 1, size=len(ids))
    targets, contexts = [], []
    for offset in range(1, window + 1):
        same = (sentence_of[offset:] == sentence_of[:-offset]) if offset < len(ids) else np.zeros(0, bool)
        left, right = np.arange(len(ids) - offset), np.arange(offset, len(ids))
        forward = same & (width[left] >= offset)    # target left, context `offset` to its right
        backward = same & (width[right] >= offset)  # target right, context `offset` to its left
        targets += [ids[left[forward]], ids[right[backward]]]
        contexts += [ids[right[forward]], ids[left[backward]]]
    return np.concatenate(targets).astype(np.int32), np.concatenate(contexts).astype(np.int32)


def skipgram_dataset(ids, sentence_of, counts, window=5, num_negatives=5, sample=1e-3, batch_size=4096,
                     seed=0):
    """A `tf.data.Dataset` of skip-gram batches, drawn afresh every epoch.

    Each element is `((targets (batch,), candidates (batch, 1 + num_negatives)),
    labels (batch, 1 + num_negatives))`: the first candidate is the true
    context (label 1), the others negatives (label 0) from
    `negative_distribution(counts)`. Per epoch, the pairs are made by
    `skipgram_pairs` (numpy, vectorised over the corpus) and shuffled; the
    batches are slices of those arrays, and each batch's negatives are drawn
    in TensorFlow (a stateless uniform draw seeded by epoch and batch, then a
    search of the cumulative distribution), so tf.data's threads do the
    per-batch work, not Python.

    Args:
        ids, sentence_of: from `encode_words`.
        counts: word counts (`build_vocabulary`).
        window, num_negatives, sample: word2vec's settings.
        batch_size: pairs per batch (the epoch's last batch may be smaller).
        seed: the first epoch's seed; epoch k uses seed + k.

    Returns:
        The dataset (iterate it once per epoch).
    """
    keep = keep_probabilities(counts, sample)
    cumulative = tf.constant(np.cumsum(negative_distribution(counts)))
    labels = tf.constant(np.eye(1, 1 + num_negatives, dtype=np.float32).repeat(batch_size, axis=0))
    epoch = [seed]
    # The next epoch's pairs are drawn on a background thread while this one trains (numpy
    # releases the GIL in its array loops), so an epoch does not start by waiting for them.
    background, drawn = concurrent.futures.ThreadPoolExecutor(1), {}

    def draw(epoch_seed):
        rng = np.random.default_rng(epoch_seed)
        targets, contexts = skipgram_pairs(ids, sentence_of, window, rng, keep)
        order = rng.permutation(len(targets))
        return epoch_seed, targets[order], contexts[order]

    def pairs():
        current = epoch[0]
        epoch[0] += 1
        pending = drawn.pop(current, None) or background.submit(draw, current)
        drawn[current + 1] = background.submit(draw, current + 1)
        yield pending.result()

    def batch(epoch_seed, targets, contexts, start):
        target, context = targets[start:start + batch_size], contexts[start:start + batch_size]
        size = tf.shape(target)[0]
        uniform = tf.random.stateless_uniform([size * num_negatives], tf.stack([epoch_seed, start]),
                                              dtype=tf.float64) * cumulative[-1]
        negatives = tf.minimum(tf.searchsorted(cumulative, uniform), len(counts) - 1)
        negatives = tf.reshape(tf.cast(negatives, tf.int32), (size, num_negatives))
        return (target, tf.concat([context[:, None], negatives], axis=1)), labels[:size]

    def batches(epoch_seed, targets, contexts):
        starts = tf.data.Dataset.range(0, tf.size(targets, out_type=tf.int64), batch_size)
        return starts.map(lambda start: batch(epoch_seed, targets, contexts, start))

    signature = (tf.TensorSpec([], tf.int64), tf.TensorSpec([None], tf.int32), tf.TensorSpec([None], tf.int32))
    return prefetched(tf.data.Dataset.from_generator(pairs, output_signature=signature).flat_map(batches), 4)
