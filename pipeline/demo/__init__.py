"""The listening page (`maestro-xl demo`): `studio` turns a request into a take with the generate stage's code, `page`
is the Gradio app around it. Nothing in the pipeline imports it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class DemoParams:
    """The `demo:` section of params.yaml; the sampling settings come from `generate:`."""

    seconds: float = 20.0  # the page's default length of new music
    max_seconds: float = 120.0  # the longest a visitor may ask for
    max_upload_mb: float = 2.0  # a larger primer upload is refused with a message
