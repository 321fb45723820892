"""word2vec: skip-gram with negative sampling (Mikolov et al., 2013), and nearest neighbours of its vectors."""

import keras
import numpy as np
import tensorflow as tf


def word2vec(vocab_size, embedding_dim=100, name="word2vec"):
    """Builds a skip-gram negative-sampling model (a `SkipGram`).

    Every word has two vectors: a target embedding (the word vector one keeps,
    layer "target_embedding") and a context embedding. The score of a (target,
    candidate) pair is their dot product; training pushes sigmoid(score) to 1
    for the true context and to 0 for the sampled negatives (binary
    cross-entropy on logits, e.g. on `data.skipgram_dataset`). The context
    table starts at zero and the target table uniform in ±0.5/embedding_dim,
    as in word2vec.c. Compiled with plain `keras.optimizers.SGD` it trains
    with word2vec's own sparse update (see `SkipGram`).

    Args:
        vocab_size: number of words.
        embedding_dim: vector size.
        name: model name.

    Returns:
        A `SkipGram` model from `[targets (batch,), candidates (batch, 1 + negatives)]`
        int32 ids to `(batch, 1 + negatives)` float32 logits.

    Example:

    >>> model = word2vec(1000, 16)
    >>> tuple(model([keras.ops.ones((4,), "int32"), keras.ops.ones((4, 6), "int32")]).shape)
    (4, 6)
    """
    return SkipGram(vocab_size, embedding_dim, name=name)


@keras.saving.register_keras_serializable(package="kerazoo")
class SkipGram(keras.Model):
    """word2vec's skip-gram with negative sampling, trained with sparse SGD updates when compiled with SGD.

    A functional model (built by `word2vec`). Compiled with
    `keras.optimizers.SGD` without momentum, its `train_step` is word2vec.c's
    update: for each (target, candidate) pair, with `g = sigmoid(t·c) - label`,
    `t -= lr * g * c` and `c -= lr * g * t` (summed over the batch, not
    averaged: a batch is many word2vec steps at once). Only the rows a batch
    touches are read and written (gathers and scatters), so a step costs
    O(batch * candidates * dim), not O(vocabulary * dim) as a dense gradient and
    a dense optimizer update would. The learning rate is the optimizer's
    (a schedule decays it per step, as word2vec's linear decay); the reported
    loss is the compiled loss (mean binary cross-entropy). With any other
    optimizer, or under a `tf.distribute` strategy with several replicas (whose
    gradients Keras all-reduces), the usual Keras `train_step` is used; it
    follows the mean loss, so an SGD rate there moves each pair about
    batch × candidates times less than word2vec's per-pair rate here.

    Args:
        vocab_size: number of words.
        embedding_dim: vector size.
        **kwargs: base `Model` arguments (`name`).
    """

    def __init__(self, vocab_size, embedding_dim=100, **kwargs):
        for arg, value in (("vocab_size", vocab_size), ("embedding_dim", embedding_dim)):
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
        self.vocab_size, self.embedding_dim = vocab_size, embedding_dim

    def get_config(self):
        return {"vocab_size": self.vocab_size, "embedding_dim": self.embedding_dim, "name": self.name}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def train_step(self, data):
        optimizer = self.optimizer
        if (type(optimizer) is not keras.optimizers.SGD or optimizer.momentum
                or tf.distribute.get_strategy().num_replicas_in_sync > 1):  # replicas: Keras all-reduces
            return super().train_step(data)
        (targets, candidates), labels, _ = keras.utils.unpack_x_y_sample_weight(data)
        target_table = self.get_layer("target_embedding").embeddings.value
        context_table = self.get_layer("context_embedding").embeddings.value
        target_vectors = tf.gather(target_table, targets)          # (batch, dim)
        context_vectors = tf.gather(context_table, candidates)     # (batch, candidates, dim)
        logits = tf.einsum("bd,bkd->bk", target_vectors, context_vectors)
        rate = tf.cast(optimizer.learning_rate, logits.dtype)
        error = rate * (tf.sigmoid(logits) - tf.cast(labels, logits.dtype))  # lr * d loss / d logit
        # Both updates use the vectors from before the step, as a mini-batch step does.
        target_table.scatter_sub(tf.IndexedSlices(tf.einsum("bk,bkd->bd", error, context_vectors), targets))
        context_table.scatter_sub(tf.IndexedSlices(
            tf.reshape(error[:, :, None] * target_vectors[:, None, :], (-1, self.embedding_dim)),
            tf.reshape(candidates, (-1,))))
        optimizer.iterations.assign_add(1)
        loss = self.compute_loss(x=(targets, candidates), y=labels, y_pred=logits)
        self._loss_tracker.update_state(loss, sample_weight=tf.shape(targets)[0])  # as Keras's own step
        return self.compute_metrics((targets, candidates), labels, logits, sample_weight=None)


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
