"""In-graph subword and character tokenizers (tensorflow-text), learnable from a corpus, saved with their vocabulary."""

import json
import os

import keras
import tensorflow as tf

PAD, UNK = "[PAD]", "[UNK]"
SPECIAL_TOKENS = (PAD, UNK)  # ids 0 and 1 in every vocabulary here
START, END = "[START]", "[END]"  # sequence markers for encoder–decoder targets (`reserved_tokens`)


class _VocabularyTokenizer(keras.layers.Layer):
    """Shared parts: the vocabulary, its checks, saving and loading it."""

    def __init__(self, vocabulary, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        vocabulary = list(vocabulary)
        if vocabulary[:2] != list(SPECIAL_TOKENS):
            raise ValueError(f"{type(self).__name__}: the vocabulary must start with {list(SPECIAL_TOKENS)}; "
                             f"it starts with {vocabulary[:2]}.")
        if len(set(vocabulary)) != len(vocabulary):
            raise ValueError(f"{type(self).__name__}: the vocabulary has duplicate tokens.")
        self.vocabulary = vocabulary
        self.pad_id, self.unk_id = 0, 1
        self.built = True  # no weights: the lookup structures are made in __init__

    @property
    def vocabulary_size(self):
        return len(self.vocabulary)

    def save_vocabulary(self, path):
        """Writes the vocabulary as a JSON list (atomically: a temporary file, then a rename).

        Args:
            path: the file to write.
        """
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump({"tokenizer": type(self).__name__, "vocabulary": self.vocabulary}, f,
                      ensure_ascii=False)
        os.replace(tmp, path)

    @classmethod
    def from_vocabulary_file(cls, path, **kwargs):
        """Rebuilds a tokenizer from a file written by `save_vocabulary`.

        Args:
            path: the vocabulary file.
            **kwargs: other constructor arguments.

        Returns:
            The tokenizer.
        """
        if not os.path.isfile(path):
            raise FileNotFoundError(f"vocabulary file not found: {path!r} (write one with "
                                    f"{cls.__name__}.save_vocabulary or learn one with {cls.__name__}.learn).")
        try:
            with open(path, encoding="utf-8") as f:
                saved = json.load(f)
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise ValueError(f"{path!r} is not a vocabulary file written by save_vocabulary: {error}") from None
        if not isinstance(saved, dict) or saved.get("tokenizer") != cls.__name__:
            found = saved.get("tokenizer") if isinstance(saved, dict) else None
            raise ValueError(f"{path!r} holds a {found or 'non-kerazoo'} vocabulary, not a {cls.__name__} one.")
        return cls(saved["vocabulary"], **kwargs)

    def get_config(self):
        config = super().get_config()
        config.update(vocabulary=self.vocabulary)
        return config


@keras.saving.register_keras_serializable(package="kerazoo")
class CharTokenizer(_VocabularyTokenizer):
    """Maps each Unicode character to an id (characters not in the vocabulary to `[UNK]`).

    Args:
        vocabulary: `["[PAD]", "[UNK]", c1, c2, ...]`; `CharTokenizer.learn`
            builds it from texts.
        **kwargs: base `Layer` arguments.

    Call arguments:
        inputs: string tensor `(batch,)` (or a scalar).

    Returns:
        A `tf.RaggedTensor` of int32 ids, `(batch, None)`.

    Example:

    >>> tokenizer = CharTokenizer.learn(["hello world"])
    >>> tokenizer.detokenize(tokenizer(tf.constant(["hold"]))).numpy()
    array([b'hold'], dtype=object)
    """

    def __init__(self, vocabulary, **kwargs):
        super().__init__(vocabulary, **kwargs)
        for token in self.vocabulary[2:]:
            if len(token) != 1:
                raise ValueError(f"CharTokenizer: vocabulary entries must be single characters; "
                                 f"received {token!r}.")
        keys = tf.constant(self.vocabulary[2:])
        self._table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(keys, tf.range(2, self.vocabulary_size, dtype=tf.int32)),
            default_value=self.unk_id)
        # Decoding table: padding decodes to nothing, [UNK] to U+FFFD.
        self._strings = tf.constant(["", "\ufffd"] + self.vocabulary[2:])

    @classmethod
    def learn(cls, texts, **kwargs):
        """A tokenizer whose vocabulary is every character of `texts`, sorted.

        Args:
            texts: an iterable of strings.
            **kwargs: other constructor arguments.

        Returns:
            A `CharTokenizer`.
        """
        characters = set()
        for text in texts:
            characters.update(text)
        if not characters:
            raise ValueError("CharTokenizer.learn: the texts are empty; there are no characters to learn.")
        return cls(list(SPECIAL_TOKENS) + sorted(characters), **kwargs)

    def call(self, inputs):
        characters = tf.strings.unicode_split(inputs, "UTF-8")
        return tf.ragged.map_flat_values(self._table.lookup, characters)

    def detokenize(self, ids):
        """Ids (dense or ragged, `(batch, None)`) back to strings `(batch,)`."""
        return tf.strings.reduce_join(tf.gather(self._strings, ids), axis=-1)


@keras.saving.register_keras_serializable(package="kerazoo")
class WordPieceTokenizer(_VocabularyTokenizer):
    """WordPiece subwords with tensorflow-text's `FastWordpieceTokenizer`.

    Text is split on whitespace and punctuation, then each word into the
    longest vocabulary pieces (continuations start with `##`); a word that
    cannot be pieced together becomes `[UNK]`. Case is kept. Decoding joins
    the pieces and puts one space between words (and punctuation).

    Args:
        vocabulary: `["[PAD]", "[UNK]", ...]`; `WordPieceTokenizer.learn`
            builds it from texts.
        **kwargs: base `Layer` arguments.

    Call arguments:
        inputs: string tensor `(batch,)`.

    Returns:
        A `tf.RaggedTensor` of int32 ids, `(batch, None)`.

    Example:

    >>> tokenizer = WordPieceTokenizer.learn(["the cat sat", "the cats sat"], vocab_size=40)
    >>> tokenizer.detokenize(tokenizer(tf.constant(["the cats"]))).numpy()
    array([b'the cats'], dtype=object)
    """

    def __init__(self, vocabulary, **kwargs):
        super().__init__(vocabulary, **kwargs)
        import tensorflow_text  # the Python package imports keras: only where a tokenizer is built

        self._tokenizer = tensorflow_text.FastWordpieceTokenizer(
            vocab=self.vocabulary, token_out_type=tf.int32, unknown_token=UNK,
            no_pretokenization=False, support_detokenization=True)

    @classmethod
    def learn(cls, texts, vocab_size=8000, reserved_tokens=(), **kwargs):
        """Learns a WordPiece vocabulary of at most `vocab_size` tokens from `texts`.

        Args:
            texts: an iterable of strings (lines or documents).
            vocab_size: the most tokens, specials included.
            reserved_tokens: more tokens that text never produces, given ids
                2, 3, ... after `[PAD]` and `[UNK]` (e.g. `(START, END)`).
            **kwargs: other constructor arguments.

        Returns:
            A `WordPieceTokenizer`.
        """
        from tensorflow_text.tools.wordpiece_vocab import bert_vocab_from_dataset

        texts = [t for t in texts if t.strip()]
        if not texts:
            raise ValueError("WordPieceTokenizer.learn: the texts are empty; there is nothing to learn from.")
        if not isinstance(vocab_size, int) or vocab_size < 3:
            raise ValueError(f"`vocab_size` must be an integer >= 3; received vocab_size={vocab_size!r}.")
        vocabulary = bert_vocab_from_dataset.bert_vocab_from_dataset(
            tf.data.Dataset.from_tensor_slices(texts).batch(1000), vocab_size=vocab_size,
            reserved_tokens=list(SPECIAL_TOKENS) + list(reserved_tokens), bert_tokenizer_params=dict(lower_case=False))
        return cls(vocabulary, **kwargs)

    def call(self, inputs):
        return self._tokenizer.tokenize(inputs)

    def detokenize(self, ids):
        """Ids (dense or ragged, `(batch, None)`) back to strings `(batch,)`; padding is dropped.

        A sequence that starts inside a word (a generated continuation whose
        first piece is `##at`) decodes without the `##` marker.
        """
        if not isinstance(ids, tf.RaggedTensor):
            ids = tf.RaggedTensor.from_tensor(ids, padding=self.pad_id)
        # Punctuation is split into single characters, so no decoded word starts with "##" otherwise.
        return tf.strings.regex_replace(self._tokenizer.detokenize(ids), "^##", "")


def load_tokenizer(path):
    """Rebuilds whichever kerazoo tokenizer wrote the vocabulary file `path` (`save_vocabulary`).

    Args:
        path: the vocabulary file.

    Returns:
        A `CharTokenizer` or `WordPieceTokenizer`.
    """
    kinds = {cls.__name__: cls for cls in (CharTokenizer, WordPieceTokenizer)}
    try:
        with open(path, encoding="utf-8") as f:
            kind = json.load(f).get("tokenizer")
    except FileNotFoundError:
        raise FileNotFoundError(f"vocabulary file not found: {path!r}") from None
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        kind = None
    if kind not in kinds:
        raise ValueError(f"{path!r} is not a vocabulary file written by a kerazoo tokenizer's save_vocabulary.")
    return kinds[kind].from_vocabulary_file(path)
