"""kerazoo.finetune: freezing, LoRA, adapters, prompt tuning, adversarial training, Reptile."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerazoo import export, finetune, layers, models, text
from tf_only import assert_no_xla, run_tf_only

VOCAB, D_MODEL, FF_DIM, LAYERS = 60, 32, 64, 2


def _classifier(seed=0):
    """A small BERT classifier whose weights depend only on `seed` (the "pretrained" base)."""
    keras.utils.set_random_seed(seed)
    backbone = models.bert_backbone(VOCAB, max_length=16, d_model=D_MODEL, num_heads=2, num_layers=LAYERS,
                                    ff_dim=FF_DIM, dropout=0.0)
    classifier = models.bert_classifier(backbone, num_classes=2, dropout=0.0)
    # A non-zero head, so that outputs depend on every layer.
    classifier.get_layer("classifier").set_weights([np.random.default_rng(seed).normal(size=(D_MODEL, 2)),
                                                    np.zeros(2)])
    return classifier


def _lm(seed=0):
    keras.utils.set_random_seed(seed)
    return models.transformer_lm(vocab_size=VOCAB, max_length=16, d_model=D_MODEL, num_heads=2, num_layers=LAYERS,
                                 ff_dim=FF_DIM)


def _batch(rng, batch=8, length=10):
    token_ids = rng.integers(5, VOCAB, size=(batch, length)).astype("int32")
    padding_mask = np.ones((batch, length), "int32")
    padding_mask[1, 6:] = 0
    token_ids[1, 6:] = 0
    x = {"token_ids": token_ids, "segment_ids": np.zeros((batch, length), "int32"), "padding_mask": padding_mask}
    # Learnable labels: whether token 7 ... 29 outnumber the rest.
    y = ((token_ids >= 7) & (token_ids < 30)).sum(1) > 5
    return x, y.astype("int32")


def _train(model, x, y, steps=6, learning_rate=1e-2):
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=steps, batch_size=len(y), verbose=0)


def _snapshot(model):
    return {v.path: v.numpy().copy() for v in model.weights}


def _check_only_trainable_changed(model, before, trained):
    """Every trained weight moved; every other weight is bit-identical."""
    for v in model.weights:
        if v.path in trained:
            assert not np.array_equal(before[v.path], v.numpy()), f"{v.path} did not train"
        elif v.path in before:
            np.testing.assert_array_equal(before[v.path], v.numpy(), err_msg=v.path)


def _params(layer):
    return sum(int(np.prod(v.shape)) for v in layer.weights)


def test_freezing_policies_train_exactly_the_weights_they_name(rng):
    classifier = _classifier()
    block = _params(classifier.get_layer("block_0"))
    head = _params(classifier.get_layer("pooler")) + _params(classifier.get_layer("classifier"))
    embeddings = sum(_params(classifier.get_layer(n)) for n in ("embedding", "segment_embedding", "embedding_norm"))
    assert classifier.count_params() == embeddings + LAYERS * block + head
    expected = {"full": classifier.count_params(), "head": head, "all": 0, "embeddings": LAYERS * block + head}
    for policy, count in expected.items():
        assert finetune.freeze(classifier, policy) == count, policy
    assert finetune.freeze(classifier, "top_k", k=1) == block + head
    report = finetune.trainable_report(classifier, print_fn=None)
    assert [row[0] for row in report.rows] == ["embeddings", "block_0", "block_1", "head"]
    assert report.total == classifier.count_params() and report.trainable == block + head
    assert report.rows[1][1] == 0 and report.rows[2][1] == block and "trainable" in str(report)

    x, y = _batch(rng)
    before, trained = _snapshot(classifier), {v.path for v in classifier.trainable_weights}
    _train(classifier, x, y)
    _check_only_trainable_changed(classifier, before, trained)

    lm = _lm()  # tied embeddings: the head is the final norm
    assert finetune.freeze(lm, "head") == 2 * D_MODEL
    with pytest.raises(ValueError, match="k"):
        finetune.freeze(lm, "top_k", k=3)
    with pytest.raises(ValueError, match="policy"):
        finetune.freeze(lm, "some")
    with pytest.raises(ValueError, match="TransformerBlock"):
        finetune.freeze(keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)]), "head")


def test_lora_starts_unchanged_trains_only_its_factors_and_merges(rng):
    classifier = _classifier()
    x, y = _batch(rng)
    reference, base_params = np.asarray(classifier(x)), classifier.count_params()
    rank = 4
    adapted = finetune.apply_lora(classifier, rank, alpha=8)
    assert adapted == [f"block_{i}/attention/{name}" for i in range(LAYERS) for name in ("qkv", "output")]
    np.testing.assert_array_equal(classifier(x), reference)  # B = 0: the same function
    head = _params(classifier.get_layer("pooler")) + _params(classifier.get_layer("classifier"))
    lora = LAYERS * rank * ((D_MODEL + 3 * D_MODEL) + (D_MODEL + D_MODEL))
    assert finetune.count_params(classifier.trainable_weights) == lora + head
    assert all("lora_kernel" in v.path or v.path.startswith(("pooler/", "classifier/"))
               for v in classifier.trainable_weights)

    before, trained = _snapshot(classifier), {v.path for v in classifier.trainable_weights}
    _train(classifier, x, y)
    _check_only_trainable_changed(classifier, before, trained)
    unmerged = np.asarray(classifier(x))
    assert not np.allclose(unmerged, reference, atol=1e-4)

    merged = finetune.merge_lora(classifier)
    assert sorted(merged) == sorted(adapted)
    assert not any("lora" in v.path for v in classifier.weights)
    assert classifier.count_params() == base_params
    np.testing.assert_allclose(classifier(x), unmerged, atol=1e-5)
    assert finetune.merge_lora(classifier) == []


def test_lora_on_the_feed_forward_of_a_language_model_merges_to_the_same_logits(rng):
    lm = _lm()
    ids = rng.integers(1, VOCAB, size=(4, 12)).astype("int32")
    reference = np.asarray(lm(ids))
    finetune.apply_lora(lm, 2, targets=("ff_inner", "ff_output"), train_head=False)
    np.testing.assert_array_equal(lm(ids), reference)
    assert finetune.count_params(lm.trainable_weights) == LAYERS * 2 * ((D_MODEL + FF_DIM) + (FF_DIM + D_MODEL))
    lm.compile(optimizer=keras.optimizers.Adam(1e-2),
               loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    lm.fit(ids[:, :-1], ids[:, 1:], epochs=3, verbose=0)
    unmerged = np.asarray(lm(ids))
    finetune.merge_lora(lm)
    np.testing.assert_allclose(lm(ids), unmerged, atol=1e-4)
    with pytest.raises(ValueError, match="targets"):
        finetune.apply_lora(lm, 2, targets=("values",))
    with pytest.raises(ValueError, match="rank"):
        finetune.apply_lora(lm, 0)


def test_lora_on_the_token_embedding_trains_alone_merges_reloads_and_reaches_a_tied_output(rng, tmp_path):
    classifier = _classifier()
    x, y = _batch(rng)
    reference = np.asarray(classifier(x))
    adapted = finetune.apply_lora(classifier, 2, targets=("qkv",), embedding_rank=3)
    assert adapted[-1] == "embedding/token_embedding" and len(adapted) == LAYERS + 1
    np.testing.assert_array_equal(classifier(x), reference)
    head = _params(classifier.get_layer("pooler")) + _params(classifier.get_layer("classifier"))
    expected = LAYERS * 2 * (D_MODEL + 3 * D_MODEL) + 3 * (VOCAB + D_MODEL) + head
    assert finetune.count_params(classifier.trainable_weights) == expected
    before, trained = _snapshot(classifier), {v.path for v in classifier.trainable_weights}
    assert {p for p in trained if "lora_embeddings" in p} == {"embedding/token_embedding/"
                                                             f"lora_embeddings_{ab}" for ab in "ab"}
    _train(classifier, x, y)
    _check_only_trainable_changed(classifier, before, trained)  # the table itself is bit-identical
    unmerged = np.asarray(classifier(x))
    finetune.save_adapters(classifier, tmp_path / "lora.npz")

    fresh = _classifier()
    finetune.apply_lora(fresh, 2, targets=("qkv",), embedding_rank=3)
    finetune.load_adapters(fresh, tmp_path / "lora.npz")
    np.testing.assert_array_equal(fresh(x), unmerged)
    with pytest.raises(ValueError, match="token_embedding already has LoRA"):
        finetune.apply_lora(fresh, 2, targets=("attention_output",), embedding_rank=3)
    assert not fresh.get_layer("block_0").attention.output_dense.lora_enabled  # checked before any change
    finetune.merge_lora(classifier)
    assert not any("lora" in v.path for v in classifier.weights)
    np.testing.assert_allclose(classifier(x), unmerged, atol=1e-5)

    # A tied LM head reads the table through the same update: merged and unmerged logits agree only if
    # the output projection used it too (the merge puts it in both places).
    lm = _lm()
    ids = rng.integers(1, VOCAB, size=(4, 12)).astype("int32")
    finetune.apply_lora(lm, 2, train_head=False, embedding_rank=2)
    table = lm.get_layer("embedding").token_embedding
    table.lora_embeddings_b.assign(rng.normal(size=(2, D_MODEL)))
    unmerged = np.asarray(lm(ids))
    looked_up = np.asarray(table(ids))
    finetune.merge_lora(lm)
    np.testing.assert_allclose(lm(ids), unmerged, atol=1e-4)
    np.testing.assert_allclose(table(ids), looked_up, atol=1e-6)
    with pytest.raises(ValueError, match="embedding_rank"):
        finetune.apply_lora(_lm(), 2, embedding_rank=0)


def test_adapter_only_file_loads_onto_a_fresh_base_and_the_merged_model_serves(rng, tmp_path):
    classifier = _classifier()
    x, y = _batch(rng)
    finetune.apply_lora(classifier, 4)
    _train(classifier, x, y)
    expected = np.asarray(classifier(x))
    size = finetune.save_adapters(classifier, tmp_path / "lora.npz")
    classifier.save_weights(tmp_path / "full.weights.h5")
    assert size < 0.25 * (tmp_path / "full.weights.h5").stat().st_size

    fresh = _classifier()  # the same "pretrained" base, built again
    with pytest.raises(ValueError, match="apply_lora"):
        finetune.load_adapters(fresh, tmp_path / "lora.npz")
    finetune.apply_lora(fresh, 4)
    loaded = finetune.load_adapters(fresh, tmp_path / "lora.npz")
    assert len(loaded) == 4 * LAYERS + 4  # A and B of 2 layers per block, pooler and classifier
    np.testing.assert_array_equal(fresh(x), expected)
    wrong_rank = _classifier()
    finetune.apply_lora(wrong_rank, 2)
    with pytest.raises(ValueError, match="shape"):
        finetune.load_adapters(wrong_rank, tmp_path / "lora.npz")

    finetune.merge_lora(fresh)
    tokenizer = text.learn_bert_vocabulary(["a good film", "a bad film", "the plot was dull"] * 3, vocab_size=VOCAB)
    preprocessor = text.BertPreprocessor(tokenizer, 16)
    strings = ["a good film", "the plot was dull", ""]
    want = np.asarray(models.with_preprocessor(fresh, preprocessor)(tf.constant(strings)))
    path = export.export_saved_model(fresh, tmp_path, "lora", preprocessor=preprocessor)
    assert_no_xla(path)
    result = run_tf_only(f"""
        import json
        serving = tf.saved_model.load(newest_version({str(tmp_path / "lora")!r})).signatures["serving_default"]
        print(json.dumps(serving(text=tf.constant({strings!r}))["probabilities"].numpy().tolist()))
    """)
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_allclose(json.loads(result.stdout.splitlines()[0]), want, atol=1e-5)


def test_bottleneck_adapters_start_as_identity_train_alone_and_reload(rng, tmp_path):
    classifier = _classifier()
    x, y = _batch(rng)
    reference = np.asarray(classifier(x))
    finetune.apply_adapters(classifier, 4, train_head=False)
    np.testing.assert_array_equal(classifier(x), reference)
    per_adapter = 2 * D_MODEL * 4 + 4 + D_MODEL
    assert finetune.count_params(classifier.trainable_weights) == LAYERS * 2 * per_adapter
    before, trained = _snapshot(classifier), {v.path for v in classifier.trainable_weights}
    _train(classifier, x, y)
    _check_only_trainable_changed(classifier, before, trained)
    expected = np.asarray(classifier(x))
    assert not np.allclose(expected, reference, atol=1e-4)
    finetune.save_adapters(classifier, tmp_path / "adapters.npz")

    fresh = _classifier()
    finetune.apply_adapters(fresh, 4, train_head=False)
    finetune.load_adapters(fresh, tmp_path / "adapters.npz")
    np.testing.assert_array_equal(fresh(x), expected)
    # The block's config carries adapter_dim: a saved model reloads with its adapters.
    classifier.save(tmp_path / "adapted.keras")
    np.testing.assert_allclose(keras.models.load_model(tmp_path / "adapted.keras")(x), expected, atol=1e-6)
    with pytest.raises(ValueError, match="already has adapters"):
        finetune.apply_adapters(fresh, 4)


def test_soft_prompt_inserts_positions_extends_masks_and_keeps_padding_masked(rng, tmp_path):
    prompt = layers.SoftPrompt(3, insert_at=1)
    hidden = rng.normal(size=(2, 5, 8)).astype("float32")
    mask = np.array([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], "int32")
    out, extended = prompt(hidden, padding_mask=mask)
    np.testing.assert_array_equal(extended, [[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 0, 0]])
    np.testing.assert_array_equal(out[:, 0], hidden[:, 0])
    np.testing.assert_array_equal(out[:, 1:4], np.broadcast_to(prompt.prompts.numpy(), (2, 3, 8)))
    np.testing.assert_array_equal(out[:, 4:], hidden[:, 1:])
    np.testing.assert_array_equal(prompt(out, strip=True), hidden)
    with pytest.raises(ValueError, match="num_prompts"):
        layers.SoftPrompt(0)

    # The pretrainer's last block computes the masked positions only: behind the prompt they are shifted.
    # Oracle: the prompt-tuned backbone's full (prompt-stripped) output, gathered, through the MLM head.
    backbone = models.bert_backbone(VOCAB, max_length=16, d_model=D_MODEL, num_heads=2, num_layers=LAYERS,
                                    ff_dim=FF_DIM, dropout=0.0)
    pretrainer = models.bert_pretrainer(backbone)
    tuned_pretrainer, tuned_backbone = finetune.prompt_tune(pretrainer, 3), finetune.prompt_tune(backbone, 3)
    prompts = rng.normal(size=(3, D_MODEL)).astype("float32")
    for model in (tuned_pretrainer, tuned_backbone):
        model.get_layer("soft_prompt").prompts.assign(prompts)
    x, _ = _batch(rng)
    positions = np.tile(np.array([[1, 4, 5]], "int32"), (len(x["token_ids"]), 1))
    hidden = np.take_along_axis(np.asarray(tuned_backbone(x)["sequence_output"]), positions[:, :, None], 1)
    head = pretrainer.get_layer("mlm_norm")(pretrainer.get_layer("mlm_transform")(hidden))
    expected = pretrainer.get_layer("mlm_bias")(backbone.get_layer("embedding")(head, reverse=True))
    np.testing.assert_allclose(tuned_pretrainer(dict(x, masked_positions=positions))["mlm"], expected, atol=1e-4)

    classifier = _classifier()
    x, y = _batch(rng)
    tuned = finetune.prompt_tune(classifier, 4)
    assert tuned.get_layer("soft_prompt").insert_at == 1  # after [CLS]
    tuned.get_layer("soft_prompt").prompts.assign(rng.normal(size=(4, D_MODEL)) * 3)
    out = np.asarray(tuned(x))
    # The prompts are attended to (small weights at init: a small but real change, float error is ~1e-7).
    assert out.shape == (8, 2) and np.abs(out - classifier(x)).max() > 1e-5
    # Padded positions still do not matter.
    noisy = dict(x, token_ids=np.where(x["padding_mask"] == 1, x["token_ids"], 17).astype("int32"))
    np.testing.assert_allclose(tuned(noisy), out, atol=1e-6)
    head = _params(classifier.get_layer("pooler")) + _params(classifier.get_layer("classifier"))
    assert finetune.count_params(tuned.trainable_weights) == 4 * D_MODEL + head
    before, trained = _snapshot(tuned), {v.path for v in tuned.trainable_weights}
    _train(tuned, x, y)
    _check_only_trainable_changed(tuned, before, trained)
    finetune.save_adapters(tuned, tmp_path / "prompt.npz")  # the prompts and the head
    fresh = finetune.prompt_tune(_classifier(), 4)
    assert len(finetune.load_adapters(fresh, tmp_path / "prompt.npz")) == 1 + 4
    np.testing.assert_array_equal(fresh(x), tuned(x))

    lm = _lm()
    tuned_lm = finetune.prompt_tune(lm, 2)
    ids = rng.integers(1, VOCAB, size=(2, 6)).astype("int32")
    assert tuned_lm.get_layer("soft_prompt").insert_at == 0 and tuned_lm(ids).shape == (2, 6, VOCAB)
    # Causal: the first token now sees the prompts, so its logits change.
    assert not np.allclose(tuned_lm(ids)[:, 0], lm(ids)[:, 0], atol=1e-4)


def test_fgm_perturbation_has_norm_epsilon_raises_the_loss_and_leaves_a_frozen_table_untouched(rng):
    classifier = _classifier()
    x, y = _batch(rng)
    finetune.apply_lora(classifier, 2)
    adversarial = finetune.AdversarialModel(classifier, epsilon=0.5)
    adversarial.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    table = classifier.get_layer("embedding").token_embedding.embeddings
    loss = keras.losses.SparseCategoricalCrossentropy()
    clean_table = table.numpy().copy()
    clean = float(loss(y, classifier(x)))
    delta = np.asarray(adversarial.perturbation(x, y))
    assert np.linalg.norm(delta) == pytest.approx(0.5, rel=1e-5)
    used = np.unique(x["token_ids"][x["padding_mask"] == 1])
    assert np.abs(delta).sum(1).nonzero()[0].tolist() == used.tolist()  # only the batch's tokens move
    np.testing.assert_array_equal(table.numpy(), clean_table)
    table.assign(clean_table + delta)
    assert float(loss(y, classifier(x))) > clean
    table.assign(clean_table)
    pgd = finetune.AdversarialModel(classifier, epsilon=0.5, pgd_steps=3)
    pgd.compile(optimizer="sgd", loss="sparse_categorical_crossentropy")
    assert np.linalg.norm(pgd.perturbation(x, y)) <= 0.5 + 1e-5

    before, trained = _snapshot(classifier), {v.path for v in classifier.trainable_weights}
    history = adversarial.fit(x, y, epochs=4, batch_size=8, verbose=0).history
    assert set(history) == {"loss", "adversarial_loss"}
    assert all(a > c for a, c in zip(history["adversarial_loss"], history["loss"]))
    _check_only_trainable_changed(classifier, before, trained)  # the embedding table included
    with pytest.raises(ValueError, match="epsilon"):
        finetune.AdversarialModel(classifier, epsilon=0)


def _topic_family(num_topics=4, words_per_topic=6, length=8, shots=10):
    """Few-shot text classification: a task picks 2 of the topics and a random label order.

    Every sentence has words from its topic and from a shared noise pool;
    the label is which of the task's two topics it is about. Tasks share the
    topics, not the labels: a good initialisation knows the topics.
    """
    noise = np.arange(1 + num_topics * words_per_topic, 1 + num_topics * words_per_topic + 8)

    def sample(rng, count=shots):
        topics = rng.choice(num_topics, size=2, replace=False)
        labels = rng.integers(0, 2, size=count)
        topic_words = 1 + topics[labels][:, None] * words_per_topic + rng.integers(0, words_per_topic, (count, 3))
        ids = np.concatenate([topic_words, rng.choice(noise, size=(count, length - 3))], axis=1)
        return rng.permuted(ids, axis=1).astype("int32"), labels.astype("int32")

    return sample, int(noise[-1]) + 1


def test_reptile_initialisation_adapts_to_new_tasks_better_than_a_plain_one():
    sample, vocab_size = _topic_family()

    def build():
        model = keras.Sequential([keras.Input((None,), dtype="int32"), keras.layers.Embedding(vocab_size, 16),
                                  keras.layers.GlobalAveragePooling1D(), keras.layers.Dense(2)])
        model.compile(optimizer=keras.optimizers.SGD(5.0),  # averaged embeddings: small gradients
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        return model

    def few_shot_accuracy(weights, tasks=20, steps=5):
        model, rng, correct = build(), np.random.default_rng(99), []
        for _ in range(tasks):
            model.set_weights(weights)
            x, y = sample(rng, count=20)  # 10 to adapt on, 10 to score
            finetune.adapt(model, x[:10], y[:10], steps)
            correct.append(np.mean(model.predict_on_batch(x[10:]).argmax(1) == y[10:]))
        return float(np.mean(correct))

    keras.utils.set_random_seed(0)
    model = build()
    plain = model.get_weights()
    losses = finetune.reptile(model, sample, meta_steps=150, inner_steps=5, meta_learning_rate=0.5)
    assert len(losses) == 150 and np.mean(losses[-30:]) < np.mean(losses[:30])
    meta, baseline = few_shot_accuracy(model.get_weights()), few_shot_accuracy(plain)
    assert meta > baseline + 0.15, (meta, baseline)
    with pytest.raises(ValueError, match="meta_steps"):
        finetune.reptile(model, sample, meta_steps=0)
