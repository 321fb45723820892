"""BERT inputs: a special-token WordPiece vocabulary, [CLS] A [SEP] B [SEP] packing, MLM masking, NSP pairs.

Packing and masking are tensorflow-text graph ops, so they run in `tf.data`
pipelines and inside exported SavedModels; NSP pairs are made once, in
Python, from documents separated by blank lines.
"""

import re

import keras
import numpy as np
import tensorflow as tf

from kerazoo.data.corpus import prefetched
from kerazoo.text.tokenizers import SPECIAL_TOKENS, WordPieceTokenizer

CLS, SEP, MASK = "[CLS]", "[SEP]", "[MASK]"
BERT_SPECIAL_TOKENS = (*SPECIAL_TOKENS, CLS, SEP, MASK)  # ids 0..4: [PAD] [UNK] [CLS] [SEP] [MASK]
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(5)
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def learn_bert_vocabulary(texts, vocab_size=8192, lower_case=True):
    """Learns a WordPiece tokenizer whose vocabulary starts with `BERT_SPECIAL_TOKENS`.

    The special tokens cannot come out of text: the tokenizer splits `[CLS]`
    typed in a sentence into `[`, `CLS`, `]`.

    Args:
        texts: an iterable of strings.
        vocab_size: the most tokens, the 5 special ones included.
        lower_case: learn from lower-cased text (pair with
            `BertPreprocessor(lower_case=True)`).

    Returns:
        A `kerazoo.text.WordPieceTokenizer`.

    Example:

    >>> tokenizer = learn_bert_vocabulary(["the cat sat", "the cats sat"], vocab_size=50)
    >>> tokenizer.vocabulary[:5]
    ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']
    """
    texts = (t.lower() for t in texts) if lower_case else texts
    return WordPieceTokenizer.learn(texts, vocab_size=vocab_size, reserved_tokens=(CLS, SEP, MASK))


def check_bert_vocabulary(tokenizer):
    """Raises a ValueError unless `tokenizer`'s vocabulary starts with `BERT_SPECIAL_TOKENS`."""
    if list(tokenizer.vocabulary[:5]) != list(BERT_SPECIAL_TOKENS):
        raise ValueError(f"a BERT vocabulary must start with {list(BERT_SPECIAL_TOKENS)}; this one starts "
                         f"with {list(tokenizer.vocabulary[:5])} (learn one with learn_bert_vocabulary).")


def pack_segments(segments, max_length):
    """Packs one or two segments of token ids as `[CLS] A [SEP]` or `[CLS] A [SEP] B [SEP]`.

    When the pair is too long, the longer segment loses tokens at its end
    first (tensorflow-text's `ShrinkLongestTrimmer`, as BERT's
    `truncate_seq_pair`); then the sequence is padded with `[PAD]` to `max_length`.

    Args:
        segments: a list of one or two `tf.RaggedTensor`s `(batch, None)` of ids.
        max_length: the packed length (at least the number of segments + 2).

    Returns:
        A dict of `(batch, max_length)` int32 tensors: `token_ids`,
        `segment_ids` (0 for `[CLS]`, A and its `[SEP]`; 1 for B and its
        `[SEP]`; 0 on padding) and `padding_mask` (1 on real tokens).

    Example:

    >>> pack_segments([tf.ragged.constant([[7, 8]]), tf.ragged.constant([[9]])], 8)["token_ids"].numpy()
    array([[2, 7, 8, 3, 9, 3, 0, 0]], dtype=int32)
    """
    import tensorflow_text

    if not 1 <= len(segments) <= 2:
        raise ValueError(f"pack_segments takes one or two segments; received {len(segments)}.")
    if not isinstance(max_length, int) or max_length < len(segments) + 2:
        raise ValueError(f"`max_length` must be an integer >= {len(segments) + 2} for {len(segments)} "
                         f"segment(s) (room for [CLS], the [SEP]s and a token); received {max_length!r}.")
    segments = [tf.cast(s, tf.int32) for s in segments]
    budget = max_length - len(segments) - 1
    if len(segments) == 1:
        # ShrinkLongestTrimmer fails to trace a single segment (a while_loop shape error in graph mode).
        trimmed = [segments[0][:, :budget]]
    else:
        trimmed = tensorflow_text.ShrinkLongestTrimmer(budget).trim(segments)
    token_ids, segment_ids = tensorflow_text.combine_segments(
        trimmed, start_of_sequence_id=CLS_ID, end_of_segment_id=SEP_ID)
    token_ids, padding_mask = tensorflow_text.pad_model_inputs(token_ids, max_length, pad_value=PAD_ID)
    segment_ids, _ = tensorflow_text.pad_model_inputs(tf.cast(segment_ids, tf.int32), max_length)
    return {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": tf.cast(padding_mask, tf.int32)}


def mask_tokens(token_ids, vocab_size, max_predictions, selection_rate=0.15, mask_token_rate=0.8,
                random_token_rate=0.1):
    """BERT's masked-LM corruption of packed sequences (tensorflow-text's `mask_language_model`).

    Of the tokens that are not `[PAD]`, `[CLS]` or `[SEP]`, `selection_rate`
    are selected (at most `max_predictions` per sequence); a selected token
    becomes `[MASK]` with probability `mask_token_rate`, a random id with
    `random_token_rate`, and stays unchanged otherwise.

    Args:
        token_ids: `(batch, max_length)` int ids from `pack_segments`.
        vocab_size: random replacements are drawn from `[0, vocab_size)`.
        max_predictions: the most selected tokens per sequence.
        selection_rate, mask_token_rate, random_token_rate: the rates above.

    Returns:
        A dict: `token_ids` (the corrupted ids, `(batch, max_length)`),
        `masked_positions`, `masked_ids` (the original ids there) and
        `masked_weights` (1.0 where a prediction is real, 0.0 on padding),
        each `(batch, max_predictions)`.
    """
    import tensorflow_text

    if not isinstance(max_predictions, int) or max_predictions < 1:
        raise ValueError(f"`max_predictions` must be a positive integer; received {max_predictions!r}.")
    token_ids = tf.cast(token_ids, tf.int32)
    ragged = tf.RaggedTensor.from_tensor(token_ids, padding=PAD_ID)
    selector = tensorflow_text.RandomItemSelector(
        max_selections_per_batch=max_predictions, selection_rate=selection_rate,
        unselectable_ids=[PAD_ID, CLS_ID, SEP_ID])
    chooser = tensorflow_text.MaskValuesChooser(vocab_size, MASK_ID, mask_token_rate=mask_token_rate,
                                                random_token_rate=random_token_rate)
    masked, positions, original = tensorflow_text.mask_language_model(ragged, selector, chooser)
    masked = masked.to_tensor(default_value=PAD_ID, shape=tf.shape(token_ids))
    positions, weights = tensorflow_text.pad_model_inputs(tf.cast(positions, tf.int32), max_predictions)
    original, _ = tensorflow_text.pad_model_inputs(tf.cast(original, tf.int32), max_predictions)
    return {"token_ids": masked, "masked_positions": positions, "masked_ids": original,
            "masked_weights": tf.cast(weights, tf.float32)}


def split_documents(text):
    """Splits plain text into documents (separated by blank lines) of sentences.

    A sentence ends at a line break or after `.`, `!` or `?` followed by
    whitespace.

    Args:
        text: the corpus.

    Returns:
        A list of documents, each a non-empty list of sentence strings.

    Example:

    >>> split_documents("One. Two!\\nThree\\n\\nFour.")
    [['One.', 'Two!', 'Three'], ['Four.']]
    """
    documents = []
    for block in re.split(r"\n\s*\n", text):
        sentences = [s.strip() for line in block.splitlines() for s in _SENTENCE_END.split(line)]
        sentences = [s for s in sentences if s]
        if sentences:
            documents.append(sentences)
    return documents


def nsp_pairs(documents, seed=0, segment_words=None):
    """Next-sentence-prediction pairs: every sentence that has a successor, with it or with a random one.

    For each sentence followed by another in its document, with probability
    1/2 the pair is (sentence, next sentence), label 1 ("is next"), otherwise
    (sentence, a random sentence of a different document), label 0.

    With `segment_words`, the units are segments instead of sentences:
    consecutive sentences of a document joined while they have at most that
    many words (a longer sentence is a segment of its own), as BERT fills
    its segments with text. Short sentences alone leave most of a packed
    sequence as padding, which costs compute and teaches nothing.

    Args:
        documents: a list of documents, each a list of sentences (e.g. from
            `split_documents`); at least two documents.
        seed: seed of the choices.
        segment_words: the most words of a segment of several sentences
            (default: one sentence per segment).

    Returns:
        `(first, second, is_next)`: two lists of strings and an int32 array.

    Example:

    >>> documents = [["One two.", "Three.", "Four five six."], ["Seven.", "Eight.", "Nine ten."]]
    >>> first, second, is_next = nsp_pairs(documents, segment_words=3)
    >>> first
    ['One two. Three.', 'Seven. Eight.']
    """
    if len(documents) < 2:
        raise ValueError(f"next-sentence pairs need at least 2 documents (separated by blank lines) to "
                         f"draw negatives from; received {len(documents)}.")
    if segment_words is not None:
        if not isinstance(segment_words, int) or segment_words < 1:
            raise ValueError(f"`segment_words` must be a positive integer or None; received "
                             f"segment_words={segment_words!r}.")
        documents = [_join_sentences(document, segment_words) for document in documents]
    rng = np.random.default_rng(seed)
    first, second, is_next = [], [], []
    for d, document in enumerate(documents):
        for i in range(len(document) - 1):
            first.append(document[i])
            if rng.random() < 0.5:
                second.append(document[i + 1])
                is_next.append(1)
            else:
                other = int(rng.integers(len(documents) - 1))
                other += other >= d  # any document but this one
                second.append(documents[other][int(rng.integers(len(documents[other])))])
                is_next.append(0)
    if not first:
        raise ValueError("no document has two sentences (or segments): next-sentence pairs need documents of "
                         "several sentences.")
    return first, second, np.asarray(is_next, dtype=np.int32)


def _join_sentences(sentences, max_words):
    """Consecutive `sentences` joined by spaces into segments of at most `max_words` words (or one sentence)."""
    segments, current, words = [], [], 0
    for sentence in sentences:
        count = len(sentence.split())
        if current and words + count > max_words:
            segments.append(" ".join(current))
            current, words = [], 0
        current.append(sentence)
        words += count
    return segments + [" ".join(current)]


@keras.saving.register_keras_serializable(package="kerazoo")
class BertPreprocessor(keras.layers.Layer):
    """Strings → packed BERT inputs, inside the graph (tokenizer + `pack_segments`).

    Args:
        tokenizer: a `WordPieceTokenizer` whose vocabulary starts with
            `BERT_SPECIAL_TOKENS` (see `learn_bert_vocabulary`).
        max_length: the packed length.
        lower_case: lower-case the text first (UTF-8 aware), as the
            vocabulary was learned.
        **kwargs: base `Layer` arguments.

    Call arguments:
        inputs: a `(batch,)` string tensor, or a list `[first, second]` of two
            for sentence pairs.

    Returns:
        A dict of `(batch, max_length)` int32 tensors `token_ids`,
        `segment_ids`, `padding_mask`: the input of `models.bert_backbone`.

    Example:

    >>> preprocessor = BertPreprocessor(learn_bert_vocabulary(["a good film"], 40), max_length=8)
    >>> preprocessor(tf.constant(["a good film"]))["token_ids"].shape
    TensorShape([1, 8])
    """

    def __init__(self, tokenizer, max_length, lower_case=True, **kwargs):
        kwargs.setdefault("trainable", False)
        super().__init__(**kwargs)
        if isinstance(tokenizer, dict):  # from get_config
            tokenizer = keras.saving.deserialize_keras_object(tokenizer)
        if not isinstance(tokenizer, WordPieceTokenizer):
            raise TypeError(f"`tokenizer` must be a WordPieceTokenizer; received {type(tokenizer).__name__}.")
        check_bert_vocabulary(tokenizer)
        if not isinstance(max_length, int) or max_length < 4:
            raise ValueError(f"`max_length` must be an integer >= 4; received max_length={max_length!r}.")
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.lower_case = lower_case
        self.built = True

    def call(self, inputs):
        texts = list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]
        if self.lower_case:
            texts = [tf.strings.lower(t, encoding="utf-8") for t in texts]
        return pack_segments([self.tokenizer(t) for t in texts], self.max_length)

    def get_config(self):
        config = super().get_config()
        config.update(tokenizer=keras.saving.serialize_keras_object(self.tokenizer),
                      max_length=self.max_length, lower_case=self.lower_case)
        return config


def pretraining_dataset(first, second, is_next, preprocessor, max_predictions, batch_size, shuffle=True,
                        repeat=True, seed=0):
    """Sentence pairs → packed, MLM-masked `tf.data` batches for `models.bert_pretrainer`.

    Packing and masking run in the pipeline (outside the XLA-compiled train
    step), with a fresh masking at every pass over the data, as RoBERTa's
    dynamic masking.

    Args:
        first, second, is_next: NSP pairs, e.g. from `nsp_pairs`.
        preprocessor: a `BertPreprocessor`.
        max_predictions: the most masked tokens per sequence.
        batch_size: sequences per batch (the last partial batch is dropped).
        shuffle: reshuffle the pairs at every pass.
        repeat: loop over the pairs forever (for `fit(steps_per_epoch=...)`).
        seed: shuffling seed.

    Returns:
        A `tf.data.Dataset` of `(inputs, targets, sample_weights)`: inputs
        `token_ids`, `segment_ids`, `padding_mask`, `masked_positions`;
        targets `mlm` (original ids at the masked positions) and `nsp`;
        sample weights `mlm` (`masked_weights`) and `nsp` (ones).
    """
    if len(first) < batch_size:
        raise ValueError(f"{len(first)} sentence pairs are fewer than one batch of batch_size={batch_size}.")
    vocab_size = preprocessor.tokenizer.vocabulary_size
    ds = tf.data.Dataset.from_tensor_slices((tf.constant(first), tf.constant(second),
                                             tf.constant(is_next, tf.int32)))
    if shuffle:
        ds = ds.shuffle(len(first), seed=seed, reshuffle_each_iteration=True)
    if repeat:
        ds = ds.repeat()

    @tf.autograph.experimental.do_not_convert  # plain TF ops; autograph only warns about the closure
    def features(a, b, label):
        packed = preprocessor([a, b])
        masked = mask_tokens(packed["token_ids"], vocab_size, max_predictions)
        inputs = dict(packed, token_ids=masked["token_ids"], masked_positions=masked["masked_positions"])
        return (inputs, {"mlm": masked["masked_ids"], "nsp": label},
                {"mlm": masked["masked_weights"], "nsp": tf.ones_like(label, tf.float32)})

    ds = ds.batch(batch_size, drop_remainder=True).map(features, num_parallel_calls=tf.data.AUTOTUNE)
    return prefetched(ds)


def _bucketed_batches(texts, preprocessor, boundaries, batch_size):
    """How many batches `bucket_by_sequence_length` makes of `texts`.

    Each length bucket's count over `batch_size`, rounded up. One tokenization
    pass that keeps only the lengths, not the packed texts.
    """
    lengths = np.concatenate([np.sum(preprocessor(tf.constant(texts[start:start + 4096]))["padding_mask"], axis=1)
                              for start in range(0, len(texts), 4096)])
    counts = np.bincount(np.searchsorted(boundaries, lengths, side="right"))
    return int(np.sum(-(-counts // batch_size)))


def classification_dataset(texts, labels, preprocessor, batch_size, shuffle=False, seed=0,
                           length_multiple=16):
    """Texts and labels → `(packed inputs, label)` batches for a `models.bert_classifier`.

    Batches are cut to the longest text in them, rounded up to a multiple of
    `length_multiple` (few distinct shapes, so few retraces), instead of
    always `preprocessor.max_length`: short texts then cost less. With
    `shuffle=True` (training) texts of similar length are also batched
    together (`bucket_by_sequence_length`; the texts are tokenized once up
    front to count the batches, so the dataset's cardinality stays known);
    without it the order is kept, so predictions line up with `labels`.

    Args:
        texts: a list of strings.
        labels: integer labels, one per text.
        preprocessor: a `BertPreprocessor`.
        batch_size: texts per batch.
        shuffle: reshuffle (and bucket by length) at every pass.
        seed: shuffling seed.
        length_multiple: batch lengths are multiples of this (capped at
            `preprocessor.max_length`).

    Returns:
        A `tf.data.Dataset` of `({"token_ids", "segment_ids", "padding_mask"}, labels)`.
    """
    max_length = preprocessor.max_length
    ds = tf.data.Dataset.from_tensor_slices((tf.constant(texts, tf.string), tf.constant(labels, tf.int32)))
    do_not_convert = tf.autograph.experimental.do_not_convert  # plain TF ops; autograph only warns

    @do_not_convert
    def pack(batch_texts, batch_labels):
        return preprocessor(batch_texts), batch_labels

    @do_not_convert
    def real_tokens(inputs, _):
        return tf.reduce_sum(inputs["padding_mask"])

    @do_not_convert
    def trim(inputs, label):
        longest = tf.reduce_max(tf.reduce_sum(inputs["padding_mask"], axis=1))
        length = tf.minimum((longest + length_multiple - 1) // length_multiple * length_multiple, max_length)
        return {key: value[:, :length] for key, value in inputs.items()}, label

    if shuffle:
        ds = ds.shuffle(len(texts), seed=seed, reshuffle_each_iteration=True)
        ds = ds.batch(256).map(pack, num_parallel_calls=tf.data.AUTOTUNE).unbatch()
        boundaries = list(range(length_multiple + 1, max_length + 1, length_multiple))
        ds = ds.bucket_by_sequence_length(real_tokens, boundaries, [batch_size] * (len(boundaries) + 1))
        # Bucketing hides the number of batches: Keras would meet the end of the first epoch
        # unannounced ("Your input ran out of data") with no total in its progress bar.
        ds = ds.apply(tf.data.experimental.assert_cardinality(
            _bucketed_batches(texts, preprocessor, boundaries, batch_size)))
    else:
        ds = ds.batch(batch_size).map(pack, num_parallel_calls=tf.data.AUTOTUNE)
    return prefetched(ds.map(trim, num_parallel_calls=tf.data.AUTOTUNE))
