"""BERT preprocessing: special-token vocabulary, [CLS] A [SEP] B [SEP] packing, MLM masking statistics, NSP pairs."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerazoo import text
from kerazoo.text.bert_preprocessing import CLS_ID, MASK_ID, PAD_ID, SEP_ID

CORPUS = ["The cat sat on the mat.", "The dog sat on the log.", "A cat and a dog met.", "Dogs like logs."] * 3


@pytest.fixture(scope="module")
def tokenizer():
    return text.learn_bert_vocabulary(CORPUS, vocab_size=80)


def test_vocabulary_starts_with_the_special_tokens_and_text_cannot_make_them(tokenizer):
    assert tokenizer.vocabulary[:5] == ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    ids = text.BertPreprocessor(tokenizer, 16)(tf.constant(["the cat [SEP] [MASK] [CLS]"]))["token_ids"][0]
    ids = ids.numpy().tolist()
    assert ids[0] == CLS_ID and ids.count(SEP_ID) == 1 and MASK_ID not in ids  # only the packer adds them
    with pytest.raises(ValueError, match=r"must start with \['\[PAD\]', '\[UNK\]', '\[CLS\]'"):
        text.BertPreprocessor(text.WordPieceTokenizer.learn(CORPUS, vocab_size=60), 16)


def test_packing_matches_hand_written_arrays():
    a = tf.ragged.constant([[10, 11, 12, 13, 14, 15], [20], [30, 31]])
    b = tf.ragged.constant([[40, 41], [50, 51, 52, 53, 54, 55], [60]])
    packed = text.pack_segments([a, b], max_length=8)
    # Budget 5 content tokens: the longer segment loses tokens first, from its end.
    np.testing.assert_array_equal(packed["token_ids"], [[2, 10, 11, 12, 3, 40, 41, 3],
                                                        [2, 20, 3, 50, 51, 52, 53, 3],
                                                        [2, 30, 31, 3, 60, 3, 0, 0]])
    np.testing.assert_array_equal(packed["segment_ids"], [[0, 0, 0, 0, 0, 1, 1, 1],
                                                          [0, 0, 0, 1, 1, 1, 1, 1],
                                                          [0, 0, 0, 0, 1, 1, 0, 0]])
    np.testing.assert_array_equal(packed["padding_mask"], [[1] * 8, [1] * 8, [1, 1, 1, 1, 1, 1, 0, 0]])
    single = text.pack_segments([a], max_length=5)
    np.testing.assert_array_equal(single["token_ids"], [[2, 10, 11, 12, 3], [2, 20, 3, 0, 0], [2, 30, 31, 3, 0]])
    np.testing.assert_array_equal(single["segment_ids"], np.zeros((3, 5)))
    np.testing.assert_array_equal(single["padding_mask"], [[1] * 5, [1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    # The same inside a traced function with an unknown batch size (as in tf.data and exports).
    traced = tf.function(lambda x: text.pack_segments([x], max_length=5)["token_ids"])
    np.testing.assert_array_equal(traced(a), single["token_ids"])
    with pytest.raises(ValueError, match="max_length"):
        text.pack_segments([a, b], max_length=3)


def test_preprocessor_lower_cases_packs_pairs_and_round_trips_its_config(tokenizer):
    preprocessor = text.BertPreprocessor(tokenizer, 12)
    upper = preprocessor([tf.constant(["THE CAT"]), tf.constant(["Sat."])])
    lower = preprocessor([tf.constant(["the cat"]), tf.constant(["sat."])])
    for key in ("token_ids", "segment_ids", "padding_mask"):
        np.testing.assert_array_equal(upper[key], lower[key])
    expected = [CLS_ID] + tokenizer(tf.constant(["the cat"]))[0].numpy().tolist() + [SEP_ID]
    expected += tokenizer(tf.constant(["sat."]))[0].numpy().tolist() + [SEP_ID]
    assert lower["token_ids"][0].numpy().tolist() == expected + [PAD_ID] * (12 - len(expected))
    rebuilt = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(preprocessor))
    np.testing.assert_array_equal(rebuilt(tf.constant(["a dog"]))["token_ids"],
                                  preprocessor(tf.constant(["a dog"]))["token_ids"])


def _packed_batch(rng, rows, vocab_size):
    """Packed-looking rows: [CLS] tokens [SEP] tokens [SEP] [PAD]...; 40 or 20 maskable tokens per row."""
    batch = np.zeros((rows, 48), np.int32)
    lengths = np.where(np.arange(rows) % 2 == 0, 40, 20)
    for i, n in enumerate(lengths):
        tokens = rng.integers(5, vocab_size, size=n)
        cut = n // 2
        batch[i, :n + 3] = [CLS_ID, *tokens[:cut], SEP_ID, *tokens[cut:], SEP_ID]
    return batch, lengths


def test_masking_statistics_over_many_draws(rng):
    vocab_size = 1000
    ids, lengths = _packed_batch(rng, 1000, vocab_size)
    mask = tf.function(lambda x: text.mask_tokens(x, vocab_size, max_predictions=8))  # graph mode: faster
    out = {k: v.numpy() for k, v in mask(tf.constant(ids)).items()}
    weights = out["masked_weights"]
    # 15% of the maskable tokens, rounded up as tensorflow-text does: 6 of 40, 3 of 20.
    np.testing.assert_array_equal(weights.sum(1), np.where(lengths == 40, 6, 3))
    positions = out["masked_positions"]
    real = weights > 0
    rows = np.broadcast_to(np.arange(len(ids))[:, None], positions.shape)
    original = ids[rows[real], positions[real]]
    # Labels are the original ids, only at selected positions; padding predictions are 0 with weight 0.
    np.testing.assert_array_equal(out["masked_ids"][real], original)
    assert (out["masked_ids"][~real] == 0).all() and (positions[~real] == 0).all()
    assert not np.isin(original, [PAD_ID, CLS_ID, SEP_ID]).any()  # never a special token or padding
    assert all(len(set(p[w > 0])) == w.sum() for p, w in zip(positions, weights))  # distinct positions
    # Unselected positions keep their ids.
    selected = np.zeros_like(ids, bool)
    selected[rows[real], positions[real]] = True
    np.testing.assert_array_equal(out["token_ids"][~selected], ids[~selected])
    # Selected: 80% [MASK], 10% a random id, 10% unchanged (4,500 draws; 4-sigma tolerances).
    corrupted = out["token_ids"][rows[real], positions[real]]
    n = corrupted.size
    masked, same = np.mean(corrupted == MASK_ID), np.mean(corrupted == original)
    random = 1 - masked - same
    assert abs(masked - 0.8) < 4 * np.sqrt(0.16 / n)
    assert abs(same - 0.1) < 4 * np.sqrt(0.09 / n) + 1 / vocab_size
    assert abs(random - 0.1) < 4 * np.sqrt(0.09 / n) + 1 / vocab_size
    # Selection is spread over every maskable position, not biased to the start or the end.
    counts = np.bincount(positions[real][np.repeat(lengths, weights.sum(1).astype(int)) == 40], minlength=43)
    assert counts[[0, 21, 42]].sum() == 0 and counts[1:21].min() > 0.5 * counts[1:21].mean()


def test_masking_respects_max_predictions(rng):
    ids, _ = _packed_batch(rng, 50, 100)
    out = text.mask_tokens(tf.constant(ids), 100, max_predictions=2)
    assert out["masked_positions"].shape == (50, 2)
    np.testing.assert_array_equal(out["masked_weights"].numpy().sum(1), np.full(50, 2))
    with pytest.raises(ValueError, match="max_predictions"):
        text.mask_tokens(tf.constant(ids), 100, max_predictions=0)


def test_split_documents_on_blank_lines_and_sentence_ends():
    assert text.split_documents("One. Two! Three?\nFour\n\n \n\nFive.\n") == [
        ["One.", "Two!", "Three?", "Four"], ["Five."]]


def test_nsp_pairs_half_true_next_sentences_and_negatives_from_other_documents():
    documents = [[f"d{d} s{s}" for s in range(5)] for d in range(40)]
    first, second, is_next = text.nsp_pairs(documents, seed=3)
    assert len(first) == 40 * 4 and is_next.dtype == np.int32
    assert abs(is_next.mean() - 0.5) < 4 * np.sqrt(0.25 / len(first))
    where = {sentence: (d, s) for d, doc in enumerate(documents) for s, sentence in enumerate(doc)}
    for a, b, label in zip(first, second, is_next):
        (da, sa), (db, sb) = where[a], where[b]
        if label:
            assert (db, sb) == (da, sa + 1)
        else:
            assert db != da
    assert text.nsp_pairs(documents, seed=3)[2].tolist() == is_next.tolist()  # seeded
    with pytest.raises(ValueError, match="at least 2 documents"):
        text.nsp_pairs(documents[:1])
    with pytest.raises(ValueError, match="several sentences"):
        text.nsp_pairs([["a"], ["b"]])


def test_nsp_pairs_of_segments_join_consecutive_sentences_up_to_the_word_limit():
    # At most 5 words: "a b c." + "d e." fit; the 12-word sentence stands alone; "r." + "s t." fit.
    words = [["a", "b", "c"], ["d", "e"], list("fghijklmnopq"), ["r"], ["s", "t"]]
    groups = [[0, 1], [2], [3, 4]]
    documents, segments = [], {}
    for d in range(40):  # each word tagged with its document
        sentences = [" ".join(f"{w}{d}" for w in sentence) + "." for sentence in words]
        documents.append(sentences)
        segments.update({" ".join(sentences[i] for i in group): (d, g) for g, group in enumerate(groups)})
    first, second, is_next = text.nsp_pairs(documents, seed=1, segment_words=5)
    assert sorted(first) == sorted(s for s, (d, g) in segments.items() if g < len(groups) - 1)
    assert abs(is_next.mean() - 0.5) < 4 * np.sqrt(0.25 / len(first))
    for a, b, label in zip(first, second, is_next):
        (da, ga), (db, gb) = segments[a], segments[b]
        assert (db, gb) == (da, ga + 1) if label else db != da
    with pytest.raises(ValueError, match="segment_words"):
        text.nsp_pairs(documents, segment_words=0)


def test_pretraining_dataset_batches(tokenizer):
    first, second, is_next = text.nsp_pairs(text.split_documents("\n\n".join(" ".join(CORPUS[i:i + 3])
                                                                             for i in range(0, 12, 3))))
    ds = text.pretraining_dataset(first, second, is_next, text.BertPreprocessor(tokenizer, 24), max_predictions=4,
                                  batch_size=4)
    inputs, targets, weights = next(iter(ds))
    assert sorted(inputs) == ["masked_positions", "padding_mask", "segment_ids", "token_ids"]
    assert inputs["token_ids"].shape == (4, 24) and inputs["masked_positions"].shape == (4, 4)
    assert targets["mlm"].shape == (4, 4) and targets["nsp"].shape == (4,)
    assert weights["mlm"].dtype == tf.float32 and (weights["nsp"].numpy() == 1).all()
    assert (inputs["segment_ids"].numpy().max(1) == 1).all()  # every row is a pair
    # tf.data autotuning off (data.prefetched): with it on, ending each fit stalled on the iterator's teardown.
    assert ds.options().autotune.enabled is False
    with pytest.raises(ValueError, match="fewer than one batch"):
        text.pretraining_dataset(first, second, is_next, text.BertPreprocessor(tokenizer, 24), 4, batch_size=99)


def test_classification_dataset_cuts_batches_to_their_longest_text(tokenizer):
    preprocessor = text.BertPreprocessor(tokenizer, 64)
    texts = ["cat"] * 5 + [" ".join(["the dog sat"] * 8)] * 3
    labels = [0] * 5 + [1] * 3
    ordered_ds = text.classification_dataset(texts, labels, preprocessor, batch_size=4, length_multiple=8)
    batches = list(ordered_ds)
    longest = len(tokenizer(tf.constant(texts[-1:]))[0]) + 2  # [CLS] text [SEP]
    assert [b[0]["token_ids"].shape[1] for b in batches] == [8, -(-longest // 8) * 8]
    assert [b[1].numpy().tolist() for b in batches] == [[0, 0, 0, 0], [0, 1, 1, 1]]  # order kept
    shuffled_ds = text.classification_dataset(texts, labels, preprocessor, batch_size=4, shuffle=True,
                                              length_multiple=8)
    shuffled = list(shuffled_ds)
    assert sorted(int(y) for b in shuffled for y in b[1]) == sorted(labels)
    assert shuffled_ds.cardinality() == len(shuffled) == 3  # known, though bucketed: 5 short texts, 3 long ones
    mixed = [" ".join(["dog"] * n) for n in np.random.default_rng(0).integers(0, 40, 37)]
    for batch_size in (1, 5, 64):  # iterating checks the count: TF fails on a wrong asserted cardinality
        ds = text.classification_dataset(mixed, [0] * 37, preprocessor, batch_size, shuffle=True, length_multiple=8)
        assert len(list(ds)) == ds.cardinality()
    assert [ds.options().autotune.enabled for ds in (shuffled_ds, ordered_ds)] == [False, False]
