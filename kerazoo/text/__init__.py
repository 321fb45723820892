"""Text → token ids inside the TensorFlow graph (so exported models take raw strings)."""

from kerazoo.text.bert_preprocessing import (BERT_SPECIAL_TOKENS, BertPreprocessor, classification_dataset,
                                             learn_bert_vocabulary, mask_tokens, nsp_pairs, pack_segments,
                                             pretraining_dataset, split_documents)
from kerazoo.text.tokenizers import END, SPECIAL_TOKENS, START, CharTokenizer, WordPieceTokenizer, load_tokenizer
from kerazoo.text.vectorizer import STANDARDIZE_OPTIONS, word_vectorizer

__all__ = ["BERT_SPECIAL_TOKENS", "END", "STANDARDIZE_OPTIONS", "SPECIAL_TOKENS", "START", "BertPreprocessor",
           "CharTokenizer", "WordPieceTokenizer", "classification_dataset", "learn_bert_vocabulary",
           "load_tokenizer", "mask_tokens", "nsp_pairs", "pack_segments", "pretraining_dataset", "split_documents",
           "word_vectorizer"]
