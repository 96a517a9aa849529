"""The listening page (`maestro-xl demo`): `studio` turns a request into a take with the generate stage's code, `page`
is the Gradio app around it. Nothing in the pipeline imports it."""

from __future__ import annotations

# What a visitor may ask for besides the length (demo.max_seconds): the page's sliders span these, and the studio
# refuses anything outside them, so the page and its API keep the same limits.
RANGES = {"primer_seconds": (1.0, 60.0), "guidance": (0.0, 4.0), "temperature": (0.5, 1.5), "top_p": (0.5, 1.0)}
