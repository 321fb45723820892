"""Bottleneck adapter (Houlsby et al., 2019): a small residual MLP inserted into a frozen network."""

import keras


@keras.saving.register_keras_serializable(package="kerazoo")
class BottleneckAdapter(keras.layers.Layer):
    """`x + up(activation(down(x)))`, with `up` zero-initialised so the adapter starts as the identity.

    Parameter-efficient fine-tuning trains only these `2 * d_model *
    adapter_dim` weights (plus biases) per insertion point. Starting at the
    identity keeps the pretrained network's outputs unchanged before the
    first step, as Houlsby et al.'s near-zero initialisation intends.

    Args:
        adapter_dim: bottleneck width.
        activation: activation between the projections.
        **kwargs: base `Layer` arguments.

    Call arguments:
        inputs: `(..., d_model)` tensor.

    Returns:
        A tensor of the input's shape.

    Example:

    >>> x = keras.random.normal((2, 5, 16))
    >>> bool(keras.ops.all(BottleneckAdapter(4)(x) == x))
    True
    """

    def __init__(self, adapter_dim, activation="gelu", **kwargs):
        super().__init__(**kwargs)
        if not isinstance(adapter_dim, int) or adapter_dim < 1:
            raise ValueError(f"`adapter_dim` must be a positive integer; received adapter_dim={adapter_dim!r}.")
        self.adapter_dim = adapter_dim
        self.activation = keras.activations.get(activation)
        self.supports_masking = True

    def build(self, input_shape):
        self.down = keras.layers.Dense(self.adapter_dim, activation=self.activation,
                                       kernel_initializer=keras.initializers.TruncatedNormal(stddev=0.02),
                                       dtype=self.dtype_policy, name="down")
        self.down.build(input_shape)
        self.up = keras.layers.Dense(input_shape[-1], kernel_initializer="zeros", dtype=self.dtype_policy,
                                     name="up")
        self.up.build(tuple(input_shape[:-1]) + (self.adapter_dim,))

    def call(self, inputs):
        return inputs + self.up(self.down(inputs))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(adapter_dim=self.adapter_dim, activation=keras.activations.serialize(self.activation))
        return config
