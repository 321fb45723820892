"""kerazoo: a Keras 3 / TensorFlow model zoo for language models."""

__version__ = "0.1.0"

from kerazoo import data, export, generation, layers, models, text, training  # noqa: E402,F401
