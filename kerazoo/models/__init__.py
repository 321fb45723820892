"""Builders that return plain functional `keras.Model`s."""

from kerazoo.models.bert import (FINETUNE_MODES, bert_backbone, bert_classifier, bert_pretrainer,
                                 pretraining_compile_args, set_finetune_mode, with_dropout)
from kerazoo.models.causal_lm import CausalLM
from kerazoo.models.lstm_classifier import lstm_classifier
from kerazoo.models.pipeline import with_preprocessor
from kerazoo.models.seq2seq import rnn_seq2seq, transformer_seq2seq
from kerazoo.models.transformer_lm import transformer_lm
from kerazoo.models.word2vec import (SkipGram, analogy_accuracy, nearest_neighbours, read_analogies, window_pairs,
                                     word2vec)

__all__ = ["CausalLM", "FINETUNE_MODES", "SkipGram", "analogy_accuracy", "bert_backbone", "bert_classifier", "bert_pretrainer",
           "lstm_classifier", "nearest_neighbours", "pretraining_compile_args", "read_analogies", "rnn_seq2seq",
           "set_finetune_mode", "transformer_lm", "transformer_seq2seq", "window_pairs", "with_dropout",
           "with_preprocessor", "word2vec"]
