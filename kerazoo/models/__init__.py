"""Builders that return plain functional `keras.Model`s."""

from kerazoo.models.causal_lm import CausalLM
from kerazoo.models.lstm_classifier import lstm_classifier
from kerazoo.models.pipeline import with_preprocessor
from kerazoo.models.seq2seq import rnn_seq2seq, transformer_seq2seq
from kerazoo.models.transformer_lm import transformer_lm

__all__ = ["CausalLM", "lstm_classifier", "rnn_seq2seq", "transformer_lm", "transformer_seq2seq", "with_preprocessor"]
