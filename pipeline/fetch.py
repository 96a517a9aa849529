"""fetch stage: bring MAESTRO v3 (URL, local zip or local folder) into data/raw/ in MAESTRO's own layout."""

from __future__ import annotations

import shutil
from pathlib import Path
from urllib.parse import urlparse

from pipeline.atomic import atomic_dir
from pipeline.errors import PipelineError
from pipeline.fetching.archive import safe_extract
from pipeline.fetching.download import download, verify
from pipeline.metadata import MIDI_SUFFIXES, find_metadata, read_metadata


def is_url(source: str) -> bool:
    """Whether data.source names an http(s) URL rather than a local path."""
    return urlparse(source).scheme in ("http", "https")


def _maestro_root(folder: Path) -> Path:
    """The folder holding the metadata file: the folder itself or one level down (as in MAESTRO's zip)."""
    candidates = [folder] + sorted(p for p in folder.iterdir() if p.is_dir())
    for candidate in candidates:
        try:
            find_metadata(candidate)
            return candidate
        except PipelineError:
            continue
    raise PipelineError(f"{folder}: no MAESTRO metadata (maestro-v3.0.0.csv or .json) found in the archive")


def copy_maestro_folder(source: Path, dest: Path) -> int:
    """Copy the metadata and every MIDI file of a MAESTRO folder, keeping relative paths; return the MIDI count."""
    metadata = find_metadata(source)
    for extra in (metadata.with_suffix(".csv"), metadata.with_suffix(".json")):
        if extra.is_file():
            shutil.copy2(extra, dest / extra.name)
    count = 0
    for path in sorted(source.rglob("*")):
        if path.suffix.lower() in MIDI_SUFFIXES and path.is_file():
            target = dest / path.relative_to(source)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
            count += 1
    return count


def fetch(source: str, dest: Path, sha256: str | None, size: int | None, downloads: Path) -> dict[str, int]:
    """Materialise MAESTRO at `dest` from `source`; return counts of listed and present MIDI files."""
    dest = Path(dest)
    with atomic_dir(dest) as tmp:
        if is_url(source):
            name = Path(urlparse(source).path).name or "maestro.zip"
            archive = download(source, Path(downloads) / name, size, sha256)
            _extract_into(archive, tmp)
        else:
            path = Path(source).expanduser()
            if path.is_dir():
                copy_maestro_folder(path, tmp)
            elif path.is_file() and path.suffix.lower() == ".zip":
                try:
                    verify(path, size, sha256)
                except PipelineError as exc:
                    raise PipelineError(
                        f"{exc}. If this is not the official archive, set data.sha256 and data.size to '' to "
                        "skip the check"
                    ) from exc
                _extract_into(path, tmp)
            elif path.exists():
                raise PipelineError(f"data.source {source!r} is neither a folder nor a .zip archive")
            else:
                raise PipelineError(f"data.source {source!r} does not exist (give an http(s) URL, a .zip or a folder)")
        pieces = read_metadata(tmp)
        missing = [p.midi_filename for p in pieces if not (tmp / p.midi_filename).is_file()]
    return {"listed": len(pieces), "missing": len(missing)}


def _extract_into(archive: Path, tmp: Path) -> None:
    """Extract a MAESTRO archive into `tmp` and lift its top folder so that `tmp` holds the metadata."""
    staging = tmp / ".extract"
    staging.mkdir()
    safe_extract(archive, staging)
    root = _maestro_root(staging)
    for item in root.iterdir():
        item.rename(tmp / item.name)
    shutil.rmtree(staging)
