"""The documents' LSTM classifier, the word vectorizer, the string-input wrapper and the metrics."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerazoo import models, text
from kerazoo.evaluation import classification_report


def test_default_architecture_is_the_documents():
    model = models.lstm_classifier()
    params = {layer.name: layer.count_params() for layer in model.layers if layer.count_params()}
    assert params == {"embedding": 160_000, "lstm": 6_272, "classifier": 33}
    assert model.input.shape == (None, 100) and model.output.shape == (None, 1)
    assert model.get_layer("classifier").activation is keras.activations.sigmoid


def test_options_bidirectional_dropout_multiclass():
    model = models.lstm_classifier(vocab_size=50, max_length=7, num_classes=3, bidirectional=True,
                                   dropout=0.3)
    assert model.output.shape == (None, 3)
    assert model.get_layer("bidirectional_lstm").count_params() == 2 * 6_272
    assert model.get_layer("classifier").count_params() == 64 * 3 + 3
    probabilities = model(np.ones((2, 7), "int32"))
    np.testing.assert_allclose(np.sum(probabilities, -1), 1.0, atol=1e-6)


def test_padding_is_masked():
    model = models.lstm_classifier(vocab_size=20, max_length=6)
    unpadded = models.lstm_classifier(vocab_size=20, max_length=2)  # same weights shapes
    unpadded.set_weights(model.get_weights())
    padded_ids = np.array([[3, 4, 0, 0, 0, 0]])
    np.testing.assert_allclose(model(padded_ids), unpadded(padded_ids[:, :2]), atol=1e-6)
    unmasked = models.lstm_classifier(vocab_size=20, max_length=6, mask_padding=False)
    unmasked.set_weights(model.get_weights())
    assert not np.allclose(unmasked(padded_ids), model(padded_ids))


@pytest.mark.parametrize("kwargs,message", [
    (dict(vocab_size=0), "vocab_size=0"), (dict(num_classes=1), "num_classes=1"),
    (dict(dropout=1.0), "dropout=1.0"), (dict(max_length=-2), "max_length=-2"),
])
def test_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        models.lstm_classifier(**kwargs)


def test_word_vectorizer_pads_and_truncates_at_the_end_with_an_oov_id():
    vectorizer = text.word_vectorizer(vocab_size=6, max_length=4)
    vectorizer.adapt(["the film was not good", "the film was good", "the film"])
    vocabulary = vectorizer.get_vocabulary()
    assert vocabulary[:2] == ["", "[UNK]"] and len(vocabulary) == 6
    ids = vectorizer(tf.constant(["The FILM, was... splendid!", "film"])).numpy()
    index = {word: i for i, word in enumerate(vocabulary)}
    assert ids[0].tolist() == [index["the"], index["film"], index["was"], 1]  # unknown word -> 1
    assert ids[1].tolist() == [index["film"], 0, 0, 0]  # post padding
    long = vectorizer(tf.constant(["the film was good the film"])).numpy()[0]
    assert long.tolist() == [index["the"], index["film"], index["was"], index["good"]]  # post truncation


def test_word_vectorizer_errors():
    with pytest.raises(ValueError, match="vocab_size=2"):
        text.word_vectorizer(vocab_size=2)
    with pytest.raises(ValueError, match="standardize.*'upper'"):
        text.word_vectorizer(standardize="upper")


def test_with_preprocessor_takes_strings_and_reloads(tmp_path):
    vectorizer = text.word_vectorizer(vocab_size=20, max_length=5)
    vectorizer.adapt(["a good film", "a bad film"])
    model = models.lstm_classifier(vocab_size=20, max_length=5)
    text_model = models.with_preprocessor(model, vectorizer)
    strings = tf.constant(["good film", "bad", ""])
    expected = model(vectorizer(strings))
    np.testing.assert_allclose(text_model(strings), expected, atol=1e-6)
    text_model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_allclose(reloaded.predict(strings, verbose=0), expected, atol=1e-6)
    with pytest.raises(TypeError, match="keras.Model"):
        models.with_preprocessor(vectorizer, vectorizer)


def test_classification_report_against_hand_counts():
    labels = [1, 1, 1, 0, 0, 1, 0, 1]
    predicted = [1, 0, 1, 0, 1, 1, 0, 0]
    report = classification_report(labels, predicted, ["neg", "pos"])
    # tp=3, fn=2, fp=1, tn=2
    assert report.confusion.tolist() == [[2, 1], [2, 3]]
    assert report.accuracy == 5 / 8
    assert report.precision == 3 / 4 and report.recall == 3 / 5
    assert report.f1 == pytest.approx(2 * 0.75 * 0.6 / 1.35)
    assert "neg" in str(report) and "F1 0.6667" in str(report)


def test_classification_report_multiclass_macro_and_errors():
    report = classification_report([0, 1, 2, 2], [0, 2, 2, 2])
    assert report.recall == pytest.approx((1 + 0 + 1) / 3)
    assert report.precision == pytest.approx((1 + 0 + 2 / 3) / 3)
    with pytest.raises(ValueError, match="3 labels and 2 predictions"):
        classification_report([0, 1, 1], [0, 1])
