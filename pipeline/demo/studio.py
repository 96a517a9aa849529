"""What the listening page does, without the page: one request (a primer, a composer, the sampling settings) to one
take (MIDI, WAV, piano roll and the sample's record), through the generate stage's own functions.

The model is loaded once. Each take is written to a folder of its own; while it is sampled, `on_progress` gets the
share done and the notes so far, for the page to draw. Every input a visitor can get wrong is a PipelineError of one
line, with file names and not the server's paths.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.composers import ANY, resolve, unlabelled
from pipeline.demo import RANGES
from pipeline.errors import PipelineError
from pipeline.generate import check_params, model_labels, open_model, write_sample
from pipeline.generation.decoding import sample_batch
from pipeline.generation.primers import Primer, primer_from_midi, primer_from_piece, unconditional
from pipeline.model_folder import model_vocab, reads_texture
from pipeline.music.audio import synthesizer
from pipeline.music.midi import cut_notes
from pipeline.music.performance_encoding import STEP_S, decode, elapsed_steps
from pipeline.params import DemoParams, GenerateParams

# The page's names of the settings that RANGES and demo.max_seconds limit.
LABELS = {"primer_seconds": "seconds of the primer", "guidance": "guidance", "temperature": "temperature",
          "top_p": "top-p", "seconds": "seconds to generate"}  # fmt: skip
PROGRESS_EVERY_S = 0.25  # the least time between two calls of on_progress
KEEP_TAKES = 16  # take folders kept on disk; older ones are removed (the page copies each take as it serves it)
Progress = Callable[[float, dict[str, np.ndarray], float], None]  # the share done, the notes so far, the primer's end


@dataclass
class Request:
    """One press of Generate: the primer (an uploaded file, a validation piece, or neither) and the settings."""

    upload: Path | None = None
    piece: int | None = None
    primer_seconds: float = 10.0
    composer: str = ANY
    guidance: float = 1.0
    seconds: float = 20.0
    temperature: float = 1.0
    top_p: float = 0.98
    seed: int = 1234


@dataclass
class Take:
    """A finished request: its files, the primer's length, and the record `write_sample` made."""

    midi: Path
    wav: Path | None
    png: Path
    primer_seconds: float
    record: dict


class Studio:
    """The model loaded once, and requests turned into takes."""

    def __init__(self, model_dir: Path, tokens: Path, settings: GenerateParams, limits: DemoParams) -> None:
        self.settings = dataclasses.replace(settings, samples=1, wav_samples=1, keep_primer=True, primers=[])
        self.model, self.dtype, self.span = open_model(Path(model_dir), self.settings, 1)
        reads = reads_texture(self.model.cfg)  # the tracks a model that reads one draws from
        vocab = model_vocab(Path(model_dir), tokens) if self.model.cfg.n_labels or reads else {}
        labels = model_labels(self.model, model_dir, vocab) if self.model.cfg.n_labels else []
        self.textures = vocab.get("textures") if reads else None
        self.labels, self.tokens, self.limits = labels, Path(tokens), limits
        self.offered = self._validation_pieces()  # read once: the token folder does not change while the page serves
        self.synth = synthesizer()
        self.folder = Path(tempfile.mkdtemp(prefix="maestro-xl-demo-"))
        self.takes, self.lock = 0, threading.Lock()

    def close(self) -> None:
        """Remove the takes' folder."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def composers(self) -> list[str]:
        """The composer choices: any, then vocab.json's labels."""
        return [ANY, *(entry["composer"] for entry in self.labels)]

    def pieces(self) -> dict[str, int]:
        """The validation pieces to start from, 'piece 32 · Bach · 99 s' -> 32; none without the token folder."""
        return self.offered

    def _validation_pieces(self) -> dict[str, int]:
        path = self.tokens / "validation" / "index.json"
        if not path.is_file():
            return {}
        index = json.loads(path.read_text())
        composers = index.get("composer", ["?"] * len(index["piece_id"]))
        rows = zip(index["piece_id"], index["stretch"], composers, index.get("seconds", index["length"]), strict=True)
        return {f"piece {pid} · {who} · {length:.0f} s": pid for pid, stretch, who, length in rows if stretch == 1.0}

    def primer(self, request: Request) -> Primer:
        """The request's primer: its upload (checked for size first), its validation piece, or none."""
        if request.upload is not None:
            path = Path(request.upload)
            size = path.stat().st_size if path.is_file() else 0
            if size > self.limits.max_upload_mb * 2**20:
                raise PipelineError(
                    f"{path.name}: {size / 2**20:.2f} MB, over the {self.limits.max_upload_mb:g} MB an upload may be"
                )
            try:
                return primer_from_midi(path, request.primer_seconds)
            except PipelineError as exc:
                raise PipelineError(str(exc).replace(str(path), path.name)) from exc
        if request.piece is not None:
            if int(request.piece) not in self.offered.values():
                raise PipelineError(f"validation piece {request.piece}: not among the pieces this page offers")
            return primer_from_piece(self.tokens, int(request.piece), request.primer_seconds)
        return unconditional()

    def check(self, request: Request) -> None:
        """Refuse a request outside the page's limits (RANGES and demo.max_seconds), whether it came from the page or
        from its API: a PipelineError that names the setting and its range."""
        bounds = {**RANGES, "seconds": (1.0, self.limits.max_seconds)}
        for name, (low, high) in bounds.items():
            value = getattr(request, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not low <= value <= high:
                raise PipelineError(f"{LABELS[name]} must be from {low:g} to {high:g}, not {value!r}")

    def compose(self, request: Request, on_progress: Progress | None = None) -> Take:
        """Sample one take for `request`, calling `on_progress` now and then; PipelineError for a bad request."""
        self.check(request)
        p = dataclasses.replace(
            self.settings,
            seconds=float(request.seconds),
            primer_seconds=float(request.primer_seconds),
            temperature=float(request.temperature),
            top_p=float(request.top_p),
            guidance=float(request.guidance),
            seed=int(request.seed),
        )
        check_params(p)
        label, composer = self.label(request.composer)
        primer = self.primer(request)

        shown = 0.0  # when the notes were last given to on_progress

        def progress(tokens) -> None:  # noqa: ANN001 (the ids so far, [1, steps])
            nonlocal shown
            # Decoding every few tokens would cost as much as sampling them: a few pictures a second are enough.
            if on_progress is not None and time.monotonic() - shown >= PROGRESS_EVERY_S:
                shown = time.monotonic()
                new = tokens[0].cpu().numpy()
                end = (primer.steps + elapsed_steps(new)) * STEP_S
                notes = cut_notes(decode(np.concatenate([primer.tokens, new])), end)
                on_progress(min(1.0, (end - primer.seconds) / p.seconds), notes, primer.seconds)

        # One take at a time, whatever the page's queue does (a visitor who leaves frees its slot while the take
        # goes on): the model is shared, and a take's number names its folder.
        with self.lock:
            rows, _ = sample_batch(
                self.model,
                primer,
                p,
                [p.seed],
                self.dtype,
                self.span,
                label=label,
                progress=progress,
                textures=self.textures,
            )
            self.takes += 1
            number, folder = self.takes, self.folder / f"take-{self.takes:04d}"
            folder.mkdir()
            numbered = sorted(self.folder.iterdir(), key=lambda take: int(take.name.split("-")[1]))
            for old in numbered[:-KEEP_TAKES]:  # the page has served them by now
                shutil.rmtree(old, ignore_errors=True)
        audio = None if isinstance(self.synth, str) else self.synth
        record = write_sample(folder, f"maestro-xl-take-{number}", primer, rows[0], p, audio)
        record = {**record, "composer": composer, "seed": p.seed, "take": number}
        wav = folder / record["wav"] if record["wav"] else None
        return Take(folder / record["midi"], wav, folder / record["png"], primer.seconds, record)

    def label(self, composer: str) -> tuple[int, str | None]:
        """The label of a composer choice (any: none)."""
        if unlabelled(composer):
            return 0, None
        if not self.labels:
            raise PipelineError("this model was trained without composer labels: choose any")
        return resolve([composer], self.labels)[0]
