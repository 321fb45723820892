"""Fuzzing the exports (LSTM and BERT classifiers, generator, translator) in the strict TF-only process."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from fuzz import fuzz_export
from kerazoo import export, models, text

TEXTS = ["a good film", "a bad film", "not good", "good good good", "bad", "très bien 😀"] * 4


def _classifier(tmp_path, num_classes):
    keras.utils.set_random_seed(5)
    vectorizer = text.word_vectorizer(vocab_size=30, max_length=8)
    vectorizer.adapt(TEXTS)
    model = models.lstm_classifier(vocab_size=30, embedding_dim=4, lstm_units=4, max_length=8,
                                   num_classes=num_classes)
    model.compile("adam", "binary_crossentropy" if num_classes == 2 else "sparse_categorical_crossentropy")
    labels = np.arange(len(TEXTS)) % num_classes
    model.fit(vectorizer(tf.constant(TEXTS)), labels, epochs=1, verbose=0)
    export.export_saved_model(model, tmp_path, "classifier", preprocessor=vectorizer)
    return tmp_path / "classifier"


def _generator(tmp_path):
    keras.utils.set_random_seed(6)
    tokenizer = text.CharTokenizer.learn(TEXTS)
    model = models.transformer_lm(tokenizer.vocabulary_size, max_length=16, d_model=8, num_heads=2, num_layers=1,
                                  ff_dim=16)
    export.export_text_generator(model, tokenizer, tmp_path, "generator", max_new_tokens=4)
    return tmp_path / "generator", tokenizer.vocabulary_size


def test_classifier_export_survives_2000_fuzzed_strings(tmp_path):
    report = fuzz_export(_classifier(tmp_path, 2), "classifier", count=2000, seed=1)
    assert report["tried"] == 2000 and report["failures"] == 0, report["first"]


@pytest.mark.slow
@pytest.mark.parametrize("num_classes", [2, 3])
def test_classifier_export_survives_10000_fuzzed_strings(tmp_path, num_classes):
    report = fuzz_export(_classifier(tmp_path, num_classes), "classifier", count=10_000, seed=2)
    assert report["tried"] == 10_000 and report["failures"] == 0, report["first"]


@pytest.mark.slow
def test_generator_export_survives_10000_fuzzed_prompts(tmp_path):
    path, vocab_size = _generator(tmp_path)
    report = fuzz_export(path, "generator", count=10_000, seed=3, input_name="prompt", vocab_size=vocab_size,
                         timeout=1200)
    assert report["tried"] == 10_000 and report["failures"] == 0, report["first"]


@pytest.mark.slow
def test_translator_export_survives_10000_fuzzed_strings(tmp_path):
    keras.utils.set_random_seed(7)
    source_tokenizer = text.WordPieceTokenizer.learn(TEXTS, vocab_size=40)
    target_tokenizer = text.WordPieceTokenizer.learn(TEXTS, vocab_size=40, reserved_tokens=(text.START, text.END))
    model = models.transformer_seq2seq(source_tokenizer.vocabulary_size, target_tokenizer.vocabulary_size,
                                       max_length=8, d_model=8, num_heads=2, num_layers=1, ff_dim=16, dropout=0.0)
    export.export_translator(model, source_tokenizer, target_tokenizer, tmp_path, "translator", max_new_tokens=4,
                             beam_width=2)
    report = fuzz_export(tmp_path / "translator", "translator", count=10_000, seed=4,
                         vocab_size=target_tokenizer.vocabulary_size, text_key="translation", timeout=1800)
    assert report["tried"] == 10_000 and report["failures"] == 0, report["first"]


@pytest.mark.slow
def test_bert_classifier_export_survives_10000_fuzzed_strings(tmp_path):
    keras.utils.set_random_seed(8)
    tokenizer = text.learn_bert_vocabulary(TEXTS, vocab_size=60)
    backbone = models.bert_backbone(tokenizer.vocabulary_size, max_length=16, d_model=8, num_heads=2, num_layers=1,
                                    ff_dim=16)
    classifier = models.bert_classifier(backbone, num_classes=2)
    export.export_saved_model(classifier, tmp_path, "bert", preprocessor=text.BertPreprocessor(tokenizer, 16))
    report = fuzz_export(tmp_path / "bert", "classifier", count=10_000, seed=5)
    assert report["tried"] == 10_000 and report["failures"] == 0, report["first"]
