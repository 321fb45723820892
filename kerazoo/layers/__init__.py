"""Serializable Keras layers for Transformer language models (all registered under package "kerazoo")."""

from kerazoo.layers.attention import MultiHeadCrossAttention, MultiHeadSelfAttention
from kerazoo.layers.embedding import TokenAndPositionEmbedding
from kerazoo.layers.position import PositionalEncoding, PositionEmbedding, sinusoidal_encoding
from kerazoo.layers.transformer import TransformerBlock, TransformerDecoderBlock

__all__ = [
    "MultiHeadCrossAttention",
    "MultiHeadSelfAttention",
    "PositionalEncoding",
    "PositionEmbedding",
    "TokenAndPositionEmbedding",
    "TransformerBlock",
    "TransformerDecoderBlock",
    "sinusoidal_encoding",
]
