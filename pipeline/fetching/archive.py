"""Extract a zip archive, refusing any entry that would land outside the target folder."""

from __future__ import annotations

import stat
import zipfile
from pathlib import Path, PurePosixPath

from pipeline.errors import PipelineError


def unsafe_reason(info: zipfile.ZipInfo) -> str | None:
    """Why an archive entry must not be extracted, or None if it is safe."""
    name = info.filename.replace("\\", "/")
    path = PurePosixPath(name)
    if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        return "absolute path"
    if ".." in path.parts:
        return "path leaves the target folder"
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link"
    return None


def safe_extract(archive: Path, target: Path) -> None:
    """Extract every entry of `archive` under `target`, after checking all of them; refuse the archive if one
    entry is unsafe."""
    try:
        with zipfile.ZipFile(archive) as zf:
            infos = zf.infolist()
            root = Path(target).resolve()
            for info in infos:
                reason = unsafe_reason(info)
                if reason is None and root not in (root / info.filename).resolve().parents:
                    reason = "path leaves the target folder"
                if reason:
                    raise PipelineError(
                        f"{archive}: refused archive entry {info.filename!r} ({reason}); nothing was extracted"
                    )
            zf.extractall(root)
    except zipfile.BadZipFile as exc:
        raise PipelineError(f"{archive}: not a readable zip archive ({exc})") from exc
