"""Every layer survives get_config/from_config, and a model using all of them reloads from .keras in a fresh process."""

import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from kerazoo.layers import (BottleneckAdapter, MultiHeadSelfAttention, PositionalEncoding, PositionEmbedding,
                            SoftPrompt, TokenAndPositionEmbedding, TransformerBlock)

LAYERS = [
    (MultiHeadSelfAttention(2, key_dim=3, dropout=0.1, causal=True, use_bias=False), (2, 5, 8), "float"),
    (PositionalEncoding(max_length=9), (2, 5, 8), "float"),
    (PositionEmbedding(max_length=9, initializer="he_normal"), (2, 5, 8), "float"),
    (TokenAndPositionEmbedding(11, 9, 8, positions="sinusoidal", mask_zero=True), (2, 5), "int"),
    (TransformerBlock(2, 16, dropout=0.2, causal=True, norm_first=False, activation="relu",
                      layer_norm_epsilon=1e-3), (2, 5, 8), "float"),
    (TransformerBlock(2, 16, adapter_dim=3), (2, 5, 8), "float"),
    (BottleneckAdapter(3, activation="relu"), (2, 5, 8), "float"),
    (SoftPrompt(2, insert_at=1, initializer="ones"), (2, 5, 8), "float"),
]


@pytest.mark.parametrize("layer,shape,kind", LAYERS, ids=lambda v: type(v).__name__)
def test_from_config_rebuilds_the_same_layer(rng, layer, shape, kind):
    x = rng.integers(1, 11, size=shape) if kind == "int" else rng.normal(size=shape).astype("float32")
    expected = layer(x)
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()
    clone(x)
    clone.set_weights(layer.get_weights())
    np.testing.assert_allclose(clone(x), expected, atol=1e-6)


def _model_with_every_layer():
    ids = keras.Input((None,), dtype="int32", name="ids")
    x = TokenAndPositionEmbedding(50, 12, 16, mask_zero=True)(ids)
    x = PositionEmbedding(12)(x)
    x = PositionalEncoding(12)(x)
    x = TransformerBlock(4, 32, causal=True)(x)
    x = TransformerBlock(4, 32, norm_first=False)(x)
    x = MultiHeadSelfAttention(2)(x)
    return keras.Model(ids, keras.layers.Dense(3)(x))


def test_saved_model_reloads_in_a_fresh_process_without_custom_objects(tmp_path, rng):
    model = _model_with_every_layer()
    ids = rng.integers(0, 50, size=(3, 12))
    ids[0, 8:] = 0  # padding, exercised through the Keras mask
    np.savez(tmp_path / "io.npz", ids=ids, expected=model.predict(ids, verbose=0))
    model.save(tmp_path / "model.keras")
    script = textwrap.dedent(f"""
        import numpy as np, keras, kerazoo
        data = np.load({str(tmp_path / "io.npz")!r})
        model = keras.models.load_model({str(tmp_path / "model.keras")!r})
        np.testing.assert_allclose(model.predict(data["ids"], verbose=0), data["expected"], rtol=0, atol=1e-6)
        print("reloaded", [type(layer).__name__ for layer in model.layers[1:6]])
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert ("reloaded ['TokenAndPositionEmbedding', 'PositionEmbedding', 'PositionalEncoding', "
            "'TransformerBlock', 'TransformerBlock']") in result.stdout


def test_loading_without_import_kerazoo_fails_naming_the_kerazoo_class(tmp_path):
    """Keras imports only its own packages while loading; the README and the LM recipe say `import kerazoo`.

    Keras offers no entry point through which a package registers itself for
    `load_model`, so the failure is Keras's own TypeError; this pins down that
    it names the kerazoo class and module, which the README's note explains.
    """
    _model_with_every_layer().save(tmp_path / "model.keras")
    script = textwrap.dedent(f"""
        import keras
        try:
            keras.models.load_model({str(tmp_path / "model.keras")!r})
        except TypeError as error:
            print("TypeError:", "Could not locate class 'TokenAndPositionEmbedding'" in str(error),
                  "'module': 'kerazoo.layers.embedding'" in str(error))
        import kerazoo
        print("after import kerazoo:", type(keras.models.load_model({str(tmp_path / "model.keras")!r})).__name__)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "TypeError: True True" in result.stdout and "after import kerazoo: Functional" in result.stdout
