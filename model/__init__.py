"""Transformer-XL language model, independent of music and of the pipeline."""

from model.transformer_xl import TransformerXL, TransformerXLConfig

__all__ = ["TransformerXL", "TransformerXLConfig"]
