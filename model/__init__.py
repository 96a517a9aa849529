"""Transformer-XL language model, independent of music and of the pipeline."""
