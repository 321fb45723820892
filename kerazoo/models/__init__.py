"""Builders that return plain functional `keras.Model`s."""

from kerazoo.models.lstm_classifier import lstm_classifier
from kerazoo.models.pipeline import with_preprocessor
from kerazoo.models.transformer_lm import transformer_lm

__all__ = ["lstm_classifier", "transformer_lm", "with_preprocessor"]
