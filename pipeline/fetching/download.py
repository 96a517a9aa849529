"""Resumable HTTP download with a progress bar, checked for size and sha256 before it is moved into place."""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from pathlib import Path

from pipeline.errors import PipelineError

CHUNK = 1 << 20


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, size: int | None, sha256: str | None) -> None:
    """Raise PipelineError if the file's size or sha256 differ from the expected ones (None skips a check)."""
    actual_size = Path(path).stat().st_size
    if size and actual_size != size:
        raise PipelineError(f"{path}: size {actual_size:,} bytes, expected {size:,}")
    if sha256:
        actual = sha256_of(path)
        if actual != sha256.lower():
            raise PipelineError(f"{path}: sha256 {actual} does not match the expected {sha256.lower()}")


def offline_hint(url: str) -> str:
    """The advice given whenever the archive cannot be downloaded."""
    return (
        f"Could not download {url}. Without a network, use a local copy of MAESTRO v3 instead (a folder in "
        "MAESTRO's layout or the .zip): set data.source in params.yaml, or run "
        "`dvc exp run -S data.source=/path/to/maestro-v3.0.0`."
    )


def download(url: str, target: Path, size: int | None, sha256: str | None, timeout: float = 30.0) -> Path:
    """Download `url` to `target`, resuming a previous partial download; the result is verified or removed."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn, TransferSpeedColumn

    target = Path(target)
    if target.exists():
        try:
            verify(target, size, sha256)
            return target
        except PipelineError:
            target.unlink()
    target.parent.mkdir(parents=True, exist_ok=True)
    part = target.with_name(target.name + ".part")
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # the partial file is already whole
            response = None
        else:
            raise PipelineError(f"{offline_hint(url)} (HTTP {exc.code} {exc.reason})") from exc
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise PipelineError(f"{offline_hint(url)} ({reason})") from exc

    if response is not None:
        with response:
            resumed = have > 0 and response.status == 206
            if not resumed:
                have = 0
            length = response.headers.get("Content-Length")
            total = have + int(length) if length else size
            columns = (BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
            with part.open("ab" if resumed else "wb") as f, Progress(*columns, transient=True) as progress:
                task = progress.add_task("download", total=total, completed=have)
                try:
                    while chunk := response.read(CHUNK):
                        f.write(chunk)
                        progress.advance(task, len(chunk))
                except (OSError, http.client.HTTPException) as exc:
                    raise PipelineError(
                        f"download of {url} broke off after {f.tell():,} bytes ({exc}); the partial file "
                        f"{part} is kept and the next run resumes from there"
                    ) from exc
        if total and part.stat().st_size < total:
            raise PipelineError(
                f"download of {url} ended early at {part.stat().st_size:,} of {total:,} bytes; the partial "
                f"file {part} is kept and the next run resumes from there"
            )
    try:
        verify(part, size, sha256)
    except PipelineError as exc:
        part.unlink(missing_ok=True)
        raise PipelineError(f"{exc}; the download from {url} was deleted") from exc
    os.replace(part, target)
    return target
