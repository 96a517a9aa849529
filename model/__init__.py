"""Transformer-XL language model and sampling from it, independent of music and of the pipeline."""

from model.generate import filter_logits, generate, sample
from model.transformer_xl import DecodeCache, TransformerXL, TransformerXLConfig

__all__ = ["DecodeCache", "TransformerXL", "TransformerXLConfig", "filter_logits", "generate", "sample"]
