"""Named labeled-text datasets: the embedded sample, and opt-in downloads through `keras.datasets`."""

import os
import socket

from kerazoo.data.labeled_text import LabeledText
from kerazoo.data.sample import sample_sentiment

DATASETS = ("sample", "imdb")
_IMDB_HOST = ("storage.googleapis.com", 443)


def load_dataset(name):
    """Loads a named dataset as one `LabeledText` (split it with `.split()`).

    Args:
        name: "sample" (embedded, offline) or "imdb" (50,000 movie reviews
            through `keras.datasets.imdb`; downloads about 80 MB on first use
            and fails fast, with a clear message, when offline).

    Returns:
        A `LabeledText`.
    """
    if name == "sample":
        return sample_sentiment()
    if name == "imdb":
        return _imdb()
    raise ValueError(f"unknown dataset {name!r}; known datasets are {list(DATASETS)} "
                     "(or pass a file with --data PATH).")


def decode_imdb(sequences, word_index):
    """Turns `keras.datasets.imdb` id sequences back into text.

    Ids are shifted by 3 in that dataset: 0 padding, 1 start, 2 out-of-vocabulary.

    Args:
        sequences: lists of ids.
        word_index: `keras.datasets.imdb.get_word_index()`.

    Returns:
        A list of strings (unknown ids are dropped).
    """
    words = {index + 3: word for word, index in word_index.items()}
    return [" ".join(words[i] for i in sequence if i in words) for sequence in sequences]


def _imdb():
    import keras
    import numpy as np

    cached = os.path.join(os.path.expanduser(os.environ.get("KERAS_HOME", "~/.keras")), "datasets", "imdb.npz")
    if not os.path.exists(cached) and not _online():
        raise ConnectionError("the imdb dataset must be downloaded (about 80 MB) and this machine cannot reach "
                              f"{_IMDB_HOST[0]}; use --dataset sample (embedded) or --data PATH instead.")
    (x_train, y_train), (x_test, y_test) = keras.datasets.imdb.load_data()
    texts = decode_imdb(list(x_train) + list(x_test), keras.datasets.imdb.get_word_index())
    labels = np.concatenate([y_train, y_test]).astype(np.int64)
    return LabeledText(texts, labels, ("negative", "positive"), 0, "imdb (keras.datasets)")


def _online(timeout=3.0):
    try:
        socket.create_connection(_IMDB_HOST, timeout=timeout).close()
        return True
    except OSError:
        return False
