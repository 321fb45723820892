"""Shared fixtures: quiet TensorFlow logs, seeded randomness, the default dtype policy restored after each test."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_and_restore_global_state():
    keras.utils.set_random_seed(1234)
    policy = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(policy)
    tf.config.optimizer.set_jit(False)  # a plan with xla_fusion turns auto-clustering on process-wide


@pytest.fixture
def rng():
    return np.random.default_rng(0)
