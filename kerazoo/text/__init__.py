"""Text → token ids inside the TensorFlow graph (so exported models take raw strings)."""

from kerazoo.text.tokenizers import SPECIAL_TOKENS, CharTokenizer, WordPieceTokenizer
from kerazoo.text.vectorizer import STANDARDIZE_OPTIONS, word_vectorizer

__all__ = ["STANDARDIZE_OPTIONS", "SPECIAL_TOKENS", "CharTokenizer", "WordPieceTokenizer", "word_vectorizer"]
