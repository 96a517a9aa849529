"""Transformer-XL language model (`transformer_xl`) and sampling from it (`sampling`), independent of music and of the
pipeline. Only the model is imported here, so code that trains or scores it does not depend on the sampling code."""

from model.transformer_xl import AttnSpan, DecodeCache, TransformerXL, TransformerXLConfig

__all__ = ["AttnSpan", "DecodeCache", "TransformerXL", "TransformerXLConfig"]
