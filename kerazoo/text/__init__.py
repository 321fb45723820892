"""Text → token ids inside the TensorFlow graph (so exported models take raw strings)."""

from kerazoo.text.tokenizers import END, SPECIAL_TOKENS, START, CharTokenizer, WordPieceTokenizer
from kerazoo.text.vectorizer import STANDARDIZE_OPTIONS, word_vectorizer

__all__ = ["END", "STANDARDIZE_OPTIONS", "SPECIAL_TOKENS", "START", "CharTokenizer", "WordPieceTokenizer", "word_vectorizer"]
