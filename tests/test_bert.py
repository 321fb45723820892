"""BERT models: backbone, MLM + NSP pretrainer (tied output), classifier fine-tuning modes, string-in export."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerazoo import export, models, text, training
from tf_only import assert_no_xla, run_tf_only

CORPUS = ("the cat sat on the mat. the dog sat on the log. a cat saw a dog.\n\n"
          "birds fly over the sea. fish swim under the sea. the sea is deep.\n\n"
          "we read a good book. the book was long. we liked the end.\n\n"
          "rain fell all day. the river rose. the bridge held.")
VOCAB, D_MODEL = 90, 32


@pytest.fixture(scope="module")
def tokenizer():
    return text.learn_bert_vocabulary(text.split_documents(CORPUS)[0] + CORPUS.split("\n\n"), vocab_size=VOCAB)


def _backbone(vocab_size, num_layers=2, dropout=0.0, max_length=24):
    return models.bert_backbone(vocab_size, max_length=max_length, d_model=D_MODEL, num_heads=2,
                                num_layers=num_layers, ff_dim=64, dropout=dropout)


def _inputs(rng, vocab_size, batch=3, length=10):
    token_ids = rng.integers(5, vocab_size, size=(batch, length)).astype("int32")
    padding_mask = np.ones((batch, length), "int32")
    padding_mask[1, 6:] = 0
    token_ids[1, 6:] = 0
    segment_ids = np.zeros((batch, length), "int32")
    segment_ids[:, 4:] = 1
    return {"token_ids": token_ids, "segment_ids": segment_ids, "padding_mask": padding_mask}


def test_backbone_outputs_ignore_padding_and_pool_the_cls_state(rng):
    backbone = _backbone(50)
    x = _inputs(rng, 50)
    out = backbone(x)
    assert out["sequence_output"].shape == (3, 10, D_MODEL) and out["pooled_output"].shape == (3, D_MODEL)
    # Whatever sits in padded positions does not reach the real ones.
    noisy = dict(x, token_ids=np.where(x["padding_mask"] == 1, x["token_ids"], 17).astype("int32"))
    np.testing.assert_allclose(backbone(noisy)["sequence_output"][1, :6], out["sequence_output"][1, :6], atol=1e-5)
    # pooled = tanh([CLS] state @ W + b), BERT's pooler.
    kernel, bias = backbone.get_layer("pooler").get_weights()
    np.testing.assert_allclose(out["pooled_output"], np.tanh(np.asarray(out["sequence_output"])[:, 0] @ kernel + bias),
                               atol=1e-5)
    # Segment ids matter (the segment embedding is added).
    other = backbone(dict(x, segment_ids=np.zeros_like(x["segment_ids"])))["sequence_output"]
    assert not np.allclose(other, out["sequence_output"])
    with pytest.raises(ValueError, match="num_layers"):
        models.bert_backbone(50, num_layers=0)


@pytest.mark.parametrize("norm_first", [False, True])
def test_mlm_head_is_tied_to_the_token_embedding_and_gathers_masked_positions(rng, norm_first):
    backbone = models.bert_backbone(50, max_length=24, d_model=D_MODEL, num_heads=2, num_layers=2, ff_dim=64,
                                    dropout=0.0, norm_first=norm_first)
    pretrainer = models.bert_pretrainer(backbone)
    embeddings = backbone.get_layer("embedding").token_embedding.embeddings
    tables = [v for v in pretrainer.weights if tuple(v.shape) == (50, D_MODEL)]
    assert len(tables) == 1 and tables[0] is embeddings  # one variable: input table and output projection
    x = dict(_inputs(rng, 50), masked_positions=np.array([[1, 3], [2, 5], [0, 9]], "int32"))
    pretrainer.get_layer("mlm_bias").bias.assign(rng.normal(size=50).astype("float32"))
    out = pretrainer(x)
    assert out["mlm"].shape == (3, 2, 50) and out["nsp"].shape == (3, 2)
    # Reference: gather, dense + GELU, layer norm, @ embeddings.T + bias.
    # The pretrainer's last block computes the masked positions and [CLS] only; the reference gathers them
    # from the backbone's full output.
    full = backbone({key: x[key] for key in ("token_ids", "segment_ids", "padding_mask")})
    hidden = np.take_along_axis(np.asarray(full["sequence_output"]), x["masked_positions"][:, :, None], 1)
    kernel, bias = pretrainer.get_layer("mlm_transform").get_weights()
    h = np.asarray(keras.activations.gelu(hidden @ kernel + bias))
    gamma, beta = pretrainer.get_layer("mlm_norm").get_weights()
    h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-12) * gamma + beta
    expected = h @ embeddings.numpy().T + pretrainer.get_layer("mlm_bias").bias.numpy()
    np.testing.assert_allclose(out["mlm"], expected, atol=1e-4)
    kernel, bias = pretrainer.get_layer("nsp_dense").get_weights()
    np.testing.assert_allclose(out["nsp"], np.asarray(full["pooled_output"]) @ kernel + bias, atol=1e-5)


def test_classifier_is_softmax_of_the_backbones_pooled_output(rng):
    backbone = _backbone(50)
    classifier = models.bert_classifier(backbone, num_classes=3, dropout=0.0)
    kernel = rng.normal(size=(D_MODEL, 3)).astype("float32")
    classifier.get_layer("classifier").set_weights([kernel, np.zeros(3, "float32")])
    x = _inputs(rng, 50)
    # The classifier's last block computes [CLS] only; the reference pools the backbone's full output.
    logits = np.asarray(backbone(x)["pooled_output"]) @ kernel
    expected = np.exp(logits - logits.max(-1, keepdims=True))
    np.testing.assert_allclose(classifier(x), expected / expected.sum(-1, keepdims=True), atol=1e-5)


def test_with_dropout_sets_every_rate_and_keeps_the_weights(rng):
    backbone = _backbone(50, dropout=0.0)
    x = _inputs(rng, 50)
    np.testing.assert_array_equal(backbone(x, training=True)["sequence_output"], backbone(x)["sequence_output"])
    rebuilt = models.with_dropout(backbone, 0.3)
    rates = [layer.rate for layer in rebuilt._flatten_layers() if isinstance(layer, keras.layers.Dropout)]
    assert rates == [0.3] * 5  # after the embeddings; in each of 2 blocks, its residuals' and its attention's
    assert len(rebuilt.weights) == len(backbone.weights)
    for a, b in zip(rebuilt.get_weights(), backbone.get_weights()):
        np.testing.assert_array_equal(a, b)
    # Inference is unchanged; in training the new rate drops units (the rate-0 original's outputs do not move).
    np.testing.assert_allclose(rebuilt(x)["sequence_output"], backbone(x)["sequence_output"], atol=1e-6)
    assert not np.allclose(rebuilt(x, training=True)["sequence_output"], backbone(x)["sequence_output"], atol=1e-3)
    assert models.with_dropout(rebuilt, 0.3) is rebuilt
    with pytest.raises(ValueError, match="dropout"):
        models.with_dropout(backbone, 1.0)


def test_pretrainer_mlm_loss_falls_on_a_tiny_corpus(tokenizer):
    first, second, is_next = text.nsp_pairs(text.split_documents(CORPUS), seed=0)
    ds = text.pretraining_dataset(first, second, is_next, text.BertPreprocessor(tokenizer, 24), max_predictions=4,
                                  batch_size=8)
    pretrainer = models.bert_pretrainer(_backbone(tokenizer.vocabulary_size, num_layers=1))
    embeddings = pretrainer.get_layer("embedding").token_embedding.embeddings
    before = embeddings.numpy()
    training.compile_model(pretrainer, training.select_plan("float32", jit_compile=False),
                           optimizer=training.adamw(3e-3, weight_decay=0.0), **models.pretraining_compile_args())
    history = pretrainer.fit(ds, steps_per_epoch=10, epochs=6, verbose=0).history
    assert set(history) >= {"loss", "mlm_loss", "nsp_loss", "mlm_accuracy", "nsp_accuracy"}
    np.testing.assert_allclose(history["loss"], np.add(history["mlm_loss"], history["nsp_loss"]), rtol=1e-4)
    assert history["mlm_loss"][-1] < 0.75 * history["mlm_loss"][0]
    assert history["mlm_accuracy"][-1] > history["mlm_accuracy"][0]
    assert not np.array_equal(before, embeddings.numpy())  # the MLM gradient reaches the tied table


def _trainable_count(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


def _layer_count(model, names):
    return sum(int(np.prod(v.shape)) for name in names for v in model.get_layer(name).weights)


@pytest.mark.parametrize("mode,top_k", [("full", None), ("frozen", None), ("top-k", 1)])
def test_finetune_modes_change_exactly_the_intended_weights(rng, mode, top_k):
    backbone = _backbone(50, num_layers=3, dropout=0.1)
    classifier = models.bert_classifier(backbone, num_classes=3)
    trainable = models.set_finetune_mode(classifier, mode, top_k)
    expected = {"full": [layer.name for layer in classifier.layers if layer.weights],
                "frozen": ["classifier"], "top-k": ["block_2", "pooler", "classifier"]}[mode]
    assert trainable == expected
    assert _trainable_count(classifier) == _layer_count(classifier, expected)
    if mode == "full":
        assert _trainable_count(classifier) == classifier.count_params()
    if mode == "frozen":
        assert _trainable_count(classifier) == (D_MODEL + 1) * 3
    before = {v.path: v.numpy() for v in classifier.weights}
    training.compile_model(classifier, training.select_plan("float32", jit_compile=False),
                           optimizer=training.adamw(1e-2), loss="sparse_categorical_crossentropy")
    x = _inputs(rng, 50, batch=8)
    classifier.fit(x, rng.integers(0, 3, size=8), epochs=2, batch_size=4, verbose=0)
    trained_paths = {v.path for v in classifier.trainable_weights}
    for v in classifier.weights:
        if v.path in trained_paths:
            assert not np.array_equal(before[v.path], v.numpy()), v.path
        else:
            np.testing.assert_array_equal(before[v.path], v.numpy(), err_msg=v.path)  # bit-identical
    with pytest.raises(ValueError, match="top_k"):
        models.set_finetune_mode(classifier, "top-k", 4)
    with pytest.raises(ValueError, match="mode"):
        models.set_finetune_mode(classifier, "partial")


def _hostile_strings():
    return ["a good book", "", " ".join(["sea"] * 5_000), "très bien 😀 日本語", "[CLS] [SEP] [MASK] [PAD]"]


def test_string_in_classifier_reloads_and_its_export_serves_in_a_strict_tf_only_process(tmp_path, tokenizer):
    classifier = models.bert_classifier(_backbone(tokenizer.vocabulary_size), num_classes=2)
    classifier.get_layer("classifier").set_weights([np.random.default_rng(0).normal(size=(D_MODEL, 2)),
                                                    np.array([0.1, -0.1])])
    preprocessor = text.BertPreprocessor(tokenizer, 24)
    text_model = models.with_preprocessor(classifier, preprocessor)
    expected = np.asarray(text_model(tf.constant(_hostile_strings())))
    assert expected.shape == (5, 2) and np.allclose(expected.sum(1), 1, atol=1e-5)
    training.save_keras_atomically(text_model, tmp_path / "bert.keras")
    reloaded = keras.models.load_model(tmp_path / "bert.keras")
    np.testing.assert_allclose(reloaded(tf.constant(_hostile_strings())), expected, atol=1e-5)

    path = export.export_saved_model(classifier, tmp_path, "bert", preprocessor=preprocessor)
    assert_no_xla(path)  # no Xla* op, no XLA-marked function: servable by a TF Serving without XLA
    result = run_tf_only(f"""
        import json
        path = newest_version({str(tmp_path / "bert")!r})
        serving = tf.saved_model.load(path).signatures["serving_default"]
        out = serving(text=tf.constant({_hostile_strings()!r}))
        print(json.dumps(dict(outputs=sorted(serving.structured_outputs),
                              probabilities=out["probabilities"].numpy().tolist(),
                              label=out["label"].numpy().tolist())))
        try:
            session_run(path, "serving_default", {{"text": np.array(b"a good book", dtype=object)}})
            print("rank-0 request: no error")
        except tf.errors.InvalidArgumentError:
            print("rank-0 request: InvalidArgumentError")
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.splitlines()[0])
    assert report["outputs"] == ["label", "probabilities"]
    np.testing.assert_allclose(report["probabilities"], expected, atol=1e-5)
    assert report["label"] == expected.argmax(1).tolist()
    assert "rank-0 request: InvalidArgumentError" in result.stdout
    assert path.endswith("1")
