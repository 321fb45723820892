"""Serializable Keras layers for Transformer language models (all registered under package "kerazoo")."""

from kerazoo.layers.attention import MultiHeadSelfAttention
from kerazoo.layers.embedding import TokenAndPositionEmbedding
from kerazoo.layers.position import PositionalEncoding, PositionEmbedding, sinusoidal_encoding
from kerazoo.layers.transformer import TransformerBlock

__all__ = [
    "MultiHeadSelfAttention",
    "PositionalEncoding",
    "PositionEmbedding",
    "TokenAndPositionEmbedding",
    "TransformerBlock",
    "sinusoidal_encoding",
]
