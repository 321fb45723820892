"""Shared fixtures: quiet TensorFlow logs, seeded randomness, a private plan cache, the default dtype policy restored."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture(autouse=True)
def _seed_and_restore_global_state(tmp_path_factory, monkeypatch):
    keras.utils.set_random_seed(1234)
    # Plans timed by choose_plan are cached here, never in the user's ~/.cache.
    monkeypatch.setenv("KERAZOO_PLAN", str(tmp_path_factory.getbasetemp() / "plans.json"))
    policy = keras.config.dtype_policy()
    yield
    keras.config.set_dtype_policy(policy)


@pytest.fixture
def rng():
    return np.random.default_rng(0)
