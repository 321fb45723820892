"""Serializable Keras layers for Transformer language models (all registered under package "kerazoo")."""

from kerazoo.layers.adapter import BottleneckAdapter
from kerazoo.layers.attention import MultiHeadCrossAttention, MultiHeadSelfAttention
from kerazoo.layers.dropout import FastDropout
from kerazoo.layers.embedding import TokenAndPositionEmbedding
from kerazoo.layers.position import PositionalEncoding, PositionEmbedding, sinusoidal_encoding
from kerazoo.layers.prompt import SoftPrompt
from kerazoo.layers.transformer import TransformerBlock, TransformerDecoderBlock

__all__ = [
    "BottleneckAdapter",
    "FastDropout",
    "MultiHeadCrossAttention",
    "MultiHeadSelfAttention",
    "PositionalEncoding",
    "PositionEmbedding",
    "SoftPrompt",
    "TokenAndPositionEmbedding",
    "TransformerBlock",
    "TransformerDecoderBlock",
    "sinusoidal_encoding",
]
