"""Models from the layers train with XLA and with mixed_bfloat16; the training helper's plan and AdamW setup."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kerazoo import models, training


def _tiny_lm():
    return models.transformer_lm(vocab_size=20, max_length=8, d_model=16, num_heads=2,
                                 num_layers=1, ff_dim=32)


def _fit_losses(plan, rng):
    with plan.policy_scope():
        model = _tiny_lm()
    training.compile_model(model, plan, optimizer=training.adamw(1e-2))
    ids = rng.integers(0, 20, size=(8, 9))
    history = model.fit(ids[:, :-1], ids[:, 1:], epochs=40, batch_size=8, verbose=0)
    return model, history.history["loss"]


def test_tiny_lm_learns_with_xla(rng):
    model, losses = _fit_losses(training.TrainingPlan("float32", True, "test"), rng)
    assert model.jit_compile is True
    assert losses[-1] < 0.5 * losses[0]


def test_tiny_lm_learns_with_mixed_bfloat16(rng):
    plan = training.TrainingPlan("mixed_bfloat16", False, "test")
    model, losses = _fit_losses(plan, rng)
    assert model.get_layer("block_0").compute_dtype == "bfloat16"
    assert model.get_layer("block_0").attention.qkv_dense.kernel.dtype == "float32"
    assert model.output.dtype == "float32"  # logits, so the loss is float32
    assert keras.config.dtype_policy().name == "float32"  # the scope restored the policy
    assert np.isfinite(losses).all() and losses[-1] < 0.5 * losses[0]


def test_select_plan_rules():
    assert training.select_plan("float32") == training.TrainingPlan(
        "float32", True,
        "CPU: precision float32 requested -> float32, jit_compile=True, xla_fusion=False")
    bf16 = training.select_plan("mixed_bfloat16")
    assert (bf16.precision, bf16.jit_compile) == ("mixed_bfloat16", False)
    assert training.select_plan("float32", jit_compile=False).jit_compile is False
    assert training.select_plan("mixed_bfloat16", jit_compile=True).xla_fusion is False
    # Without a model to time, "auto" on a CPU is float32 + XLA (no probe decides it).
    auto = training.select_plan()
    assert (auto.precision, auto.jit_compile, auto.xla_fusion) == ("float32", True, False)


def test_select_plan_rejects_unknown_options():
    with pytest.raises(ValueError, match=r"precision.*'float8'"):
        training.select_plan("float8")
    with pytest.raises(ValueError, match=r"jit_compile.*'yes'"):
        training.select_plan(jit_compile="yes")
    with pytest.raises(TypeError, match="TrainingPlan"):
        training.compile_model(_tiny_lm(), "float32")


def test_adamw_decays_matrices_but_not_vectors():
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.LayerNormalization()(keras.layers.Dense(3)(inputs)))
    plan = training.TrainingPlan("float32", False, "test")
    # A loss with zero gradient leaves weight decay as the only update.
    training.compile_model(model, plan, optimizer=training.adamw(0.1, weight_decay=0.5),
                           loss=lambda y, p: 0.0 * keras.ops.sum(p))
    model.get_layer(index=1).bias.assign(np.ones(3))
    before = [w.numpy().copy() for w in model.trainable_weights]
    model.train_on_batch(np.ones((2, 4)), np.zeros((2, 3)))
    after = [w.numpy() for w in model.trainable_weights]
    kernel, bias, gamma, beta = zip(before, after)
    np.testing.assert_allclose(kernel[1], kernel[0] * (1 - 0.1 * 0.5), rtol=1e-6)
    for old, new in (bias, gamma, beta):
        np.testing.assert_array_equal(new, old)


def test_xla_fusion_plan_trains_like_the_plain_bfloat16_plan(rng):
    ids = rng.integers(0, 20, size=(8, 9))
    losses = {}
    for fusion in (False, True):
        keras.utils.set_random_seed(5)
        plan = training.TrainingPlan("mixed_bfloat16", False, "test", xla_fusion=fusion)
        with plan.scope():
            model = _tiny_lm()
            training.compile_model(model, plan, optimizer=training.adamw(1e-2))
            assert tf.config.optimizer.get_jit() == ("autoclustering" if fusion else "")
            losses[fusion] = model.fit(ids[:, :-1], ids[:, 1:], epochs=5, verbose=0).history["loss"]
        assert tf.config.optimizer.get_jit() == ""  # the scope restored it
    np.testing.assert_allclose(losses[True], losses[False], rtol=2e-2)
    assert losses[True][-1] < losses[True][0]
