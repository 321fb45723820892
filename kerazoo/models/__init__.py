"""Builders that return plain functional `keras.Model`s."""

from kerazoo.models.transformer_lm import transformer_lm

__all__ = ["transformer_lm"]
