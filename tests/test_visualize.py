"""Attention maps and accuracy plots: probabilities that match the layer's own, PNGs written, the CLI subcommand."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerazoo import cli, icl, models, text, training, visualize
from kerazoo.layers import MultiHeadSelfAttention, TokenAndPositionEmbedding

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def tokenizer():
    return text.CharTokenizer.learn(["abc =0123"])


@pytest.fixture(scope="module")
def lm(tokenizer):
    keras.utils.set_random_seed(0)
    return models.transformer_lm(tokenizer.vocabulary_size, 16, 16, 2, 2, 32)


def test_attention_maps_of_an_lm_are_causal_distributions_and_the_png_is_written(lm, tokenizer, tmp_path):
    maps = visualize.attention_maps(lm, tokenizer, "a=0 b=1 a=", layer=-1, path=tmp_path / "all.png")
    assert maps.scores.shape == (2, 10, 10) and maps.layer == 1 and maps.tokens[:3] == ["a", "=", "0"]
    assert maps.tokens[3] == "␣"
    np.testing.assert_allclose(maps.scores.sum(axis=-1), 1.0, atol=1e-5)
    assert np.all(np.triu(maps.scores, k=1) == 0)  # causal: nothing above the diagonal
    assert (tmp_path / "all.png").read_bytes()[:8] == PNG_SIGNATURE
    one = visualize.attention_maps(lm, tokenizer, "a=0 b=1 a=", layer=0, head=1, path=tmp_path / "one.png")
    assert one.scores.shape == (10, 10) and (tmp_path / "one.png").read_bytes()[:8] == PNG_SIGNATURE
    with pytest.raises(ValueError, match=r"`layer` must be an integer in \[-2, 2\)"):
        visualize.attention_maps(lm, tokenizer, "ab", layer=2)
    with pytest.raises(ValueError, match=r"`head` must be an integer in \[0, 2\)"):
        visualize.attention_maps(lm, tokenizer, "ab", head=5)


def test_attention_maps_equal_the_layer_run_on_its_own(tokenizer):
    """A bare attention layer in a functional model: the scores are its own, recomputed independently."""
    keras.utils.set_random_seed(1)
    ids = keras.Input((None,), dtype="int32")
    embedding = TokenAndPositionEmbedding(tokenizer.vocabulary_size, 16, 8)
    attention = MultiHeadSelfAttention(num_heads=2)
    model = keras.Model(ids, attention(embedding(ids)))
    maps = visualize.attention_maps(model, tokenizer, "ab=01")
    x = embedding(tokenizer(tf.constant(["ab=01"])).to_tensor())
    kernel, bias = attention.qkv_dense.get_weights()
    qkv = (np.asarray(x)[0] @ kernel + bias).reshape(5, 3, 2, 4)
    q, k = qkv[:, 0].transpose(1, 0, 2), qkv[:, 1].transpose(1, 0, 2)
    logits = q @ k.transpose(0, 2, 1) / 2.0
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(maps.scores, expected, atol=1e-5)  # bidirectional: full rows


def test_attention_maps_reject_models_without_attention(tokenizer):
    model = keras.Sequential([keras.Input((None,), dtype="int32"), keras.layers.Embedding(20, 4)])
    with pytest.raises(ValueError, match="has no MultiHeadSelfAttention layers"):
        visualize.attention_maps(model, tokenizer, "ab")


@pytest.fixture(scope="module")
def bert():
    keras.utils.set_random_seed(2)
    wordpiece = text.learn_bert_vocabulary(["the film was good", "the plot was bad"], vocab_size=40)
    preprocessor = text.BertPreprocessor(wordpiece, max_length=16)
    backbone = models.bert_backbone(wordpiece.vocabulary_size, max_length=16, d_model=16, num_heads=2,
                                    num_layers=2, ff_dim=32)
    return backbone, preprocessor


def test_attention_maps_of_bert_models_match_the_first_layer_computed_by_hand(bert, tmp_path):
    """Backbone, classifier and pretrainer (an extra input) share the blocks: the same bidirectional maps,
    with [CLS]/[SEP] shown and the padding cut off; layer 0 recomputed from the embeddings in numpy."""
    backbone, preprocessor = bert
    maps = visualize.attention_maps(backbone, preprocessor, "the film was bad", path=tmp_path / "bert.png")
    assert maps.tokens[0] == "[CLS]" and maps.tokens[-1] == "[SEP]" and "[PAD]" not in maps.tokens
    assert maps.scores.shape == (2, len(maps.tokens), len(maps.tokens))
    assert (tmp_path / "bert.png").read_bytes()[:8] == PNG_SIGNATURE
    packed = preprocessor(tf.constant(["the film was bad"]))
    embedded = keras.Model(backbone.input, backbone.get_layer("embedding_norm").output)(packed)
    x = np.asarray(embedded)[0, :len(maps.tokens)]
    block = backbone.get_layer("block_0")
    kernel, bias = block.attention.qkv_dense.get_weights()
    seq = len(x)
    qkv = (x @ kernel + bias).reshape(seq, 3, 2, 8)
    q, k = qkv[:, 0].transpose(1, 0, 2), qkv[:, 1].transpose(1, 0, 2)
    logits = q @ k.transpose(0, 2, 1) / np.sqrt(8)
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    expected /= expected.sum(-1, keepdims=True)
    np.testing.assert_allclose(maps.scores, expected, atol=1e-5)
    for model in (models.bert_classifier(backbone), models.bert_pretrainer(backbone)):
        again = visualize.attention_maps(model, preprocessor, "the film was bad", layer=-1)
        np.testing.assert_allclose(again.scores, visualize.attention_maps(backbone, preprocessor,
                                                                          "the film was bad", layer=-1).scores)
    with pytest.raises(ValueError, match="`tokenizer` must be a BertPreprocessor"):
        visualize.attention_maps(backbone, preprocessor.tokenizer, "the film")


def test_accuracy_plot_is_written(tmp_path):
    results = [icl.ShotAccuracy(k, a, (a - 0.1, a + 0.05), (a,), 40) for k, a in [(0, 0.25), (1, 0.5), (8, 0.9)]]
    path = visualize.plot_accuracy_vs_shots({"plain": results, "calibrated": results}, tmp_path / "plot.png",
                                            chance=0.25)
    assert open(path, "rb").read()[:8] == PNG_SIGNATURE


def test_cli_attention_subcommand(lm, tokenizer, tmp_path, capsys):
    training.save_keras_atomically(lm, tmp_path / "lm.keras")
    tokenizer.save_vocabulary(tmp_path / "vocabulary.json")
    assert cli.main(["attention", str(tmp_path / "lm.keras"), str(tmp_path / "vocabulary.json"), "ab=0 a=",
                     "--layer", "1", "--output", str(tmp_path / "map.png")]) == 0
    out = capsys.readouterr().out
    assert "layer 1: 7 tokens" in out and "head 1: the last token '='" in out
    assert (tmp_path / "map.png").read_bytes()[:8] == PNG_SIGNATURE
    assert cli.main(["attention", str(tmp_path / "missing.keras"), str(tmp_path / "vocabulary.json"), "a"]) == 2
    assert "kerazoo attention: error: model file not found" in capsys.readouterr().err
    assert cli.main(["attention", str(tmp_path / "lm.keras"), str(tmp_path / "lm.keras"), "a"]) == 2
    assert "not a vocabulary file" in capsys.readouterr().err


def test_cli_attention_subcommand_on_a_bert_backbone(bert, tmp_path, capsys):
    backbone, preprocessor = bert
    training.save_keras_atomically(backbone, tmp_path / "backbone.keras")
    preprocessor.tokenizer.save_vocabulary(tmp_path / "vocabulary.json")
    assert cli.main(["attention", str(tmp_path / "backbone.keras"), str(tmp_path / "vocabulary.json"),
                     "The film was good", "--output", str(tmp_path / "bert.png")]) == 0
    expected = visualize.attention_maps(backbone, preprocessor, "the film was good")  # lower-cased as learned
    assert f"layer 0: {len(expected.tokens)} tokens" in capsys.readouterr().out and "[UNK]" not in expected.tokens
    assert (tmp_path / "bert.png").read_bytes()[:8] == PNG_SIGNATURE
