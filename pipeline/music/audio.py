"""MIDI to WAV with FluidSynth and the General MIDI soundfont from Debian's packages, when they are installed.

FluidSynth renders float samples, which are mixed to mono, cut to the MIDI's own length (FluidSynth lets the reverb
ring on for a couple of seconds), faded out over the last 50 ms so the cut does not click, peak-normalised to -1 dBFS
and written as 16-bit PCM: every sample is equally loud, and a 20-second one takes under 1 MB.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import wave
from pathlib import Path

import numpy as np

from pipeline.atomic import atomic_path
from pipeline.errors import PipelineError

SOUNDFONTS = (Path("/usr/share/sounds/sf2/FluidR3_GM.sf2"), Path("/usr/share/sounds/sf2/default-GM.sf2"))
INSTALL = "sudo apt-get install fluidsynth fluid-soundfont-gm"
SAMPLE_RATE = 22_050
PEAK = 10 ** (-1 / 20)  # -1 dBFS
FADE_S = 0.05


def synthesizer() -> tuple[str, Path] | str:
    """(fluidsynth's path, a soundfont) when both are installed, otherwise the reason they cannot be used."""
    fluidsynth = shutil.which("fluidsynth")
    soundfont = next((path for path in SOUNDFONTS if path.is_file()), None)
    if fluidsynth is None:
        return f"fluidsynth is not installed (install it and the soundfont with: {INSTALL})"
    if soundfont is None:
        return f"no General MIDI soundfont at {SOUNDFONTS[0]} (install it with: {INSTALL})"
    return fluidsynth, soundfont


def render_wav(midi: Path, wav: Path, seconds: float, fluidsynth: str, soundfont: Path) -> Path:
    """Render `midi` (which lasts `seconds`) to a mono 16-bit WAV of exactly that length, written atomically."""
    with tempfile.TemporaryDirectory(prefix="render-") as tmp:
        raw = Path(tmp) / "out.raw"
        command = [fluidsynth, "-ni", "-q", "-g", "1.0", "-r", str(SAMPLE_RATE)]
        command += ["-T", "raw", "-O", "float", "-E", "little", "-F", str(raw), str(soundfont), str(midi)]
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0 or not raw.is_file():
            reason = (result.stderr or result.stdout).strip().splitlines()
            raise PipelineError(f"{midi}: fluidsynth could not render it ({reason[-1] if reason else 'no output'})")
        stereo = np.fromfile(raw, dtype="<f4")
    frames = round(seconds * SAMPLE_RATE)
    mono = stereo[: len(stereo) // 2 * 2].reshape(-1, 2).mean(axis=1)[:frames]
    mono = np.pad(mono, (0, frames - len(mono)))
    fade = min(frames, round(FADE_S * SAMPLE_RATE))
    mono[frames - fade :] *= np.linspace(1, 0, fade, dtype=np.float32)
    peak = float(np.abs(mono).max(initial=0))
    pcm = np.round(mono * (PEAK * 32767 / peak) if peak > 0 else mono).astype("<i2")
    with atomic_path(Path(wav)) as tmp_wav, wave.open(str(tmp_wav), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        out.writeframes(pcm.tobytes())
    return Path(wav)
