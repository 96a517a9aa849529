"""The `generate:` section of params.yaml as a dataclass, in a module without torch, so that the command line can show
its defaults in its help without loading the model's libraries."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class GenerateParams:
    """The `generate:` section of params.yaml; `maestro-xl generate` options override it."""

    samples: int = 4  # per primer and composer
    seconds: float = 30.0  # of new music per sample
    wav_samples: int = 4  # WAV files for the first this many samples only (each 30 s is 2.6 MB)
    temperature: float = 1.0
    top_k: int = 0  # 0: off
    top_p: float = 0.98  # 1: off
    seed: int = 1234  # sample i draws from its own generator, seeded seed + i
    primers: list = field(default_factory=list)  # validation piece ids; empty: unconditional samples
    # samples for each (names or surnames in vocab.json; none: no composer given); []: no composer at all
    composers: list = field(default_factory=lambda: ["Chopin", "Beethoven", "Bach", "none"])
    guidance: float = 1.0  # classifier-free guidance of the composer label: 1 is plain conditioning, 0 ignores it
    primer_seconds: float = 10.0  # of each primer
    keep_primer: bool = True  # the output begins with the primer
    stop_at_piece_end: bool = False  # let the model end a sample early; False samples each to its full length
    max_note_s: float = 8.0  # the decoding rule: a key sounding this long is released (0: off)
    mem_len: int | None = None  # hidden states kept per layer while sampling; None: twice the model's own
    precision: str = "auto"  # float32, bfloat16 (weights' matmuls), or auto: bfloat16 where it pays (decode_dtype)
    device: str = "auto"  # auto, cuda or cpu
