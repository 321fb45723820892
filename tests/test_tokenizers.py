"""Character and WordPiece tokenizers: round trips, learned pieces, unknowns, saving, errors."""

import json

import pytest
import tensorflow as tf

from kerazoo.text import CharTokenizer, WordPieceTokenizer

CORPUS = [
    "the quick brown fox jumps over the lazy dog",
    "the lazy dog sleeps; the quick fox runs",
    "a fox is quicker than a dog, and a dog is lazier than a fox",
    "les renards rapides sautent — très bien, naïve café",
] * 5


def test_char_round_trip_ascii_and_non_ascii():
    tokenizer = CharTokenizer.learn(CORPUS)
    texts = ["the fox, très naïve;", "dog"]
    ids = tokenizer(tf.constant(texts))
    assert ids.shape[0] == 2 and ids.row_lengths().numpy().tolist() == [20, 3]
    assert [s.decode() for s in tokenizer.detokenize(ids).numpy()] == texts
    # Dense, zero-padded ids decode the same.
    assert tokenizer.detokenize(ids.to_tensor()).numpy().tolist() == tokenizer.detokenize(ids).numpy().tolist()


def test_char_unknown_characters_map_to_unk():
    tokenizer = CharTokenizer.learn(["abc"])
    assert tokenizer(tf.constant(["aZ€b"])).to_list() == [[2, 1, 1, 3]]
    assert tokenizer.vocabulary == ["[PAD]", "[UNK]", "a", "b", "c"]


def test_wordpiece_learns_expected_pieces_and_round_trips():
    tokenizer = WordPieceTokenizer.learn(CORPUS, vocab_size=120)
    vocabulary = set(tokenizer.vocabulary)
    assert {"the", "fox", "dog", "lazy", "quick"} <= vocabulary
    assert any(piece.startswith("##") for piece in vocabulary)
    ids = tokenizer(tf.constant(["the lazy fox", "a quick dog"]))
    assert all(0 < i < tokenizer.vocabulary_size for row in ids.to_list() for i in row)
    assert tokenizer.detokenize(ids).numpy().tolist() == [b"the lazy fox", b"a quick dog"]
    text = "the fox jumps, the dog sleeps"
    assert tokenizer.detokenize(tokenizer(tf.constant([text]))).numpy()[0].decode() == \
        "the fox jumps , the dog sleeps"  # punctuation becomes its own word


def test_wordpiece_unknown_word_maps_to_unk():
    tokenizer = WordPieceTokenizer.learn(CORPUS, vocab_size=120)
    ids = tokenizer(tf.constant(["the 日本 fox"])).to_list()[0]
    assert ids[1] == tokenizer.unk_id and tokenizer.vocabulary[ids[0]] == "the"


@pytest.mark.parametrize("cls", [CharTokenizer, WordPieceTokenizer])
def test_vocabulary_saves_and_reloads(tmp_path, cls):
    tokenizer = cls.learn(CORPUS) if cls is CharTokenizer else cls.learn(CORPUS, vocab_size=80)
    path = tmp_path / "vocabulary.json"
    tokenizer.save_vocabulary(str(path))
    reloaded = cls.from_vocabulary_file(str(path))
    assert reloaded.vocabulary == tokenizer.vocabulary
    texts = tf.constant(["the lazy café"])
    assert reloaded(texts).to_list() == tokenizer(texts).to_list()
    assert cls.from_config(tokenizer.get_config()).vocabulary == tokenizer.vocabulary


@pytest.mark.parametrize("cls", [CharTokenizer, WordPieceTokenizer])
def test_tokenizers_run_in_tf_data(cls):
    tokenizer = cls.learn(CORPUS) if cls is CharTokenizer else cls.learn(CORPUS, vocab_size=80)
    dataset = tf.data.Dataset.from_tensor_slices(["the dog", "a fox runs"]).batch(2).map(tokenizer)
    assert next(iter(dataset)).to_list() == tokenizer(tf.constant(["the dog", "a fox runs"])).to_list()


def test_missing_or_foreign_vocabulary_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="vocabulary file not found: .*missing.json"):
        CharTokenizer.from_vocabulary_file(str(tmp_path / "missing.json"))
    path = tmp_path / "v.json"
    WordPieceTokenizer.learn(CORPUS, vocab_size=60).save_vocabulary(str(path))
    with pytest.raises(ValueError, match="holds a WordPieceTokenizer vocabulary, not a CharTokenizer"):
        CharTokenizer.from_vocabulary_file(str(path))
    path.write_text("not json")
    with pytest.raises(ValueError, match="not a vocabulary file"):
        CharTokenizer.from_vocabulary_file(str(path))
    path.write_text(json.dumps({"tokenizer": "CharTokenizer", "vocabulary": ["a", "b"]}))
    with pytest.raises(ValueError, match=r"must start with \['\[PAD\]', '\[UNK\]'\]"):
        CharTokenizer.from_vocabulary_file(str(path))


def test_learning_from_nothing_is_an_error():
    with pytest.raises(ValueError, match="texts are empty"):
        CharTokenizer.learn(["", ""])
    with pytest.raises(ValueError, match="texts are empty"):
        WordPieceTokenizer.learn(["  ", ""])


def test_wordpiece_sequence_starting_inside_a_word_decodes_without_marker():
    tokenizer = WordPieceTokenizer.learn(CORPUS, vocab_size=80)
    ids = tokenizer(tf.constant(["foxes runs"])).to_list()[0]
    pieces = [tokenizer.vocabulary[i] for i in ids]
    continuation = next(i for i, piece in enumerate(pieces) if piece.startswith("##"))
    decoded = tokenizer.detokenize(tf.ragged.constant([ids[continuation:]])).numpy()[0].decode()
    assert decoded == "".join(pieces[continuation:]).replace("##", "").split("runs")[0].strip() + " runs"
    assert not decoded.startswith("#")
