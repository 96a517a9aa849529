"""Transformer-XL language model (`transformer_xl`) and sampling from it (`sampling`, with the key/value cache of its
one-token steps in `decode_cache`), independent of music and of the pipeline. Only the model is imported here, so code
that trains or scores it does not depend on the sampling code."""

from model.transformer_xl import AttnSpan, TransformerXL, TransformerXLConfig

__all__ = ["AttnSpan", "TransformerXL", "TransformerXLConfig"]
