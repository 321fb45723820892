"""Data: language-modelling corpora and windows, and the embedded sample corpus."""

from kerazoo.data.corpus import lm_dataset, read_text, sample_corpus, split_text

__all__ = ["lm_dataset", "read_text", "sample_corpus", "split_text"]
