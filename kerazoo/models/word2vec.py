"""word2vec: skip-gram with negative sampling (Mikolov et al., 2013), and nearest neighbours of its vectors."""

import math

import keras
import numpy as np
import tensorflow as tf

WINDOW_KEYS = ("tokens", "sentences", "widths", "centres", "negatives")  # a `data.skipgram_dataset` element
BLOCK = 32  # centres per block of the banded product of true contexts (each against 32 + 2 * window words)


def word2vec(vocab_size, embedding_dim=100, num_negatives=5, name="word2vec"):
    """Builds a skip-gram negative-sampling model (a `SkipGram`).

    Every word has two vectors: a target embedding (the word vector one keeps,
    layer "target_embedding") and a context embedding. The score of a (target,
    candidate) pair is their dot product; training pushes sigmoid(score) to 1
    for the true context and to 0 for `num_negatives` sampled negatives
    (binary cross-entropy on logits); it trains on `data.skipgram_dataset`
    batches. The context table starts at zero and the target table uniform
    in ±0.5/embedding_dim, as in word2vec.c. Compiled with plain
    `keras.optimizers.SGD` it trains with word2vec's own sparse update (see
    `SkipGram`).

    Args:
        vocab_size: number of words.
        embedding_dim: vector size.
        num_negatives: negatives per pair in the training loss (word2vec's
            "negative").
        name: model name.

    Returns:
        A `SkipGram` model from `[targets (batch,), candidates (batch, 1 + negatives)]`
        int32 ids to `(batch, 1 + negatives)` float32 logits.

    Example:

    >>> model = word2vec(1000, 16)
    >>> tuple(model([keras.ops.ones((4,), "int32"), keras.ops.ones((4, 6), "int32")]).shape)
    (4, 6)
    """
    return SkipGram(vocab_size, embedding_dim, num_negatives, name=name)


@keras.saving.register_keras_serializable(package="kerazoo")
class SkipGram(keras.Model):
    """word2vec's skip-gram with negative sampling, trained with sparse SGD updates when compiled with SGD.

    A functional model (built by `word2vec`) that trains on the windows of
    `data.skipgram_dataset`. Compiled with `keras.optimizers.SGD` without
    momentum, its `train_step` is word2vec.c's update for every pair of the
    batch: with `g = sigmoid(t·c) - label` for a target vector t and a
    candidate vector c, `t -= lr * g * c` and `c -= lr * g * t` (summed over
    the batch, not averaged: a batch is many word2vec steps at once), where
    the candidates are the true context and the chunk's shared negatives,
    each negative's g weighted `num_negatives / shared negatives`. Only the
    rows a batch touches are read and written (gathers and scatters), and
    the scores are matrix products: the true contexts a banded product of
    each block of centres with its window, the negatives one product per
    chunk. The learning rate is the optimizer's (a schedule decays it per
    step, as word2vec's linear decay); the reported loss is the mean binary
    cross-entropy per score. With any other optimizer, or under a
    `tf.distribute` strategy with several replicas (whose gradients Keras
    all-reduces), the batch's pairs are listed (`window_pairs`) and Keras's
    own `train_step` minimises the compiled loss on them; it follows the
    mean loss, so an SGD rate there moves each pair far less than
    word2vec's per-pair rate here. `evaluate` reports the compiled loss and
    metrics on the listed pairs.

    Args:
        vocab_size: number of words.
        embedding_dim: vector size.
        num_negatives: negatives per pair in the loss.
        **kwargs: base `Model` arguments (`name`).
    """

    def __init__(self, vocab_size, embedding_dim=100, num_negatives=5, **kwargs):
        for arg, value in (("vocab_size", vocab_size), ("embedding_dim", embedding_dim),
                           ("num_negatives", num_negatives)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{arg}` must be a positive integer; received {arg}={value!r}.")
        targets = keras.Input(shape=(), dtype="int32", name="targets")
        candidates = keras.Input(shape=(None,), dtype="int32", name="candidates")
        bound = 0.5 / embedding_dim
        target_vectors = keras.layers.Embedding(
            vocab_size, embedding_dim, embeddings_initializer=keras.initializers.RandomUniform(-bound, bound),
            name="target_embedding")(targets)
        candidate_vectors = keras.layers.Embedding(vocab_size, embedding_dim, embeddings_initializer="zeros",
                                                   name="context_embedding")(candidates)
        logits = keras.layers.Dot(axes=(1, 2), name="dots")([target_vectors, candidate_vectors])
        logits = keras.layers.Activation("linear", dtype="float32", name="logits")(logits)
        super().__init__([targets, candidates], logits, **kwargs)
        self.vocab_size, self.embedding_dim, self.num_negatives = vocab_size, embedding_dim, num_negatives

    def get_config(self):
        return {"vocab_size": self.vocab_size, "embedding_dim": self.embedding_dim,
                "num_negatives": self.num_negatives, "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def compile(self, *args, **kwargs):
        """`keras.Model.compile`, then the compiled loss and metrics built for listed pairs (`window_pairs`).

        Keras builds them from the first training batch, which it would feed
        to the model; a `data.skipgram_dataset` element is windows, not the
        model's (targets, candidates) input, so they are built here instead.
        """
        super().compile(*args, **kwargs)
        scores = 1 + self.num_negatives
        self._symbolic_build(data_batch=((np.zeros((1,), "int32"), np.zeros((1, scores), "int32")),
                                         np.zeros((1, scores), "float32"), np.zeros((1,), "float32")))

    def train_step(self, data):
        """One step on a `data.skipgram_dataset` element (windows with shared negatives).

        With plain SGD on one replica this is the element's word2vec.c sparse
        updates in turn, at the optimizer's current rate (see the class
        docstring); otherwise the element's pairs are listed (`window_pairs`)
        and Keras's own step minimises their weighted loss.
        """
        windows = _windows_of(data)
        optimizer = self.optimizer
        if (type(optimizer) is not keras.optimizers.SGD or optimizer.momentum
                or tf.distribute.get_strategy().num_replicas_in_sync > 1):  # replicas: Keras all-reduces
            return super().train_step(window_pairs(windows, self.num_negatives))
        rate = tf.cast(optimizer.learning_rate, "float32")

        def update(i, loss_sum, pairs_sum):  # the element's updates, in turn
            loss, pairs = self._sparse_window_update({key: value[i] for key, value in windows.items()}, rate)
            return i + 1, loss_sum + loss * pairs, pairs_sum + pairs

        _, loss_sum, pairs = tf.while_loop(lambda i, *_: i < windows["tokens"].shape[0], update,
                                           (tf.constant(0), tf.constant(0.0), tf.constant(0.0)))
        optimizer.iterations.assign_add(1)
        self._loss_tracker.update_state(loss_sum / tf.maximum(pairs, 1.0), sample_weight=pairs)
        return {metric.name: metric.result() for metric in self.metrics}

    def test_step(self, data):
        """The compiled loss and metrics of a `data.skipgram_dataset` element's listed pairs (`window_pairs`)."""
        return super().test_step(window_pairs(_windows_of(data), self.num_negatives))

    def _sparse_window_update(self, windows, rate):
        """word2vec's update for every pair of the windows; returns (mean loss per score, pairs)."""
        tokens, centres, negatives = windows["tokens"], windows["centres"], windows["negatives"]
        blocks, block, span, margin = _window_blocks(tokens.shape[1], centres.shape[1])
        # Centres in blocks; each block's inputs are its centres and `margin` words either side.
        rows = np.arange(blocks)[:, None] * block + np.arange(span)[None]            # (blocks, span)
        centre_rows = margin + np.arange(blocks)[:, None] * block + np.arange(block)[None]  # (blocks, block)
        chunks = tf.shape(tokens)[0]
        inputs = tf.reshape(tf.gather(tokens, rows, axis=1), (-1, span))              # (chunks * blocks, span)
        valid = tf.reshape(tf.cast(_pair_exists(windows, centre_rows[:, :, None], rows[:, None, :]), "float32"),
                           (-1, block, span))                                         # (chunks * blocks, block, span)
        target_table = self.get_layer("target_embedding").embeddings.value
        context_table = self.get_layer("context_embedding").embeddings.value
        dim = self.embedding_dim
        target_vectors = tf.gather(target_table, inputs)                              # (chunks * blocks, span, dim)
        context_vectors = tf.reshape(tf.gather(context_table, centres), (-1, block, dim))
        negative_vectors = tf.gather(context_table, negatives)                        # (chunks, negatives, dim)
        # The true contexts: a banded product, each block's centres against its inputs.
        scores = tf.matmul(context_vectors, target_vectors, transpose_b=True)         # (chunks * blocks, block, span)
        probabilities = tf.sigmoid(scores)
        error = rate * (probabilities - 1.0) * valid
        # The shared negatives: every input scores them once, weighted by its pairs in this block.
        flat_targets = tf.reshape(target_vectors, (chunks, blocks * span, dim))
        negative_scores = tf.matmul(flat_targets, negative_vectors, transpose_b=True)  # (chunks, blocks * span, negatives)
        weight = tf.reshape(tf.reduce_sum(valid, axis=1), (chunks, blocks * span, 1)) * (
            self.num_negatives / negatives.shape[1])
        negative_probabilities = tf.sigmoid(negative_scores)
        negative_error = rate * weight * negative_probabilities
        # Both tables' updates use the vectors from before this update, as a mini-batch step does.
        target_update = (tf.reshape(tf.matmul(error, context_vectors, transpose_a=True), (chunks, blocks * span, dim))
                         + tf.matmul(negative_error, negative_vectors))
        target_table.scatter_sub(tf.IndexedSlices(tf.reshape(target_update, (-1, dim)), tf.reshape(inputs, (-1,))))
        context_table.scatter_sub(tf.IndexedSlices(
            tf.concat([tf.reshape(tf.matmul(error, target_vectors), (-1, dim)),
                       tf.reshape(tf.matmul(negative_error, flat_targets, transpose_a=True), (-1, dim))], axis=0),
            tf.concat([tf.reshape(centres, (-1,)), tf.reshape(negatives, (-1,))], axis=0)))
        pairs = tf.reduce_sum(valid)
        # Cross-entropy from the probabilities already computed (one log, not softplus's exp and log).
        tiny = np.float32(np.finfo(np.float32).tiny)
        loss = -(tf.reduce_sum(tf.math.log(tf.maximum(probabilities, tiny)) * valid)
                 + tf.reduce_sum(weight * tf.math.log(tf.maximum(1.0 - negative_probabilities, tiny))))
        return loss / tf.maximum(pairs * (1.0 + self.num_negatives), 1.0), pairs


def _windows_of(data):
    """The windows dict of a training or evaluation batch, or a ValueError naming what SkipGram expects."""
    windows, _, _ = keras.utils.unpack_x_y_sample_weight(data)
    if not isinstance(windows, dict) or set(windows) != set(WINDOW_KEYS):
        raise ValueError(f"SkipGram trains on `data.skipgram_dataset` batches: dicts with keys "
                         f"{sorted(WINDOW_KEYS)}; received {type(windows).__name__} "
                         f"{sorted(windows) if isinstance(windows, dict) else ''}".rstrip())
    return windows


def _pair_exists(windows, centres, inputs):
    """Whether the words at chunk positions `inputs` and `centres` (numpy, broadcasting) form a pair.

    The rule of `data.skipgram_pairs`: the input (target) is within its own
    width of the centre (context), not the centre itself, in the same sentence.
    Returns a bool tensor `(chunks, *broadcast shape)`.
    """
    centres, inputs = np.broadcast_arrays(centres, inputs)
    distance = np.abs(inputs - centres)
    return ((tf.gather(windows["widths"], inputs, axis=1) >= distance) & (distance >= 1)
            & (tf.gather(windows["sentences"], inputs, axis=1) == tf.gather(windows["sentences"], centres, axis=1)))


def _window_blocks(chunk_width, centres):
    """How a chunk's centres are cut into blocks for the banded product: (blocks, block, span, margin)."""
    margin = (chunk_width - centres) // 2
    block = math.gcd(centres, BLOCK)
    return centres // block, block, block + 2 * margin, margin


def window_pairs(windows, num_negatives):
    """The pairs of a `data.skipgram_dataset` batch, listed: `((targets, candidates), labels, sample_weight)`.

    One row per (centre, offset) of every chunk (of all the batch's updates
    together), weighted 1 where that pair exists and 0 elsewhere; a row's
    candidates are the centre (the true context, label 1) and
    `num_negatives` of the chunk's shared negatives (label 0), taken in turn
    so that the rows use the pool evenly. It is what `SkipGram.train_step`
    hands to Keras's own step when it cannot use word2vec's sparse update.

    Args:
        windows: a batch (dict) of `data.skipgram_dataset`.
        num_negatives: negatives per pair.

    Returns:
        `((targets (rows,), candidates (rows, 1 + num_negatives)), labels, sample_weight (rows,))`.
    """
    windows = {key: tf.reshape(value, (-1, value.shape[-1])) for key, value in windows.items()}  # all chunks
    tokens, centres, negatives = windows["tokens"], windows["centres"], windows["negatives"]
    length = centres.shape[1]
    margin = (tokens.shape[1] - length) // 2
    offsets = [o for o in range(-margin, margin + 1) if o]
    position = margin + np.arange(length)[:, None] + np.array(offsets)[None]  # (length, offsets)
    valid = _pair_exists(windows, margin + np.arange(length)[:, None], position)  # (chunks, length, offsets)
    rows = length * len(offsets)
    pool = (np.arange(rows)[:, None] * num_negatives + np.arange(num_negatives)[None]) % negatives.shape[1]
    candidates = tf.concat([tf.repeat(tf.reshape(centres, (-1, 1)), len(offsets), axis=0),
                            tf.reshape(tf.gather(negatives, pool, axis=1), (-1, num_negatives))], axis=1)
    labels = tf.one_hot(tf.zeros_like(candidates[:, 0]), 1 + num_negatives)
    targets = tf.reshape(tf.gather(tokens, position, axis=1), (-1,))
    return (targets, candidates), labels, tf.reshape(tf.cast(valid, "float32"), (-1,))


def nearest_neighbours(vectors, queries, k=10, exclude=None):
    """The `k` rows of `vectors` with the highest cosine similarity to each query vector.

    Args:
        vectors: `(vocab, dim)` array.
        queries: `(n, dim)` array.
        k: neighbours per query.
        exclude: optional list (one per query) of row ids never returned
            (e.g. the query words themselves).

    Returns:
        `(ids (n, k), similarities (n, k))`, best first.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    queries = np.asarray(queries, dtype=np.float32)
    queries = queries / np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    ids, similarities = [], []
    for start in range(0, len(queries), 1024):
        scores = queries[start:start + 1024] @ unit.T
        for row, excluded in enumerate((exclude or [()] * len(queries))[start:start + 1024]):
            scores[row, list(excluded)] = -np.inf
        top = np.argpartition(-scores, min(k, scores.shape[1] - 1), axis=1)[:, :k]
        top_scores = np.take_along_axis(scores, top, axis=1)
        order = np.argsort(-top_scores, axis=1)
        ids.append(np.take_along_axis(top, order, axis=1))
        similarities.append(np.take_along_axis(top_scores, order, axis=1))
    return np.concatenate(ids), np.concatenate(similarities)


def analogy_accuracy(vectors, words, questions):
    """Accuracy on "a is to b as c is to d" questions (3CosAdd, as word2vec's compute-accuracy and gensim).

    The answer is the word whose unit vector is closest (cosine) to
    unit(b) - unit(a) + unit(c), excluding a, b and c. Only questions whose
    four words are all in `words` count (case-insensitive).

    Args:
        vectors: `(vocab, dim)` word vectors.
        words: the vocabulary, row order of `vectors`.
        questions: an iterable of `(a, b, c, d)` str tuples.

    Returns:
        `(accuracy, correct, asked, total)`: accuracy over the asked
        (in-vocabulary) questions, and the counts.
    """
    index = {w.lower(): i for i, w in enumerate(words)}
    questions = list(questions)
    asked = [tuple(index[w.lower()] for w in q) for q in questions if all(w.lower() in index for w in q)]
    if not asked:
        return 0.0, 0, 0, len(questions)
    asked = np.array(asked)
    vectors = np.asarray(vectors, dtype=np.float32)
    unit = vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    queries = unit[asked[:, 1]] - unit[asked[:, 0]] + unit[asked[:, 2]]
    predicted, _ = nearest_neighbours(unit, queries, k=1, exclude=asked[:, :3].tolist())
    correct = int(np.sum(predicted[:, 0] == asked[:, 3]))
    return correct / len(asked), correct, len(asked), len(questions)


def read_analogies(path):
    """Questions from a file in the format of word2vec's questions-words.txt.

    Lines starting with ":" name a section and lines starting with "//" are
    comments; every other non-empty line is four words `a b c d`.

    Args:
        path: the file.

    Returns:
        A list of `(a, b, c, d)` tuples.
    """
    questions = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            line = line.strip()
            if not line or line.startswith((":", "//")):
                continue
            fields = line.split()
            if len(fields) != 4:
                raise ValueError(f"{path!r} line {number}: expected four words 'a b c d', found {len(fields)}.")
            questions.append(tuple(fields))
    return questions
